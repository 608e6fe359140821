"""A cached SFT warm start of the tiny model on synthetic grounded traces.

Built by the SFT stage itself (visd_exp.sft: SFTDataModule + SFTModule fitted by a Lightning Trainer,
no loggers or checkpoints), so there is one SFT implementation. Keyed by WARM_START_VERSION, the base
model, the warm-start settings and the frame settings of the run's data config (SFT and RL must see
frames the same way), built once under a lock, published atomically.

The default's start is also shipped, built by this module, under assets/warm_starts/ (2.6 MB): a cache
miss whose key has a shipped copy (`model.warm_start.shipped_dir`) copies it instead of training, so a
fresh clone starts RL in seconds from the very start whose numbers README reports (rebuilds on other
machines differ in the last bits of every reduction, and 500 steps carry that far). `shipped_dir=null`
always builds. After changing the default's settings, build and ship the new one:

    python -m visd_exp.models.warm_start [overrides of the train config]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from visd_exp.utils.fs import atomic_directory, file_lock

log = logging.getLogger(__name__)

# 2: built by visd_exp.sft's SFTModule with a Lightning Trainer (1: a hand-written loop); caches of
# another version are never reused.
WARM_START_VERSION = 2

FRAME_KEYS = (
    "fps",
    "min_frames",
    "max_frames",
    "min_pixels",
    "max_pixels",
    "image_max_pixels",
    "total_pixels",
)


# Where things go, not what is built: left out of the key, so a key is the same in every clone.
PLACEMENT_KEYS = ("data_dir", "shipped_dir")


def warm_start_key(base_dir: Path, warm_cfg, data_cfg) -> str:
    settings = OmegaConf.to_container(warm_cfg, resolve=True)
    blob = json.dumps(
        {
            "version": WARM_START_VERSION,
            "base": Path(base_dir).name,
            "warm_start": {k: v for k, v in settings.items() if k not in PLACEMENT_KEYS},
            "frames": {k: data_cfg.get(k) for k in FRAME_KEYS},
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def sft_run_config(warm_cfg):
    """The `algorithm` and `optim` nodes SFTModule reads, from the warm-start settings."""
    return OmegaConf.create(
        {
            "algorithm": {
                "name": "sft",
                "lr_decay": "cosine",
                "min_lr_ratio": 0.1,
                "max_target_length": None,
            },
            "optim": {
                "lr": warm_cfg.lr,
                "weight_decay": warm_cfg.get("weight_decay", 0.0),
                "betas": [0.9, 0.999],
                "eps": 1.0e-8,
                "max_grad_norm": warm_cfg.get("max_grad_norm", 1.0),
                "warmup_steps": warm_cfg.get("warmup_steps", 10),
                "accumulate_grad_batches": 1,
            },
        }
    )


@contextlib.contextmanager
def kept_rng_state() -> Iterator[None]:
    """Building the warm start (or not, when cached) must not move the calling run's RNG streams."""
    import numpy as np
    import torch

    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


class LossHistory(L.Callback):
    """`train/loss` of every training batch, for warm_start.json."""

    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if "train/loss" in trainer.callback_metrics:
            self.losses.append(float(trainer.callback_metrics["train/loss"]))


def build_warm_start(base_dir: Path, out_dir: Path, warm_cfg, data_cfg, data_root: Path) -> list[float]:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from visd_exp.models.processor import load_processor, save_processor
    from visd_exp.sft import SFTDataModule, SFTModule

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(base_dir)
    processor = load_processor(base_dir)
    synthetic = OmegaConf.create(
        {
            "preset": warm_cfg.data.preset,
            "num_videos": warm_cfg.data.num_videos,
            "seed": warm_cfg.data.seed,
            "difficulty": warm_cfg.data.get("difficulty") or {},
            "out_dir": str(
                data_root / f"{warm_cfg.data.preset}-n{warm_cfg.data.num_videos}-s{warm_cfg.data.seed}"
            ),
        }
    )
    frames = {k: data_cfg.get(k) for k in FRAME_KEYS}
    seed = int(warm_cfg.get("seed", 0))
    cfg = OmegaConf.create(
        {
            **frames,
            "synthetic": synthetic,
            "train_file": f"{synthetic.out_dir}/train.jsonl",
            "val_file": None,
            "test_file": None,
            "tasks": None,
            "seed": seed,
            "batch_size": warm_cfg.batch_size,
            "num_workers": 0,
            "cache_items": True,  # 64-256 videos seen for hundreds of steps: decode and encode each once
            "max_prompt_length": data_cfg.get("max_prompt_length", 16384),
        }
    )
    datamodule = SFTDataModule(cfg, processor)
    module = SFTModule(model, processor, sft_run_config(warm_cfg))
    record = LossHistory()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=int(warm_cfg.steps),
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[record],
        default_root_dir=str(out_dir),
    )
    torch.manual_seed(seed)
    random.seed(seed)
    with warnings.catch_warnings():  # documented choices (utils/setup.py: quiet_known_warnings)
        warnings.filterwarnings("ignore", message=".*no `validation_step`.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
        trainer.fit(module, datamodule=datamodule)
    model.eval()
    model.save_pretrained(out_dir)
    save_processor(processor, out_dir)
    (out_dir / "warm_start.json").write_text(
        json.dumps(
            {
                "version": WARM_START_VERSION,
                "config": OmegaConf.to_container(cfg, resolve=True),
                "sft": OmegaConf.to_container(sft_run_config(warm_cfg), resolve=True),
                "losses": record.losses,
            },
            indent=1,
        )
    )
    return record.losses


def ensure_warm_start(base_dir: Path, warm_cfg, data_cfg, cache_dir: Path, data_root: Path) -> Path:
    final = Path(cache_dir) / f"{Path(base_dir).name}-sft-{warm_start_key(base_dir, warm_cfg, data_cfg)}"
    if (final / "warm_start.json").exists():
        return final
    shipped_dir = warm_cfg.get("shipped_dir")
    shipped = Path(shipped_dir) / final.name if shipped_dir else None
    with file_lock(str(final) + ".lock"):
        if (final / "warm_start.json").exists():
            return final
        if shipped is not None and (shipped / "warm_start.json").is_file():
            log.info("warm start: the shipped %s (model.warm_start.shipped_dir=null builds it)", shipped)
            with atomic_directory(final) as tmp:
                shutil.copytree(shipped, tmp, dirs_exist_ok=True)
            return final
        log.info("building the SFT warm start (%d steps) into %s", warm_cfg.steps, final)
        with atomic_directory(final) as tmp, kept_rng_state():
            losses = build_warm_start(Path(base_dir), tmp, warm_cfg, data_cfg, Path(data_root))
        log.info("warm start done: loss %.3f -> %.3f", losses[0], losses[-1])
    return final


def ship(built: Path, shipped_dir: Path, root: Path) -> Path:
    """Copy a built start into shipped_dir; paths in its record are made relative to the project root."""
    target = Path(shipped_dir) / built.name
    with atomic_directory(target) as tmp:
        shutil.copytree(built, tmp, dirs_exist_ok=True)
        record = tmp / "warm_start.json"
        record.write_text(record.read_text().replace(str(root) + "/", ""))
    return target


def main(argv: list[str] | None = None) -> int:
    """Build the (default) train config's warm start without the shipped copy, then ship it."""
    import sys

    from hydra import compose, initialize_config_dir

    from visd_exp.models.loading import resolve_model_path
    from visd_exp.utils.setup import find_project_root

    root = find_project_root()
    os.environ.setdefault("PROJECT_ROOT", str(root))
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(sys.argv[1:] if argv is None else argv))
    shipped_dir = cfg.model.warm_start.shipped_dir
    cfg.model.warm_start.shipped_dir = None  # the cache is keyed without it: a cached build is reused
    built = Path(resolve_model_path(cfg.model, cfg.data))
    print(f"shipped {built.name} to {ship(built, Path(shipped_dir), root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
