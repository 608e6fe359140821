"""A synthetic grounded-video data set: coloured shapes that appear, move and vanish at known times.

Each video shows one queried object (e.g. "red square") that is visible on exactly the frames whose
time t satisfies s <= t <= e, with s and e on a time grid, moving in a straight line along one axis
(left, right, up or down); optional distractors in other colours come and go at their own times.
Videos are real h264 mp4 files; every video yields one record per task type in the record schema of
docs/DATA.md (temporal grounding, spatio-temporal grounding, multiple choice on the direction of
motion, free-form colour question), all sharing the video's segment, key frames and boxes.

    generate(out_dir, num_videos=64, seed=0, preset="easy")      # always (re)writes out_dir
    ensure_dataset(out_dir, ...)                                   # reuses out_dir when it matches
    python -m visd_exp.data.synthetic out_dir=data/syn num_videos=64 seed=0 preset=easy fps=4

The `easy` preset follows the learnability notes (round two): 56x56 frames, 22-28 px squares, no
distractors, boundaries on whole seconds, so a model sampling 1 frame/s at t = 0, 1, ..., 7 sees
exactly which frames show the object and can answer the segment exactly.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from visd_exp.data.synthetic_render import BACKGROUND, COLOURS, ENCODER, Track, encode_mp4, render_frames

FORMAT_VERSION = 2
TASKS = ("temporal_grounding", "spatio_temporal_grounding", "multiple_choice", "free_form")
# V-STAR-style chained questions (what-when-where, what-where-when), evaluation only: test split.
CHAINS = {
    "vstar_what_when_where": ("what", "when", "where"),
    "vstar_what_where_when": ("what", "where", "when"),
}
SPLITS = ("train", "val", "test")
DIRECTIONS = ("left", "right", "up", "down")
SHAPES = ("square", "circle")
MANIFEST = "manifest.json"
# The queried object crosses at least this share of the free room along its axis, so that the
# direction of motion is visible between sampled frames.
MIN_TRAVEL = 0.4


def _is_multiple(value: float, step: float) -> bool:
    ratio = value / step
    return abs(ratio - round(ratio)) < 1e-6


@dataclass(frozen=True)
class Difficulty:
    """The knobs of one difficulty level. Times are in seconds, sizes in pixels."""

    frame_size: tuple[int, int] = (56, 56)  # (width, height), both even (yuv420p)
    object_size: tuple[int, int] = (22, 28)  # (min, max) side of a shape
    num_distractors: int = 0  # other shapes, each in a colour of its own
    fps: float = 4  # native frame rate of the mp4
    duration: float = 8.0
    visibility: float = 1.0  # alpha of the shapes over the background, in (0, 1]
    time_grid: float = 1.0  # segment boundaries are multiples of this
    min_segment: float = 2.0  # shortest visible interval of the queried object
    noise: float = 0.0  # std of grey per-pixel background noise, in 0-255 intensity units
    shapes: tuple[str, ...] = ("square",)

    def __post_init__(self) -> None:
        # Accept lists (OmegaConf, JSON) for the tuple fields; the dataclass stays hashable.
        try:
            object.__setattr__(self, "frame_size", tuple(int(v) for v in self.frame_size))
            object.__setattr__(self, "object_size", tuple(int(v) for v in self.object_size))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Difficulty: frame_size and object_size are pairs of ints ({exc})") from exc
        shapes = (self.shapes,) if isinstance(self.shapes, str) else self.shapes
        object.__setattr__(self, "shapes", tuple(str(s) for s in shapes))
        self._validate()

    def _validate(self) -> None:
        w, h = self.frame_size if len(self.frame_size) == 2 else (0, 0)
        lo, hi = self.object_size if len(self.object_size) == 2 else (0, 0)
        checks = [
            (len(self.frame_size) == 2 and w >= 2 and h >= 2, "frame_size must be [width, height] >= 2"),
            (w % 2 == 0 and h % 2 == 0, "frame_size must be even (yuv420p)"),
            (
                len(self.object_size) == 2 and 1 <= lo <= hi,
                "object_size must be [min, max] with 1 <= min <= max",
            ),
            (hi <= min(w, h) - 2, "object_size max must leave room to move (<= min(frame_size) - 2)"),
            (0 <= self.num_distractors < len(COLOURS), f"num_distractors must be in [0, {len(COLOURS) - 1}]"),
            (
                self.fps > 0 and self.duration > 0 and self.time_grid > 0,
                "fps, duration, time_grid must be > 0",
            ),
            (_is_multiple(self.duration * self.fps, 1), "duration * fps must be a whole number of frames"),
            (
                _is_multiple(self.time_grid * self.fps, 1),
                "time_grid * fps must be whole: grid times are frames",
            ),
            (_is_multiple(self.duration, self.time_grid), "duration must be a multiple of time_grid"),
            (0 < self.visibility <= 1, "visibility must be in (0, 1]"),
            (self.min_segment > 0, "min_segment must be > 0"),
            (self.noise >= 0, "noise must be >= 0"),
            (
                len(self.shapes) > 0 and set(self.shapes) <= set(SHAPES),
                f"shapes must be a subset of {SHAPES}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"Difficulty: {message} (got {self})")
        if self.min_steps > self.num_grid_points - 1:
            raise ValueError(f"Difficulty: min_segment={self.min_segment} does not fit in the grid of {self}")

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)

    @property
    def num_grid_points(self) -> int:
        """Grid times 0, g, 2g, ... up to duration - g (the last time that is still inside the video)."""
        return round(self.duration / self.time_grid)

    @property
    def min_steps(self) -> int:
        return max(1, math.ceil(self.min_segment / self.time_grid - 1e-6))

    def grid_time(self, k: int) -> float:
        return round(k * self.time_grid, 6)


PRESETS: dict[str, Difficulty] = {
    # learnability.md, round two: >= ~20 px objects in 56x56, boundaries on the 1 frame/s sample times.
    "easy": Difficulty(
        frame_size=(56, 56),
        object_size=(22, 28),
        num_distractors=0,
        fps=4,
        duration=8.0,
        visibility=1.0,
        time_grid=1.0,
        min_segment=2.0,
        noise=0.0,
        shapes=("square",),
    ),
    "medium": Difficulty(
        frame_size=(112, 112),
        object_size=(14, 22),
        num_distractors=2,
        fps=4,
        duration=12.0,
        visibility=0.7,
        time_grid=0.5,
        min_segment=1.5,
        noise=4.0,
        shapes=("square",),
    ),
    "hard": Difficulty(
        frame_size=(112, 112),
        object_size=(8, 14),
        num_distractors=4,
        fps=4,
        duration=16.0,
        visibility=0.45,
        time_grid=0.5,
        min_segment=1.0,
        noise=8.0,
        shapes=("square", "circle"),
    ),
}


def knob_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Difficulty)]


def make_difficulty(preset: str = "easy", **overrides) -> Difficulty:
    """A preset with some knobs replaced; a clear error for an unknown preset or knob."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(knob_names()))
    if unknown:
        raise ValueError(f"unknown difficulty knob(s) {unknown}; valid: {knob_names()}")
    return dataclasses.replace(PRESETS[preset], **overrides)


# ----------------------------------------------------------------------------- what a video shows


@dataclass(frozen=True)
class Scene:
    target: Track
    distractors: tuple[Track, ...]

    @property
    def tracks(self) -> tuple[Track, ...]:
        # The target is drawn last (on top) so that its box always shows its own colour.
        return (*self.distractors, self.target)


def sample_scene(rng: np.random.Generator, d: Difficulty) -> Scene:
    """The queried object and the distractors of one video; every shape gets its own colour."""
    colours = [str(c) for c in rng.permutation(list(COLOURS))]
    direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
    shape = d.shapes[int(rng.integers(len(d.shapes)))]
    target = _sample_track(rng, d, colours[0], shape, direction, d.min_steps)
    # Distractors never move in the target's direction: "the square that moves right" stays unique.
    other_moves: list[str | None] = [m for m in DIRECTIONS if m != direction] + [None]
    distractors = tuple(
        _sample_track(
            rng,
            d,
            colours[1 + k],
            d.shapes[int(rng.integers(len(d.shapes)))],
            other_moves[int(rng.integers(len(other_moves)))],
            min_steps=1,
        )
        for k in range(d.num_distractors)
    )
    return Scene(target=target, distractors=distractors)


def _sample_track(
    rng: np.random.Generator, d: Difficulty, colour: str, shape: str, direction: str | None, min_steps: int
) -> Track:
    # Uniform over all (start, end) grid pairs at least min_steps apart, so segment lengths and
    # positions are balanced rather than skewed towards short, late segments.
    n = d.num_grid_points
    pairs = [(i, j) for i in range(n) for j in range(i + min_steps, n)]
    i, j = pairs[int(rng.integers(len(pairs)))]
    size = int(rng.integers(d.object_size[0], d.object_size[1] + 1))
    room_x, room_y = d.frame_size[0] - size, d.frame_size[1] - size
    if direction is None:
        xy = (int(rng.integers(room_x + 1)), int(rng.integers(room_y + 1)))
        return Track(colour, shape, size, d.grid_time(i), d.grid_time(j), xy, xy, None)
    horizontal = direction in ("left", "right")
    room, cross_room = (room_x, room_y) if horizontal else (room_y, room_x)
    travel = max(1, math.ceil(MIN_TRAVEL * room))
    a = int(rng.integers(room - travel + 1))
    b = int(rng.integers(a + travel, room + 1))
    if direction in ("left", "up"):
        a, b = b, a
    c = int(rng.integers(cross_room + 1))
    xy0, xy1 = ((a, c), (b, c)) if horizontal else ((c, a), (c, b))
    return Track(colour, shape, size, d.grid_time(i), d.grid_time(j), xy0, xy1, direction)


# ----------------------------------------------------------------------------- records


def format_time(t: float) -> str:
    """Seconds with one decimal ("2.0"), more only when the grid needs them."""
    return f"{t:.1f}" if _is_multiple(t, 0.1) else f"{t:.3f}".rstrip("0")


def grounded_claim(name: str, box: Sequence[int], t: float) -> str:
    return f"<obj>{name}</obj><box>[{','.join(str(int(v)) for v in box)}]</box>at<t>{format_time(t)}</t>s"


def key_times(track: Track, d: Difficulty) -> list[float]:
    """Start, middle and end of the visible interval, on the grid (2 when the segment is 1 step)."""
    steps = round((track.end - track.start) / d.time_grid)
    middle = round(track.start + (steps // 2) * d.time_grid, 6)
    return sorted({track.start, middle, track.end})


def grounding(target: Track, d: Difficulty) -> tuple[str, dict]:
    """The queried object's evidence: its grounded claims at the key frames (text), and the record fields
    segment, key_frames, key_items, image_size and duration shared by every record about it."""
    times = key_times(target, d)
    frames = [{"idx": round(t * d.fps), "time": t} for t in times]
    boxes = [target.box(t) for t in times]
    claims = " ".join(grounded_claim(target.name, b, t) for b, t in zip(boxes, times))
    fields = {
        "segment": [target.start, target.end],
        "key_frames": frames,
        "key_items": {str(f["idx"]): {target.name: [b]} for f, b in zip(frames, boxes)},
        "image_size": list(d.frame_size),
        "duration": float(d.duration),
    }
    return claims, fields


def build_records(
    video_id: str,
    video_path: str,
    scene: Scene,
    d: Difficulty,
    tasks: Sequence[str],
    rng: np.random.Generator,
) -> list[dict]:
    """One record per task about the scene's queried object, in docs/DATA.md's schema."""
    target = scene.target
    claims, evidence = grounding(target, d)
    span = f"from {format_time(target.start)} s to {format_time(target.end)} s"
    # Drawn for every video whatever `tasks` holds, so a task subset does not change the other records.
    letter_pos = int(rng.integers(4))
    distractor_order = [str(x) for x in rng.permutation([x for x in DIRECTIONS if x != target.direction])]

    questions = {
        "temporal_grounding": (
            f"When is the {target.name} visible in the video?",
            None,
            f"From <t>{format_time(target.start)}</t>s to <t>{format_time(target.end)}</t>s",
            f"The {target.name} is visible {span}.",
        ),
        "spatio_temporal_grounding": (
            f"When and where is the {target.name} visible in the video?",
            None,
            claims,
            f"The {target.name} is visible {span} at these positions.",
        ),
        "multiple_choice": _direction_question(target, letter_pos, distractor_order),
        "free_form": (
            f"What colour is the {target.shape} that moves {target.direction}?",
            None,
            target.colour,
            f"The {target.shape} that moves {target.direction} is {target.colour}.",
        ),
    }
    records = []
    for task in tasks:
        question, options, answer, sentence = questions[task]
        records.append(
            {
                "id": f"{video_id}_{task}",
                "task": task,
                "source": "synthetic",
                "video_path": video_path,
                "question": question,
                "options": options,
                "answer": answer,
                **evidence,
                "reasoning_process": f"<think>{claims} {sentence}</think><answer>{answer}</answer>",
            }
        )
    return records


def build_chain_records(video_id: str, video_path: str, scene: Scene, d: Difficulty) -> list[dict]:
    """V-STAR's two reasoning chains as ordered three-part questions about the queried object:
    what (its colour), when (its visible span), where (its boxes at the key frames)."""
    target = scene.target
    claims, evidence = grounding(target, d)
    parts = {
        "what": (f"What colour is the {target.shape} that moves {target.direction}?", target.colour),
        "when": (
            "When is it visible?",
            f"From <t>{format_time(target.start)}</t>s to <t>{format_time(target.end)}</t>s",
        ),
        "where": ("Where is it at the key moments?", claims),
    }
    records = []
    for task, order in CHAINS.items():
        questions = " ".join(f"({i + 1}) {parts[p][0]}" for i, p in enumerate(order))
        answer = "; ".join(parts[p][1] for p in order)
        records.append(
            {
                "id": f"{video_id}_{task}",
                "task": task,
                "source": "synthetic",
                "video_path": video_path,
                "question": f"Answer in order, separated by semicolons: {questions}",
                "options": None,
                "answer": answer,
                "chain": list(order),
                "what": target.colour,
                **evidence,
                "reasoning_process": f"<think>{parts['where'][1]}</think><answer>{answer}</answer>",
            }
        )
    return records


def _direction_question(target: Track, letter_pos: int, others: list[str]):
    """Multiple choice on the direction of motion; the right option sits at `letter_pos`."""
    choices = others[:letter_pos] + [target.direction] + others[letter_pos:]
    options = [f"{'ABCD'[k]}. {c}" for k, c in enumerate(choices)]
    letter = "ABCD"[letter_pos]
    question = f"In which direction does the {target.name} move?\n" + "\n".join(options)
    return question, options, letter, f"The {target.name} moves {target.direction}, option {letter}."


# ----------------------------------------------------------------------------- splits and writing


def split_counts(num_videos: int, fractions: Sequence[float]) -> dict[str, int]:
    """Videos per split; with >= 3 videos every split with a positive fraction gets at least one."""
    total = float(sum(fractions))
    val, test = (round(num_videos * f / total) for f in fractions[1:])
    if num_videos >= 3:
        val, test = (max(1, n) if f > 0 else 0 for n, f in zip((val, test), fractions[1:]))
        while fractions[0] > 0 and num_videos - val - test < 1:  # give train one back
            if val >= test:
                val -= 1
            else:
                test -= 1
    return {"train": num_videos - val - test, "val": val, "test": test}


def assign_splits(num_videos: int, fractions: Sequence[float], seed: int) -> list[str]:
    """The split of each video index; a seeded shuffle so that splits are not contiguous id ranges."""
    counts = split_counts(num_videos, fractions)
    labels = [s for s in SPLITS for _ in range(counts[s])]
    order = np.random.default_rng([seed, 1_000_003]).permutation(num_videos)
    out = [""] * num_videos
    for label, idx in zip(labels, order):
        out[int(idx)] = label
    return out


def resolve_params(
    num_videos=64, seed=0, preset="easy", tasks=None, splits=(0.8, 0.1, 0.1), **overrides
) -> dict:
    """Checked, JSON-ready generation parameters: what the manifest records and ensure_dataset compares."""
    difficulty = make_difficulty(preset, **overrides)
    tasks = list(TASKS) if tasks is None else [str(t) for t in tasks]
    if not tasks or set(tasks) - set(TASKS) or len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks must be distinct names from {list(TASKS)}; got {tasks}")
    splits = [float(f) for f in splits]
    if len(splits) != 3 or min(splits) < 0 or sum(splits) <= 0:
        raise ValueError(f"splits must be three non-negative fractions (train, val, test); got {splits}")
    if int(num_videos) < 1 or int(seed) < 0:
        raise ValueError(f"num_videos must be >= 1 and seed >= 0; got {num_videos}, {seed}")
    params = {
        "num_videos": int(num_videos),
        "seed": int(seed),
        "preset": preset,
        "tasks": tasks,
        "splits": splits,
        "difficulty": dataclasses.asdict(difficulty),
    }
    return json.loads(json.dumps(params))  # tuples -> lists, as they come back from the manifest


def generate(
    out_dir, num_videos=64, seed=0, preset="easy", tasks=None, splits=(0.8, 0.1, 0.1), **difficulty_overrides
) -> Path:
    """Write out_dir/{train,val,test}.jsonl, out_dir/videos/*.mp4 and out_dir/manifest.json (last)."""
    params = resolve_params(num_videos, seed, preset, tasks, splits, **difficulty_overrides)
    d = Difficulty(**params["difficulty"])
    out_dir = Path(out_dir)
    _clear_previous(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    split_of = assign_splits(params["num_videos"], params["splits"], params["seed"])
    records: dict[str, list[dict]] = {s: [] for s in SPLITS}
    width = max(5, len(str(params["num_videos"] - 1)))
    for idx in tqdm(range(params["num_videos"]), desc="synthetic videos", unit="video"):
        video_id = f"{idx:0{width}d}"
        # Independent streams per video: the same (seed, index) gives the same video whatever
        # num_videos, tasks or splits are.
        scene = sample_scene(np.random.default_rng([seed, idx, 0]), d)
        frames = render_frames(
            scene.tracks,
            d.frame_size,
            d.num_frames,
            d.fps,
            d.visibility,
            d.noise,
            np.random.default_rng([seed, idx, 1]),
        )
        encode_mp4(frames, out_dir / "videos" / f"{video_id}.mp4", d.fps)
        rng = np.random.default_rng([seed, idx, 2])
        records[split_of[idx]] += build_records(
            video_id, f"videos/{video_id}.mp4", scene, d, params["tasks"], rng
        )
        if split_of[idx] == "test":
            records["test"] += build_chain_records(video_id, f"videos/{video_id}.mp4", scene, d)
    for split, recs in records.items():
        _write_text(out_dir / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in recs))
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": "visd_exp.data.synthetic",
        "params": params,
        "encoder": ENCODER,
        "palette": COLOURS,
        "background": BACKGROUND,
        "files": {s: f"{s}.jsonl" for s in SPLITS},
        "counts": _counts(records),
    }
    # Written last: a directory with a manifest is a complete data set.
    _write_text(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _counts(records: dict[str, list[dict]]) -> dict:
    return {
        split: {
            "videos": len({r["video_path"] for r in recs}),
            "records": len(recs),
            "tasks": dict(Counter(r["task"] for r in recs)),
        }
        for split, recs in records.items()
    }


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def _clear_previous(out_dir: Path) -> None:
    """Remove an earlier generation's outputs, the manifest first (so it never vouches for a mix)."""
    for name in (MANIFEST, *(f"{s}.jsonl" for s in SPLITS)):
        (out_dir / name).unlink(missing_ok=True)
    videos = out_dir / "videos"
    if videos.is_dir():
        for p in videos.iterdir():
            if re.fullmatch(r"\d+\.mp4", p.name):
                p.unlink()


# ----------------------------------------------------------------------------- reuse, safely


def _manifest_matches(out_dir: Path, params: dict) -> bool:
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    return (
        manifest.get("format_version") == FORMAT_VERSION
        and manifest.get("params") == params
        and all((out_dir / f"{s}.jsonl").is_file() for s in SPLITS)
    )


def _looks_generated(path: Path) -> bool:
    """True for a directory this module may replace: empty, or holding only our outputs."""
    ours = {MANIFEST, "videos", *(f"{s}.jsonl" for s in SPLITS), *(f"{s}.jsonl.part" for s in SPLITS)}
    return all(p.name in ours for p in path.iterdir())


def ensure_dataset(
    out_dir, num_videos=64, seed=0, preset="easy", tasks=None, splits=(0.8, 0.1, 0.1), **difficulty_overrides
) -> Path:
    """out_dir holding the data set for these parameters, generated only when it is missing or differs.

    Generation goes to a hidden sibling directory that is renamed into place when complete, under an
    exclusive flock on a sibling lock file, so concurrent callers generate once and a crash leaves
    nothing that looks complete.
    """
    params = resolve_params(num_videos, seed, preset, tasks, splits, **difficulty_overrides)
    out_dir = Path(out_dir).absolute()
    if _manifest_matches(out_dir, params):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _manifest_matches(out_dir, params):  # another process made it while we waited
            return out_dir
        if out_dir.exists() and not (out_dir.is_dir() and _looks_generated(out_dir)):
            raise FileExistsError(
                f"{out_dir} exists and does not look like a synthetic data set; not replacing it"
            )
        # Leftovers of crashed runs: safe to delete, nobody else generates while we hold the lock.
        for stale in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
        try:
            generate(tmp, **params_to_kwargs(params))
            _swap_in(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def params_to_kwargs(params: dict) -> dict:
    """Manifest params back to generate()'s keyword arguments."""
    kwargs = {k: v for k, v in params.items() if k != "difficulty"}
    return {**kwargs, **params["difficulty"]}


def _swap_in(tmp: Path, out_dir: Path) -> None:
    """Rename the finished tmp directory to out_dir; an old out_dir is moved aside, then deleted."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- command line

_CLI_KEYS = ("out_dir", "num_videos", "seed", "preset", "tasks", "splits")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m visd_exp.data.synthetic out_dir=... [num_videos=..] [seed=..] [preset=..] [knob=..]`."""
    from omegaconf import OmegaConf

    argv = list(sys.argv[1:] if argv is None else argv)
    valid = [*_CLI_KEYS, *knob_names()]
    if any(a in ("-h", "--help") for a in argv):
        print(f"usage: python -m visd_exp.data.synthetic out_dir=DIR [key=value ...]\nvalid keys: {valid}")
        return 0
    try:
        cfg = OmegaConf.to_container(OmegaConf.from_dotlist(argv), resolve=True)
    except Exception as exc:  # OmegaConf's grammar errors are long; keep the cause
        print(f"error: cannot parse arguments {argv}: {exc}", file=sys.stderr)
        return 2
    unknown = sorted(set(cfg) - set(valid))
    if unknown or "out_dir" not in cfg:
        problem = f"unknown key(s) {unknown}" if unknown else "out_dir=... is required"
        print(f"error: {problem}; valid keys: {valid}", file=sys.stderr)
        return 2
    out_dir = Path(str(cfg.pop("out_dir")))
    try:
        generate(out_dir, **cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    counts = json.loads((out_dir / MANIFEST).read_text())["counts"]
    print(f"wrote {out_dir.absolute()}")
    for split, c in counts.items():
        per_task = ", ".join(f"{t}={n}" for t, n in c["tasks"].items())
        print(f"  {split}: {c['videos']} videos, {c['records']} records ({per_task})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
