"""A cached SFT warm start of the tiny model on synthetic grounded traces.

Keyed by the base model, the warm-start settings and the frame settings of the run's data config
(SFT and RL must see frames the same way), built once under a lock, published atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from visd_exp.utils.fs import atomic_directory, file_lock

log = logging.getLogger(__name__)

FRAME_KEYS = (
    "fps",
    "min_frames",
    "max_frames",
    "min_pixels",
    "max_pixels",
    "image_max_pixels",
    "total_pixels",
)


def warm_start_key(base_dir: Path, warm_cfg, data_cfg) -> str:
    blob = json.dumps(
        {
            "base": Path(base_dir).name,
            "warm_start": OmegaConf.to_container(warm_cfg, resolve=True),
            "frames": {k: data_cfg.get(k) for k in FRAME_KEYS},
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def build_warm_start(base_dir: Path, out_dir: Path, warm_cfg, data_cfg, data_root: Path) -> list[float]:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from visd_exp.data.datamodule import VideoQADataModule
    from visd_exp.models.processor import load_processor, save_processor
    from visd_exp.sft import run_sft

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
    cfg = OmegaConf.create(
        {
            **frames,
            "synthetic": synthetic,
            "train_file": f"{synthetic.out_dir}/train.jsonl",
            "val_file": None,
            "test_file": None,
            "tasks": None,
            "seed": warm_cfg.get("seed", 0),
            "batch_size": warm_cfg.batch_size,
            "num_workers": 0,
            "max_prompt_length": data_cfg.get("max_prompt_length", 16384),
        }
    )
    datamodule = VideoQADataModule(cfg, processor)
    datamodule.prepare_data()
    datamodule.setup("fit")
    losses = run_sft(
        model,
        processor,
        datamodule.train_dataloader(),
        steps=warm_cfg.steps,
        lr=warm_cfg.lr,
        seed=warm_cfg.get("seed", 0),
    )
    model.save_pretrained(out_dir)
    save_processor(processor, out_dir)
    (out_dir / "warm_start.json").write_text(
        json.dumps({"config": OmegaConf.to_container(cfg, resolve=True), "losses": losses}, indent=1)
    )
    return losses


def ensure_warm_start(base_dir: Path, warm_cfg, data_cfg, cache_dir: Path, data_root: Path) -> Path:
    final = Path(cache_dir) / f"{Path(base_dir).name}-sft-{warm_start_key(base_dir, warm_cfg, data_cfg)}"
    if (final / "warm_start.json").exists():
        return final
    with file_lock(str(final) + ".lock"):
        if (final / "warm_start.json").exists():
            return final
        log.info("building the SFT warm start (%d steps) into %s", warm_cfg.steps, final)
        with atomic_directory(final) as tmp:
            losses = build_warm_start(Path(base_dir), tmp, warm_cfg, data_cfg, Path(data_root))
        log.info("warm start done: loss %.3f -> %.3f", losses[0], losses[-1])
    return final
