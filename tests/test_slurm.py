"""Beyond one machine: scripts/slurm/paper_7b.sbatch against the composed paper_7b config, the script's
behaviour in a simulated SLURM allocation (first start, requeue, resubmission, a wrong allocation, a missing
judge key), and a Hydra sweep through the submitit launcher (submitit_local: jobs as subprocesses)."""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT
from test_train_e2e import fast, run_module, shared_paths

SBATCH = PROJECT_ROOT / "scripts" / "slurm" / "paper_7b.sbatch"
JOB_ID = "4242017"


def sbatch_options(path: Path = SBATCH) -> dict[str, str | None]:
    """The script's `#SBATCH --key=value` lines as {key: value} (None for a flag without a value)."""
    options = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#SBATCH"):
            continue
        match = re.fullmatch(r"#SBATCH\s+--([a-z-]+)(?:=(\S+))?\s*", line)
        assert match, f"{path.name}: cannot read {line!r} (expected '#SBATCH --key=value')"
        key, value = match.groups()
        assert key not in options, f"{path.name}: --{key} is given twice"
        options[key] = value
    return options


def compose_with_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def load_preflight():
    spec = importlib.util.spec_from_file_location("slurm_preflight", SBATCH.parent / "preflight.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sbatch_layout_is_the_paper_7b_trainer():
    """--nodes = trainer.num_nodes, --ntasks-per-node = --gpus-per-node = trainer.devices (one task per GPU:
    Lightning's SLURMEnvironment makes each srun task a rank); nothing that breaks Lightning's SLURM path."""
    options = sbatch_options()
    trainer = compose_with_hydra(["+experiment=paper_7b"]).trainer
    assert int(options["nodes"]) == trainer.num_nodes == 2
    assert int(options["ntasks-per-node"]) == trainer.devices == 8
    assert int(options["gpus-per-node"]) == trainer.devices
    # --ntasks alone: Lightning raises; --gpus-per-task: each task would see one GPU, devices=8 fails
    assert "ntasks" not in options and "gpus-per-task" not in options
    # requeued jobs restart the script (same job id) and append to the same log; no --signal, so Lightning's
    # SIGUSR1 handler never writes hpc_ckpt_* mid-step nor requeues the job behind the script's back
    assert "requeue" in options and options["open-mode"] == "append" and "signal" not in options
    assert "%j" in options["output"]


@pytest.fixture
def cluster(tmp_path):
    """A simulated allocation of what the #SBATCH lines ask for, and an `srun` that records its command
    and the environment its tasks would get, then exits 0."""
    options = sbatch_options()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$@" > "$FAKE_SRUN_DIR/args"\n'
        'printf "%s\\n" "OMP_NUM_THREADS=$OMP_NUM_THREADS" "SRUN_CPUS_PER_TASK=$SRUN_CPUS_PER_TASK" '
        '"MASTER_PORT=$MASTER_PORT" "key_set=${OPENAI_API_KEY:+yes}" > "$FAKE_SRUN_DIR/env"\n'
    )
    srun.chmod(0o755)
    init = tmp_path / "sft"  # the checkpoint is not loaded here, only named
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "OPENAI_"))},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SRUN_DIR": str(tmp_path),
        "PYTHON": sys.executable,
        "LOG_DIR": str(tmp_path / "logs"),
        "SLURM_SUBMIT_DIR": str(PROJECT_ROOT),
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_JOB_NAME": options["job-name"],
        "SLURM_JOB_NUM_NODES": options["nodes"],
        "SLURM_NNODES": options["nodes"],
        "SLURM_NTASKS_PER_NODE": options["ntasks-per-node"],
        "SLURM_GPUS_ON_NODE": options["gpus-per-node"],
        "SLURM_CPUS_PER_TASK": options["cpus-per-task"],
        "OPENAI_API_KEY": "sk-test-never-printed-7f3a",
    }
    overrides = [
        f"model.init_from={init}",
        f"data.train_file={tmp_path / 'train.jsonl'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]

    def submit(*extra: str, **env_changes: str | None):
        job_env = {**env, **env_changes}
        job_env = {k: v for k, v in job_env.items() if v is not None}
        for name in ("args", "env"):
            (tmp_path / name).unlink(missing_ok=True)
        result = subprocess.run(
            ["bash", str(SBATCH), *overrides, *extra],
            cwd=PROJECT_ROOT,
            env=job_env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        ran = (tmp_path / "args").is_file()
        args = (tmp_path / "args").read_text().splitlines() if ran else None
        lines = (tmp_path / "env").read_text().splitlines() if ran else []
        task_env = dict(line.split("=", 1) for line in lines) if ran else None
        return result, args, task_env

    return submit, tmp_path, options


def train_overrides(args: list[str]) -> list[str]:
    """The overrides of `srun ... python -m visd_exp.train <overrides>`."""
    assert args[0] == "--kill-on-bad-exit=1" and args[1] == sys.executable
    assert args[2:4] == ["-m", "visd_exp.train"]
    return args[4:]


def test_sbatch_starts_the_recipe_and_resumes_its_own_run_after_a_requeue(cluster, monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from visd_exp.utils.setup import resolve_ckpt_path

    submit, tmp_path, options = cluster
    run_dir = tmp_path / "logs" / "train" / "runs" / f"slurm-{JOB_ID}"
    # another run's checkpoint under the same log directory, newer than anything of this job
    decoy = tmp_path / "logs" / "train" / "runs" / "2026-01-01_00-00-00" / "checkpoints" / "last.ckpt"
    decoy.parent.mkdir(parents=True)
    decoy.write_text("another run")

    result, args, task_env = submit()
    assert result.returncode == 0, result.stderr
    assert args is not None, "srun was not called"
    overrides = train_overrides(args)
    assert overrides[0] == "+experiment=paper_7b"
    assert not any(o.startswith("ckpt_path=") for o in overrides)  # a first start: not the decoy's run
    cfg = compose_with_hydra(overrides)
    assert Path(cfg.hydra.run.dir) == run_dir  # every rank and every restart: the same directory
    assert cfg.trainer.num_nodes == int(options["nodes"])
    assert cfg.trainer.devices == int(options["ntasks-per-node"])
    assert cfg.judge.name == "openai" and cfg.judge.api_key_env == "OPENAI_API_KEY"
    # each task's threads are its cores; the key reaches the tasks through the environment, never in text
    assert task_env["OMP_NUM_THREADS"] == options["cpus-per-task"] == task_env["SRUN_CPUS_PER_TASK"]
    assert task_env["key_set"] == "yes"
    for text in (result.stdout, result.stderr, "\n".join(args)):
        assert "sk-test-never-printed-7f3a" not in text
    # MASTER_PORT is the port Lightning would take itself from this job id
    monkeypatch.setenv("MASTER_PORT", "0")
    monkeypatch.delenv("MASTER_PORT")
    for name in ("SLURM_JOB_ID", "SLURM_NTASKS_PER_NODE"):
        monkeypatch.setenv(name, JOB_ID if name == "SLURM_JOB_ID" else options["ntasks-per-node"])
    monkeypatch.setenv("SLURM_NTASKS", str(int(options["nodes"]) * int(options["ntasks-per-node"])))
    assert int(task_env["MASTER_PORT"]) == SLURMEnvironment().main_port

    # The requeue: the same job id, this run's last checkpoint written meanwhile
    own = run_dir / "checkpoints" / "last.ckpt"
    own.parent.mkdir(parents=True)
    own.write_text("this run")
    os.utime(decoy)  # the decoy stays the newest file
    result, args, _ = submit(SLURM_RESTART_COUNT="1")
    assert result.returncode == 0, result.stderr
    overrides = train_overrides(args)
    assert "ckpt_path=last" in overrides and "restart 1" in result.stdout
    cfg = compose_with_hydra(overrides)
    assert Path(cfg.hydra.run.dir) == run_dir
    resolved = OmegaConf.create(
        {"ckpt_path": cfg.ckpt_path, "task_name": cfg.task_name, "paths": {"output_dir": cfg.hydra.run.dir}}
    )
    resolved.paths.log_dir = str(tmp_path / "logs")
    assert resolve_ckpt_path(resolved) == str(own)

    # A new job continuing this run (e.g. after the time limit): RUN_DIR names it
    result, args, _ = submit(SLURM_JOB_ID="4242999", RUN_DIR=str(run_dir))
    assert result.returncode == 0, result.stderr
    overrides = train_overrides(args)
    assert "ckpt_path=last" in overrides and Path(compose_with_hydra(overrides).hydra.run.dir) == run_dir


def test_sbatch_stops_before_srun_on_a_wrong_allocation_or_a_missing_key(cluster):
    submit, _, _ = cluster
    result, args, _ = submit(SLURM_NTASKS_PER_NODE="4")
    assert result.returncode != 0 and args is None
    assert "--ntasks-per-node=4" in result.stderr and "trainer.devices=8" in result.stderr
    result, args, _ = submit("trainer.num_nodes=1")
    assert result.returncode != 0 and args is None
    assert "--nodes=2" in result.stderr and "trainer.num_nodes=1" in result.stderr
    result, args, _ = submit(OPENAI_API_KEY=None)
    assert result.returncode != 0 and args is None and "OPENAI_API_KEY" in result.stderr
    result, args, _ = submit(OPENAI_API_KEY=None, JUDGE="rule")  # the offline judge needs no key
    assert result.returncode == 0, result.stderr
    assert "judge=rule" in train_overrides(args)


ALLOCATION = {
    "SLURM_JOB_ID": "7",
    "SLURM_NTASKS_PER_NODE": "8",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_GPUS_ON_NODE": "8",
}


@pytest.mark.parametrize(
    "overrides, changes, expected",
    [
        ([], {}, []),
        ([], {"SLURM_JOB_NUM_NODES": "1"}, ["--nodes=1"]),
        ([], {"SLURM_GPUS_ON_NODE": "4"}, ["--gpus-per-node=8"]),
        ([], {"SLURM_NTASKS_PER_NODE": None}, ["--ntasks-per-node"]),
        ([], {"SLURM_JOB_ID": None}, ["sbatch"]),
        (["trainer.devices=-1"], {}, []),  # every GPU of the node: 8 GPUs, 8 tasks
        (["trainer.devices=-1"], {"SLURM_NTASKS_PER_NODE": "4"}, ["--ntasks-per-node=4"]),
    ],
)
def test_preflight_names_what_disagrees(overrides, changes, expected):
    preflight = load_preflight()
    cfg = preflight.compose_train(["+experiment=paper_7b", *overrides])
    env = {k: v for k, v in {**ALLOCATION, **changes}.items() if v is not None}
    problems = preflight.layout_problems(cfg, env)
    assert len(problems) == len(expected), problems
    for problem, needle in zip(problems, expected):
        assert needle in problem


@pytest.mark.slow
def test_submitit_local_sweep_writes_both_runs_and_the_summary(cache_dir, tmp_path):
    """`hydra/launcher=submitit_local`: each job is its own submitit subprocess; the summary is written by
    the Hydra callback in the launching process once both have returned."""
    result = run_module(
        "train",
        "-m",
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=30",
        "+experiment=grpo",
        "seed=0,1",
        "trainer.max_steps=1",
        "logger=csv",
        *fast("trainer.max_steps"),
        *shared_paths(cache_dir, tmp_path),
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=900,
    )
    (sweep,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    jobs = {}
    for num in ("0", "1"):
        assert (sweep / num / "csv" / "version_0" / "metrics.csv").is_file()
        hydra_cfg = yaml.safe_load((sweep / num / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_cfg["launcher"]["_target_"].endswith("submitit_launcher.LocalLauncher")
        jobs[num] = str(hydra_cfg["job"]["id"])
    # the job ids are submitit's (its folders hold each job's logs and result), one per job
    assert len(set(jobs.values())) == 2
    for job_id in jobs.values():
        assert list((sweep / ".submitit" / job_id).glob(f"{job_id}_0_result.pkl"))
    with open(sweep / "summary.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["experiment"] == "grpo" and row["runs"] == "2" and sorted(row["seeds"].split()) == ["0", "1"]
    assert row["reward"] != "nan" and row["grad_norm"] != "nan"
    assert f"summary of 1 experiments: {sweep / 'summary.md'}" in result.stdout
    assert "| grpo |" in (sweep / "summary.md").read_text()


def test_submitit_slurm_launcher_takes_the_readme_overrides():
    """The SLURM launcher's config group is installed (the slurm extra) and the README's sweep command
    composes: each key is a field of the plugin's structured config, which rejects unknown ones."""
    readme = (PROJECT_ROOT / "README.md").read_text()
    (command,) = re.findall(
        r"python -m visd_exp\.train -m hydra/launcher=submitit_slurm[^`]*?(?=\n```)", readme, re.S
    )
    overrides = [word for word in command.replace("\\\n", " ").split()[4:] if "=" in word]
    launcher = [o for o in overrides if o.startswith("hydra.launcher.")]
    assert launcher, command
    plain = [o.replace("<partition>", "gpu") for o in overrides if "," not in o]  # one job of the sweep
    cfg = compose_with_hydra(plain)
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    for override in launcher:
        key, value = override.removeprefix("hydra.launcher.").split("=", 1)
        assert str(cfg.hydra.launcher[key]) == value.replace("<partition>", "gpu")
    assert cfg.hydra.launcher.max_num_timeout == 0  # a resubmitted job would start over: see the README
