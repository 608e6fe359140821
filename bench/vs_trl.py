"""Our GRPO step against TRL's GRPOTrainer on the same work (issue 15, item 2; target: ours / TRL <= 1.0).

The same work on both sides:
    model      the tiny Qwen2.5-VL of the default run (its warm start), fp32, no gradient checkpointing
    prompts    the synthetic tasks whose prompts show one frame (temporal grounding, multiple choice, free
               form), rendered by our data module; the TRL worker checks that TRL's processor call gives
               every prompt exactly our token ids and image grid before it trains
    rollouts   2 prompts x G = 4 per step, temperature 1, no top-p / top-k, exactly --new-tokens new tokens
               each (min = max length: ours algorithm.min_completion_length, TRL generation_kwargs
               min_new_tokens), the vision tokens suppressed
    reward     our verifier's total (rewards.score_batch) on both sides
    loss       the clipped surrogate as a token mean per sequence, then the mean over sequences (ours: Eq. 9;
               TRL: loss_type="grpo"), beta = 0 (no reference model), epsilon 0.2, one optimisation pass
               per generation (TRL: steps_per_generation = num_iterations = 1), AdamW, lr 3e-5
Timed alike: the wall time between two consecutive training steps' ends (a Lightning callback on ours, a
TrainerCallback on TRL's), so each iteration counts everything its loop does: data, generation, reward,
forward, backward, optimizer, logging. Median over the steps after --skip; --rounds rounds alternate the two
(order rotated) in one session, and the reported ratio is the median over rounds of each round's ratio.
Writes bench/results/vs_trl.json. TRL comes from the optional `bench` extra (`pip install -e .[bench]`).

    .venv/bin/python bench/vs_trl.py [--steps 25] [--skip 5] [--rounds 7] [--new-tokens 128] [--size default|tiny]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
ONE_FRAME_TASKS = "data.tasks=[temporal_grounding,multiple_choice,free_form]"
PROMPTS_PER_STEP, G = 2, 4


def shared_overrides(args) -> list[str]:
    """The composed config both sides read: GRPO, one frame, equal lengths (ours runs it, TRL reads it)."""
    out = [
        "+experiment=grpo",
        "data.min_frames=1",
        "data.max_frames=1",
        ONE_FRAME_TASKS,
        f"data.batch_size={PROMPTS_PER_STEP}",
        f"algorithm.num_generations={G}",
        f"algorithm.max_completion_length={args.new_tokens}",
        f"algorithm.min_completion_length={args.new_tokens}",
        f"seed={args.seed}",
    ]
    if args.size == "tiny":  # smoke: a short warm start on a few videos
        out += [
            "data.synthetic.num_videos=12",
            "model.warm_start.steps=4",
            "model.warm_start.batch_size=4",
            "model.warm_start.data.num_videos=12",
        ]
    return out + list(args.overrides)  # last: the caller's win


QUIET = [
    "logger=csv",
    "callbacks.validation=null",
    "callbacks.model_checkpoint=null",
    "callbacks.progress_bar=null",
    "dumps.credit_every_n_steps=0",
    "save_hf_model=false",
]


class StepClock(L.Callback):
    """perf_counter at every training batch's end (after the optimizer step), written as JSON at the end."""

    def __init__(self, path: str):
        self.path, self.ends = path, []

    def on_train_batch_end(self, *args, **kwargs) -> None:
        self.ends.append(time.perf_counter())

    def on_train_end(self, *args, **kwargs) -> None:
        Path(self.path).write_text(json.dumps({"step_ends": self.ends}))


def quantile(values: list[float], q: float) -> float:
    """The q-quantile of sorted `values` (nearest rank)."""
    return values[min(len(values) - 1, int(q * len(values)))]


def intervals(ends: list[float], skip: int) -> list[float]:
    """Iteration times: differences of consecutive step ends, the first `skip` steps left out."""
    return [b - a for a, b in zip(ends, ends[1:])][skip:]


def run_ours(args, work: Path, tag: str) -> dict:
    clock = work / f"ours_{tag}.json"
    cmd = [
        sys.executable, "-m", "visd_exp.train", *shared_overrides(args), *QUIET,
        f"trainer.max_steps={args.steps}",
        "+callbacks.step_clock._target_=vs_trl.StepClock", f"+callbacks.step_clock.path={clock}",
        f"hydra.run.dir={work / f'ours_{tag}'}",
    ]  # fmt: skip
    subprocess_or_exit("ours", cmd, work / f"ours_{tag}.log")
    with open(work / f"ours_{tag}" / "csv" / "version_0" / "metrics.csv", newline="") as handle:
        lengths = [float(r["completions/mean_length"]) for r in csv.DictReader(handle) if r.get("step_time")]
    return {
        "iteration_s": intervals(json.loads(clock.read_text())["step_ends"], args.skip),
        "completion_mean_length": statistics.fmean(lengths),
    }


def run_trl(args, work: Path, tag: str) -> dict:
    out = work / f"trl_{tag}.json"
    cmd = [sys.executable, str(Path(__file__)), "--worker", str(out), *forwarded(args)]
    subprocess_or_exit("trl", cmd, work / f"trl_{tag}.log")
    return json.loads(out.read_text())


def forwarded(args) -> list[str]:
    return [f"--steps={args.steps}", f"--skip={args.skip}", f"--seed={args.seed}",
            f"--new-tokens={args.new_tokens}", f"--size={args.size}", *args.overrides]  # fmt: skip


def subprocess_or_exit(name: str, cmd: list[str], log: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PROJECT_ROOT": str(ROOT),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "bench"), os.environ.get("PYTHONPATH", "")]),
    }
    with log.open("w") as handle:
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)
    if code != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit(f"{name}: run failed (exit {code}); see {log}\n" + "\n".join(tail))


# -- the TRL side (a process of its own: --worker) ------------------------------------------------------
def trl_worker(args) -> None:
    """Train TRL's GRPOTrainer on the same model, prompts and reward; write its iteration times."""
    try:
        import trl
    except ImportError:
        raise SystemExit("TRL is not installed: pip install -e .[bench]") from None
    from datasets import Dataset
    from hydra import compose, initialize_config_dir
    from transformers import TrainerCallback

    from visd_exp.data.datamodule import VideoQADataModule
    from visd_exp.models import load_model_and_processor
    from visd_exp.rewards import RewardConfig, score_batch
    from visd_exp.utils.setup import quiet_known_warnings

    quiet_known_warnings()
    work = Path(args.worker).parent
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train.yaml", [*shared_overrides(args), f"paths.output_dir={work / 'trl_run'}"])
    model, processor = load_model_and_processor(cfg.model, cfg.data)
    datamodule = VideoQADataModule(cfg.data, processor)
    datamodule.setup("fit")
    rows = [trl_row(item) for item in datamodule.datasets["train"]]
    check_same_prompts(processor, rows, datamodule.datasets["train"])
    reward_cfg = RewardConfig.from_cfg(cfg.reward)

    def reward(completions, sample_json, **kwargs):  # our verifier's total, as on our side
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        scores = score_batch(texts, [json.loads(s) for s in sample_json], progress=0.5, cfg=reward_cfg)
        return [s["total"] for s in scores]

    class Clock(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, *a, **k):
            self.ends.append(time.perf_counter())

    algo, optim = cfg.algorithm, cfg.optim
    config = trl.GRPOConfig(
        output_dir=str(work / "trl_run"),
        per_device_train_batch_size=PROMPTS_PER_STEP * G,  # completions per step
        num_generations=G,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens},
        temperature=algo.temperature,
        top_p=algo.top_p,
        top_k=algo.top_k,
        beta=0.0,
        loss_type="grpo",  # token mean per sequence, then the mean over sequences: our Eq. 9
        epsilon=algo.epsilon,
        learning_rate=optim.lr,
        weight_decay=optim.weight_decay,
        adam_beta1=optim.betas[0],
        adam_beta2=optim.betas[1],
        adam_epsilon=optim.eps,
        max_grad_norm=optim.max_grad_norm,
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        max_steps=args.steps,
        logging_steps=1,  # ours logs every step too
        report_to="none",
        save_strategy="no",
        seed=args.seed,
        log_completions=False,
        remove_unused_columns=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    clock = Clock()
    trainer = trl.GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
        callbacks=[clock],
    )
    trainer.train()
    lengths = [
        h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h
    ]
    Path(args.worker).write_text(
        json.dumps(
            {
                "iteration_s": intervals(clock.ends, args.skip),
                "completion_mean_length": statistics.fmean(lengths) if lengths else None,
                "trl_version": trl.__version__,
            }
        )
    )


def trl_row(item: dict) -> dict:
    """One TRL dataset row from one of our items: our chat messages, its one frame, the record for the reward."""
    from PIL import Image

    from visd_exp.data.prompts import build_messages

    sample = item["sample"]
    if len(item["frames"]) != 1:
        raise SystemExit(
            f"{sample['id']}: {len(item['frames'])} frames; this bench compares one-frame prompts"
        )

    messages = build_messages(
        sample["question"], sample["task"], sample["frame_times"], sample["video_duration"]
    )
    # every message's content as a list of parts (the datasets library stores one schema per column)
    messages[0]["content"] = [{"type": "text", "text": messages[0]["content"]}]
    frame = Image.fromarray(item["frames"][0].permute(1, 2, 0).numpy())
    return {"prompt": messages, "image": frame, "sample_json": json.dumps(sample, default=str)}


def check_same_prompts(processor, rows: list[dict], dataset) -> None:
    """TRL tokenises prompts with the processor's chat template; each must equal our token ids and image grid."""
    from trl.data_utils import prepare_multimodal_messages

    for i, row in enumerate(rows):
        theirs = processor.apply_chat_template(
            conversation=[prepare_multimodal_messages(row["prompt"], images=[row["image"]])],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )
        ours = dataset[i]
        if theirs["input_ids"][0] != ours["input_ids"][0].tolist() or (
            theirs["image_grid_thw"].tolist() != ours["image_grid_thw"].tolist()
        ):
            raise SystemExit(
                f"prompt {i} ({ours['sample']['id']}): TRL's tokens or image grid differ from ours"
            )


# -- the comparison ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--skip", type=int, default=5, help="first iterations left out of the medians")
    parser.add_argument("--rounds", type=int, default=7, help="each runs ours and TRL once, order rotated")
    parser.add_argument("--new-tokens", type=int, default=128, help="new tokens of every completion")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=("default", "tiny"), default="default")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "vs_trl.json")
    parser.add_argument(
        "overrides", nargs="*", help="extra key=value for both sides (e.g. paths.cache_dir=...)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run the TRL side, write JSON here
    args = parser.parse_args(argv)
    if args.worker:
        trl_worker(args)
        return None
    try:
        import trl
    except ImportError:
        raise SystemExit("TRL is not installed: pip install -e .[bench]") from None
    work = Path(tempfile.mkdtemp(prefix="vs_trl-"))
    sides = {"ours": run_ours, "trl": run_trl}
    names = list(sides)
    rounds = []
    for r in range(args.rounds):
        results = {}
        for name in names[r % 2 :] + names[: r % 2]:  # alternating, the order rotated
            start = time.perf_counter()
            timed = sides[name](args, work, str(r))
            results[name] = {
                **timed,
                "median_iteration_s": statistics.median(timed["iteration_s"]),
                "wall_s": time.perf_counter() - start,
            }
            print(
                f"round {r} {name}: median iteration {results[name]['median_iteration_s']:.3f} s", flush=True
            )
        results["ratio"] = results["ours"]["median_iteration_s"] / results["trl"]["median_iteration_s"]
        rounds.append(results)
    pooled = {name: sorted(x for rd in rounds for x in rd[name]["iteration_s"]) for name in names}
    result = {
        "ours_vs_trl": statistics.median(rd["ratio"] for rd in rounds),
        "per_round": [rd["ratio"] for rd in rounds],
        # every timed iteration of all rounds together: less moved by one slow stretch of the machine;
        # the 20th percentile, by the slowdowns that only ever add time
        "pooled": {
            "ours_median_s": statistics.median(pooled["ours"]),
            "trl_median_s": statistics.median(pooled["trl"]),
            "median_ratio": statistics.median(pooled["ours"]) / statistics.median(pooled["trl"]),
            "p20_ratio": quantile(pooled["ours"], 0.2) / quantile(pooled["trl"], 0.2),
            "iterations_per_side": len(pooled["ours"]),
        },
        "ours_s": statistics.median(rd["ours"]["median_iteration_s"] for rd in rounds),
        "trl_s": statistics.median(rd["trl"]["median_iteration_s"] for rd in rounds),
        "target": 1.0,
        "rounds": rounds,
        "trl_version": trl.__version__,
        "prompts_per_step": PROMPTS_PER_STEP,
        "num_generations": G,
        **{key: getattr(args, key) for key in ("new_tokens", "steps", "skip", "seed", "size")},
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "command": "bench/vs_trl.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        f"ours / TRL = {result['ours_vs_trl']:.3f} (rounds {[round(r, 3) for r in result['per_round']]}; "
        f"pooled median {result['pooled']['median_ratio']:.3f}, p20 {result['pooled']['p20_ratio']:.3f}) -> {args.out}"
    )
    return result


if __name__ == "__main__":
    main()
