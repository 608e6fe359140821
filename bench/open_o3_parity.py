"""reward=open_o3 vs Open-o3-Video's own reward_func.py on a broad generated set, malformed outputs included.

The reference file is not part of this project: point --reference at reward_func.py from a checkout of
Open-o3-Video (src/r1-v/src/open_r1/reward_func.py). It needs numpy and rouge_score, both installed here.

    python bench/open_o3_parity.py --reference /path/to/reward_func.py --mutations 20

The set is tests/reward_cases.py's constructed cases plus, for each, --mutations random edits (deleted
spans, inserted tags and fragments, duplicated spans, truncation). Both sides get the same record: the
original in its own shape (normalised key_items, image_size = the frame the model saw; for images
image_size and image_size_refine), this project in docs/DATA.md's (pixel boxes, image_size, frame_size).
Writes bench/results/open_o3_parity.json: agreement on the total (|diff| <= 1e-6), the cases where the
original raises (it does not guard every input), and the disagreements with both sides' values.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from reward_cases import FRAME, IMAGE, Case, all_cases, mutate  # noqa: E402
from visd_exp.rewards import RewardConfig, score  # noqa: E402

OPEN_O3 = RewardConfig(one_sided_gate=True, box_match="object_mean")
NAMES = {
    "ans_acc": "ans_acc_reward",
    "ans_tiou": "ans_tiou_reward",
    "ans_viou": "ans_viou_reward",
    "format": "format_reward",
    "thk_seg": "thk_temporal_segment_reward",
    "thk_point": "thk_temporal_point_reward",
    "thk_spatial": "thk_spatial_reward",
}


def load_reference(path: Path):
    spec = importlib.util.spec_from_file_location("open_o3_reward_func", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def original_kwargs(case: Case) -> dict:
    """The record as the original trainer hands it to the reward functions (one item)."""
    rec = case.record
    kw = {"task": [rec["task"]], "answer": [rec["answer"]], "step_percent": [case.progress]}
    if rec["task"] == "visual QA":
        kw["image_size"] = [tuple(IMAGE)]
        kw["image_size_refine"] = [tuple(FRAME)]
    else:
        kw["image_size"] = [tuple(FRAME)]  # the trainer's image_size is the resized video frame
    if "key_frames" in rec:
        kw["key_frames"] = [[dict(kf) for kf in rec["key_frames"]]]
        kw["key_items"] = [
            {
                idx: {
                    name: [
                        [b[0] / IMAGE[0], b[1] / IMAGE[1], b[2] / IMAGE[0], b[3] / IMAGE[1]] for b in boxes
                    ]
                    for name, boxes in objects.items()
                }
                for idx, objects in rec["key_items"].items()
            }
        ]
    return kw


def original_values(ref, case: Case) -> dict:
    completions = [[{"content": case.completion}]]
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):  # the original prints on its handled errors
        for key, fn in NAMES.items():
            out[key] = float(getattr(ref, fn)(completions, **original_kwargs(case))[0])
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", type=Path, required=True, help="Open-o3-Video's reward_func.py")
    ap.add_argument("--mutations", type=int, default=20, help="random edits per constructed case")
    ap.add_argument("--edits", type=int, default=3, help="at most this many random edits per mutation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "open_o3_parity.json")
    args = ap.parse_args(argv)
    ref = load_reference(args.reference)
    rng = random.Random(args.seed)
    cases: list[tuple[str, Case]] = []
    for case in all_cases():
        cases.append(("constructed", case))
        for _ in range(args.mutations):
            text = case.completion
            for _ in range(rng.randint(1, args.edits)):
                text = mutate(text, rng)
            cases.append(("mutated", Case(case.name + "/mut", case.task, case.record, text, case.progress)))
    t0 = time.perf_counter()
    equal, raised, differ = 0, [], []
    by_task: dict[str, list[int]] = {}
    for kind, case in cases:
        ours = score(case.completion, case.record, progress=case.progress, cfg=OPEN_O3)
        try:
            theirs = original_values(ref, case)
        except Exception as exc:  # the original lets some inputs raise (e.g. a nested box list)
            raised.append({"case": case.name, "completion": case.completion, "error": repr(exc)})
            continue
        ok = abs(ours["total"] - sum(theirs.values())) <= 1e-6
        equal += ok
        by_task.setdefault(case.task, [0, 0])[0] += ok
        by_task[case.task][1] += 1
        if not ok:
            differ.append(
                {
                    "case": case.name,
                    "kind": kind,
                    "completion": case.completion,
                    "ours": ours,
                    "original": theirs,
                }
            )
    compared = len(cases) - len(raised)
    result = {
        "command": "python bench/open_o3_parity.py --reference <Open-o3-Video>/src/r1-v/src/open_r1/reward_func.py "
        f"--mutations {args.mutations} --edits {args.edits} --seed {args.seed}",
        "completions": len(cases),
        "compared": compared,
        "equal_total": equal,
        "agreement": equal / compared if compared else None,
        "by_task": {t: {"equal": e, "compared": n} for t, (e, n) in sorted(by_task.items())},
        "original_raised": len(raised),
        "original_raised_examples": raised[:10],
        "disagreements": differ[:50],
        "seconds": round(time.perf_counter() - t0, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        json.dumps(
            {k: result[k] for k in ("completions", "compared", "equal_total", "agreement", "original_raised")}
        )
    )
    return result


if __name__ == "__main__":
    main()
