"""Run set-up shared by the entry points: project root, loggers, callbacks, the saved config."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from visd_exp.utils import recipe as _recipe  # noqa: F401  registers ${required:} for every entry point


def quiet_known_warnings() -> None:
    """Silence library messages that do not apply to this project's loop (documented choices)."""
    import logging
    import warnings

    # We save checkpoints after the optimizer step on purpose (manual optimisation).
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    # Validation runs through callbacks, not a validation_step.
    warnings.filterwarnings("ignore", message=".*no `validation_step`.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
    warnings.filterwarnings("ignore", message=".*The anonymous setting has no effect.*")
    # The teacher copy is in eval mode on purpose (visd_exp/teacher/variants.py).
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )


def find_project_root(start: Path | None = None) -> Path:
    """The nearest directory above `start` (default: this file, then cwd) holding pyproject.toml."""
    for base in ([start] if start else []) + [Path(__file__).resolve(), Path.cwd()]:
        for parent in [base, *base.parents]:
            if (parent / "pyproject.toml").is_file() and (parent / "conf").is_dir():
                return parent
    return Path.cwd()


def check_writable(output_dir: Path) -> None:
    """Fail at start, with the path in the message, when the run directory cannot be written."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SystemExit(f"cannot write the run directory {output_dir}: {exc.strerror or exc}") from None


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path`: a path, or "last" = this run directory's last.ckpt, else the newest run's of this task."""
    ckpt = cfg.get("ckpt_path")
    if ckpt != "last":
        if ckpt is not None and not Path(ckpt).exists():  # a DeepSpeed checkpoint is a directory
            raise SystemExit(f"ckpt_path={ckpt}: no such checkpoint")
        return ckpt
    own = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    if own.exists():
        return str(own)
    runs = Path(cfg.paths.log_dir) / cfg.task_name
    candidates = sorted(runs.glob("*/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    candidates += sorted(runs.glob("*/*/*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise SystemExit(f"ckpt_path=last: no checkpoints/last.ckpt under {runs}")
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    print(f"resuming from {newest}")
    return str(newest)


def save_run_config(cfg: DictConfig, output_dir: Path) -> None:
    """The resolved config next to the run's logs (Hydra also keeps the unresolved one in .hydra/)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))


def build_loggers(cfg: DictConfig) -> list:
    import hydra

    loggers = []
    for node in (cfg.get("logger") or {}).values():
        if node is not None and "_target_" in node:
            loggers.append(hydra.utils.instantiate(node))
    return loggers


def build_callbacks(cfg: DictConfig) -> list:
    import hydra

    callbacks = []
    for node in (cfg.get("callbacks") or {}).values():
        if node is not None and "_target_" in node:
            callbacks.append(hydra.utils.instantiate(node))
    return callbacks
