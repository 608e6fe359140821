"""Training entry point: compose the config, build data, model and module, fit.

python -m visd_exp.train                          # the tiny offline default (GRPO)
python -m visd_exp.train +experiment=grpo trainer.max_steps=5
python -m visd_exp.train -m +experiment=grpo seed=0,1
python -m visd_exp.train +experiment=sft data=jsonl data.train_file=sft.jsonl   # the SFT stage (sft.py)
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from visd_exp.utils.setup import find_project_root

os.environ.setdefault("PROJECT_ROOT", str(find_project_root()))
log = logging.getLogger(__name__)


def is_sft(cfg: DictConfig) -> bool:
    """`algorithm.name == "sft"`: supervised fine-tuning (sft.py) instead of RL; no teacher, no judge."""
    return cfg.algorithm.get("name") == "sft"


def check_judge(cfg: DictConfig) -> None:
    """Build and close the judge once: its constructor checks the key and the options (no request sent)."""
    from visd_exp.judge import build_judge

    if is_sft(cfg):  # SFT never calls a judge or a teacher
        return
    teacher = cfg.get("teacher")
    if teacher is None or teacher.get("name") in (None, "none") or not cfg.get("judge"):
        return
    judge = build_judge(cfg.judge)
    if judge is not None:
        judge.close()


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit one run described by `cfg`; returns the last logged metrics."""
    import lightning as L

    from visd_exp.data.datamodule import VideoQADataModule
    from visd_exp.models import load_model_and_processor
    from visd_exp.models.partitioned import load_partitioned, load_processor_only, wants_partitioned_init
    from visd_exp.module import VISDModule
    from visd_exp.utils.recipe import check_prompts_per_step, check_required_values
    from visd_exp.utils.setup import (
        build_callbacks,
        build_loggers,
        check_writable,
        quiet_known_warnings,
        resolve_ckpt_path,
        save_run_config,
    )

    quiet_known_warnings()
    check_required_values(cfg)  # e.g. +experiment=paper_7b without model.init_from: fail before anything runs
    check_prompts_per_step(cfg)  # the stated prompts per optimizer step, when devices is a number
    if cfg.model.get("init_from") is not None:
        from visd_exp.models.loading import check_init_from

        check_init_from(cfg.model.init_from)  # a wrong SFT path fails here, not after the judge and data
    output_dir = Path(cfg.paths.output_dir)
    check_writable(output_dir)
    save_run_config(cfg, output_dir)
    L.seed_everything(cfg.seed, workers=True)

    check_judge(cfg)  # a misconfigured remote judge (missing key, bad options) fails before the model loads
    if wants_partitioned_init(cfg) and not is_sft(cfg):
        # ZeRO-3: the module builds the student (and teacher) partitioned inside zero.Init, reading the
        # weights file by file (models/partitioned.py); here only the processor is loaded
        processor = load_processor_only(cfg.model, cfg.data)
        model = functools.partial(load_partitioned, cfg.model, cfg.data)
    else:
        model, processor = load_model_and_processor(cfg.model, cfg.data)
    if is_sft(cfg):  # the same data module and prompts as RL; train records without a target dropped
        from visd_exp.sft import SFTModule, sft_datamodule

        if (cfg.get("teacher") or {}).get("name") not in (None, "none"):
            log.warning("algorithm=sft: teacher=%s is not used (SFT has no teacher)", cfg.teacher.name)
        datamodule = sft_datamodule(cfg, processor)
        module = SFTModule(model, processor, cfg)
    else:
        datamodule = VideoQADataModule(cfg.data, processor)
        module = VISDModule(model, processor, cfg)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=build_callbacks(cfg), logger=build_loggers(cfg))
    check_prompts_per_step(cfg, trainer.num_devices, trainer.num_nodes)  # devices -1/auto resolved now
    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg))

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    for logger in trainer.loggers:  # close the offline wandb run, so a process running several is clean
        if type(logger).__name__ == "WandbLogger":
            logger.experiment.finish()
    if cfg.get("save_hf_model", True):
        from visd_exp.distributed.zero import save_pretrained
        from visd_exp.models.processor import save_processor

        # hook (multi-process, ZeRO-3): the student is gathered, rank 0 writes
        if save_pretrained(module.model, output_dir / "hf_model"):
            save_processor(processor, output_dir / "hf_model")
    log.info("run directory: %s", output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../../conf", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    return metrics.get(cfg.get("optimized_metric", "reward"))


if __name__ == "__main__":
    main()
