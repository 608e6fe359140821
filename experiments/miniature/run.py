"""The miniature reproduction in one command (src/visd_exp/miniature.py does the work).

    python experiments/miniature/run.py                # full: SFT 500 steps, 8 experiments x 3 seeds x 100 steps (about 70 min)
    python experiments/miniature/run.py --quick        # SFT 120 steps, 8 experiments x 1 seed x 30 steps
    python experiments/miniature/run.py --out DIR --steps N --seeds 0,1,2 --experiments grpo,ema_topk -- key=value ...

Writes DIR/sft (the SFT start), DIR/runs (the multirun) and DIR/runs/results.{md,csv} + figure3_reward.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


def main() -> int:
    from visd_exp.miniature import ABLATIONS, OTHERS, run

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short: 1 seed, 30 steps, SFT 120 steps")
    parser.add_argument("--out", type=Path, default=None, help="default: logs/miniature/<time>")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sft-steps", type=int, default=None)
    parser.add_argument("--seeds", default=None, help="comma-separated")
    parser.add_argument("--experiments", default=",".join((*ABLATIONS, *OTHERS)))
    parser.add_argument("overrides", nargs="*", help="extra key=value for every training run (after --)")
    args = parser.parse_args()
    steps = args.steps or (30 if args.quick else 100)
    sft_steps = args.sft_steps or (120 if args.quick else 500)
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    out = args.out or ROOT / "logs" / "miniature" / time.strftime("%Y-%m-%d_%H-%M-%S")
    start = time.time()
    sweep = run(out, steps, sft_steps, seeds, args.experiments.split(","), args.overrides)
    print(f"[miniature] done in {(time.time() - start) / 60:.1f} min: {sweep / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
