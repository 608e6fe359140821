"""Pre-flight of a SLURM launch of visd_exp.train: run once in the batch script, before `srun` starts the ranks.

    python scripts/slurm/preflight.py +experiment=paper_7b model.init_from=... data.train_file=...

It takes the same overrides as the `srun python -m visd_exp.train ...` line that follows it.

Why: under `srun`, Lightning 2.6 (SLURMEnvironment) reads every process's world size, rank and local rank
from SLURM's variables, and since SLURM, not Lightning, created the processes, it never compares them with
the trainer's flags (its `validate_settings` runs only for processes Lightning launches itself). An
allocation of `--ntasks-per-node=4` for `trainer.devices=8` would train on half the GPUs, with half the
prompts per optimizer step that train.py's recipe check computes from devices x nodes. This script stops
first, naming both sides, when
  - SLURM_NTASKS_PER_NODE (sbatch --ntasks-per-node) differs from trainer.devices,
  - SLURM_JOB_NUM_NODES (sbatch --nodes) differs from trainer.num_nodes,
  - SLURM_GPUS_ON_NODE (set where GPUs are allocated) is smaller than trainer.devices;
then it runs train.py's start-up checks that need no model (required values, prompts per step, the
judge's key and options), so a missing API key stops the job once, here, not in every rank.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def compose_train(overrides: list[str]):
    """conf/train.yaml with `overrides` (Hydra's own `hydra.*` / `hydra/...` ones are left out: they
    cannot change the trainer or the judge)."""
    from hydra import compose, initialize_config_dir

    kept = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=kept)


def _slurm_int(env: Mapping[str, str], name: str, flag: str) -> int | None:
    value = env.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"preflight: {name}={value!r} ({flag}) is not a number") from None


def layout_problems(cfg, env: Mapping[str, str]) -> list[str]:
    """What disagrees between the SLURM allocation in `env` and `cfg.trainer`; empty when they match."""
    from visd_exp.utils.recipe import device_count

    if "SLURM_JOB_ID" not in env:
        return ["not inside a SLURM job (no SLURM_JOB_ID): submit with sbatch"]
    devices = device_count(cfg.trainer.get("devices", 1))
    num_nodes = int(cfg.trainer.get("num_nodes", 1) or 1)
    tasks = _slurm_int(env, "SLURM_NTASKS_PER_NODE", "--ntasks-per-node")
    nodes = _slurm_int(env, "SLURM_JOB_NUM_NODES", "--nodes")
    if nodes is None:
        nodes = _slurm_int(env, "SLURM_NNODES", "--nodes")
    gpus = _slurm_int(env, "SLURM_GPUS_ON_NODE", "--gpus-per-node")
    problems = []
    if tasks is None:
        problems.append(
            "SLURM_NTASKS_PER_NODE is unset: give sbatch --ntasks-per-node (one task per device; Lightning "
            "refuses --ntasks alone)"
        )
    elif devices is None:  # devices -1 / auto: Lightning takes every visible GPU of the node
        if gpus is not None and gpus != tasks:
            problems.append(
                f"trainer.devices={cfg.trainer.devices} takes all {gpus} GPUs of a node, but "
                f"--ntasks-per-node={tasks}: set trainer.devices={tasks} or --gpus-per-node={tasks}"
            )
    elif tasks != devices:
        problems.append(
            f"--ntasks-per-node={tasks} (SLURM_NTASKS_PER_NODE) but trainer.devices={devices}: srun starts one "
            "process per task and Lightning uses each as one device; make them equal"
        )
    if nodes is not None and nodes != num_nodes:
        problems.append(
            f"--nodes={nodes} (SLURM_JOB_NUM_NODES) but trainer.num_nodes={num_nodes}: make them equal"
        )
    if gpus is not None and devices is not None and gpus < devices:
        problems.append(
            f"{gpus} GPUs per node allocated (SLURM_GPUS_ON_NODE) but trainer.devices={devices}: "
            f"give sbatch --gpus-per-node={devices}"
        )
    return problems


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    overrides = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    from visd_exp.train import check_judge  # also sets PROJECT_ROOT, which conf/paths reads
    from visd_exp.utils.recipe import check_prompts_per_step, check_required_values

    cfg = compose_train(overrides)
    problems = layout_problems(cfg, env)
    if problems:
        print("preflight: the SLURM allocation does not match the trainer config:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    try:
        check_required_values(cfg)
        check_prompts_per_step(cfg)
        check_judge(cfg)
    except (ValueError, RuntimeError, OSError) as exc:  # RecipeError: ValueError; a missing key: JudgeError
        print(f"preflight: {exc}", file=sys.stderr)
        return 2
    print(
        f"preflight ok: {cfg.trainer.get('num_nodes', 1)} nodes x {cfg.trainer.devices} devices, "
        f"judge={cfg.judge.get('name') if cfg.get('judge') else None}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
