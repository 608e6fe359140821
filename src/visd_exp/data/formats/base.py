"""What every reader of a published format shares: where a record came from, how its videos are
found, and the two ways a record can fail to become one of ours.

A reader is a function `convert(raw, ctx) -> list[dict]`: one published record (already parsed
from JSON, or a text line) in, zero or more records in the project schema (docs/DATA.md) out.
It raises `FieldError(field, message)` for a record it cannot read (reported as
`file:line: field: message`, like every validation problem) and `Skip(reason)` for a record it
reads but does not use (counted by reason, e.g. image records).
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


class FieldError(ValueError):
    """A published record that cannot be read: the field and what is wrong with it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


class Skip(Exception):
    """A record read but not used; `reason` is counted (one short phrase per kind of record)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class ReadContext:
    """Where a file's videos are: `video_root` (default: the file's directory), STGR's per-source
    sub-directories (`source_roots`, off by default), and a probe shared with validation."""

    path: Path
    video_root: Path
    source_roots: Mapping[str, str] | None = None
    probe: Callable[[str], object] | None = None  # path -> validate.ProbeResult (cached)
    counters: Counter = field(default_factory=Counter)  # readers' running counts (ids by position)
    options: Mapping[str, object] = field(default_factory=dict)  # readers' data options (data.vstar_prompts)
    _by_stem: dict[str, str] | None = field(default=None, repr=False)

    def resolve(self, relative: str) -> str:
        """A path as written in the file ("./Folder/x.mp4", "x.mp4", or absolute) under video_root."""
        return _join(self.video_root, relative)

    def resolve_source(self, source: str | None, relative: str) -> str:
        """STGR: `video_path` under the sub-directory that `source_roots` names for the record's source
        (a mapping value is relative to video_root, or absolute); the plain root when there is no
        mapping. Keys are exact sources or shell patterns ("STR_plm*"): an exact key first, then the
        first pattern in the mapping's order. A mapping that lacks the source is an error (the record's
        videos would be looked for in the wrong place)."""
        if not self.source_roots:
            return self.resolve(relative)
        directory = self.source_roots.get(source) if isinstance(source, str) else None
        if directory is None and isinstance(source, str):
            directory = next(
                (d for key, d in self.source_roots.items() if fnmatch.fnmatchcase(source, key)), None
            )
        if directory is None:
            known = ", ".join(self.source_roots)
            raise FieldError("source", f"{source!r} has no entry in data.source_roots (known: {known})")
        return _join(_join(self.video_root, directory), relative)

    def find_video(self, vid: str) -> str:
        """`<vid>.<ext>` anywhere under video_root, as V-STaR's and Charades-STA's scripts search; the
        tree is indexed once. FieldError("vid") naming the root when it is not there (unless the option
        videos=unchecked: rescoring reads records whose videos it never opens)."""
        if self._by_stem is None:
            self._by_stem = {}
            duplicates = 0
            for path in sorted(self.video_root.rglob("*")):
                if path.suffix.lower() in VIDEO_SUFFIXES and path.is_file():
                    if path.stem in self._by_stem:
                        duplicates += 1
                        continue  # the first in sorted order wins, every time
                    self._by_stem[path.stem] = str(path.absolute())
            if duplicates:
                log.warning(
                    "%s: %d video names occur more than once; the first (sorted) is used",
                    self.video_root,
                    duplicates,
                )
        found = self._by_stem.get(vid)
        if found is None and self.options.get("videos") == "unchecked":  # rescoring: videos not needed
            return str((self.video_root / f"{vid}.mp4").absolute())
        if found is None:
            raise FieldError(
                "vid", f"no video {vid}.mp4 under {self.video_root} (data.video_root / --video-root)"
            )
        return found

    def frame_size(self, video_path: str) -> tuple[int, int]:
        """(width, height) of the probed video; FieldError("video_path") when it cannot be read."""
        if self.probe is None:
            raise FieldError("video_path", "the frame size is needed (normalised boxes) but probing is off")
        result = self.probe(video_path)
        if result.info is None:
            raise FieldError("video_path", result.error)
        return result.info.width, result.info.height


# ----------------------------------------------------------------------------- shared helpers

# Named `data.source_roots` layouts. open_o3_video: the STGR download as Open-o3-Video's trainer lays it
# out under <DATA_ROOT>/videos (= data.video_root), source -> sub-directory, first match wins.
SOURCE_ROOT_LAYOUTS: dict[str, dict[str, str]] = {
    "open_o3_video": {
        "timerft": "timerft",
        "videoespresso_train_video": "videoespresso/videos",
        "gqa": "gqa",
        "STR_plm*": "stgr/plm/videos",
        "STR*": "stgr/temporal_grounding/videos",
        "TVG*": "tvg_r1",
        "videor1*": "videor1",
    }
}


def source_roots_mapping(value) -> dict[str, str] | None:
    """data.source_roots as a mapping: null, a mapping {source or pattern: directory}, or the name of a
    layout in SOURCE_ROOT_LAYOUTS."""
    if value is None or value == {}:
        return None
    if isinstance(value, str):
        if value not in SOURCE_ROOT_LAYOUTS:
            raise ValueError(
                f"data.source_roots={value!r}: not a known layout ({', '.join(SOURCE_ROOT_LAYOUTS)}) nor a mapping"
            )
        return dict(SOURCE_ROOT_LAYOUTS[value])
    return {str(k): str(v) for k, v in dict(value).items()}


def _join(root: str | Path, relative: str | Path) -> str:
    """`relative` under `root` ("./a/b.mp4" -> root/a/b.mp4), absolute as is; symlinks are kept as
    written (error messages then name the path the user gave)."""
    return os.path.normpath(os.path.join(os.path.abspath(root), relative))


BOX_IN_TEXT = re.compile(r"<box>\s*\[([^\]]*)\]\s*</box>")


def scale_boxes_in_text(text: str, sx: float, sy: float, digits: int = 0) -> str:
    """Every `<box>[x1, y1, x2, y2]</box>` multiplied by (sx, sy, sx, sy): normalised -> pixels
    (or pixels of one frame size -> another). Rounded to `digits` (0: integers); other text unchanged.
    A box that is not four numbers is left as written."""

    def one(match: re.Match) -> str:
        try:
            values = [float(v) for v in match.group(1).split(",")]
        except ValueError:
            return match.group(0)
        if len(values) != 4:
            return match.group(0)
        scaled = [v * s for v, s in zip(values, (sx, sy, sx, sy))]
        shown = [str(round(v)) if digits == 0 else str(round(v, digits)) for v in scaled]
        return "<box>[" + ",".join(shown) + "]</box>"

    return BOX_IN_TEXT.sub(one, text)


def options_from_question(question: str) -> list[str]:
    """Option lines of a question whose options are only in its text ("A. left", "(B) right")."""
    pattern = re.compile(r"^\s*\(?([A-Z])\s*[.):]\s*\S")
    lines = [line.strip() for line in question.splitlines() if pattern.match(line)]
    letters = [pattern.match(line).group(1) for line in lines]
    # keep only a run A, B, C, ... (a stray "I. ..." sentence is not an option list)
    expected = [chr(ord("A") + k) for k in range(len(letters))]
    return lines if letters == expected and len(lines) >= 2 else []


def require(raw: Mapping, name: str, kind: type | tuple[type, ...] = str) -> object:
    """raw[name], which must be present, not null and of `kind` (a non-empty string for str)."""
    if name not in raw or raw[name] is None:
        raise FieldError(name, "missing")
    value = raw[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise FieldError(name, f"expected {names}, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise FieldError(name, "empty string")
    return value
