"""One loading path for every model: a hub id, a local directory, or the tiny offline model.

`pretrained_model_name_or_path`, `dtype` and `attn_implementation` go straight to transformers'
`from_pretrained`, so the 7B recipe and the tiny default exercise the same code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "auto": "auto",
}

VISION_SPECIAL_TOKENS = (
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def resolve_model_path(cfg, data_cfg=None) -> str:
    """The directory or hub id to load; builds the tiny model (and its SFT warm start) when configured."""
    if cfg.get("tiny") is not None:
        from omegaconf import OmegaConf

        from visd_exp.models.tiny import ensure_tiny

        spec = OmegaConf.to_container(cfg.tiny, resolve=True) if not isinstance(cfg.tiny, dict) else cfg.tiny
        path = ensure_tiny(cfg.cache_dir, spec)
        warm = cfg.get("warm_start")
        if warm is not None and warm.steps > 0:
            from visd_exp.models.warm_start import ensure_warm_start

            if data_cfg is None:
                raise ValueError("model.warm_start needs the run's data config (frame settings)")
            path = ensure_warm_start(path, warm, data_cfg, cfg.cache_dir, Path(warm.data_dir))
        return str(path)
    path = cfg.pretrained_model_name_or_path
    if path is None:
        raise ValueError("model.pretrained_model_name_or_path is not set (and model.tiny is null)")
    return str(path)


def load_model_and_processor(cfg, data_cfg=None):
    """Load (model, processor) for a `model` config node (`data_cfg`: frame settings for a warm start)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from visd_exp.models.processor import load_processor

    path = resolve_model_path(cfg, data_cfg)
    local = Path(path).exists()
    dtype = _DTYPES[str(cfg.get("dtype", "float32"))]
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
        path,
        dtype=dtype,
        attn_implementation=cfg.get("attn_implementation", "sdpa"),
        local_files_only=local,
    )
    processor = load_processor(path, local_files_only=local)
    if cfg.get("gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    log.info(
        "loaded %s (%.2fM parameters, %s)", path, sum(p.numel() for p in model.parameters()) / 1e6, dtype
    )
    return model, processor


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the vision special tokens, which must never be sampled (the next forward would fail)."""
    ids = tokenizer.convert_tokens_to_ids(list(VISION_SPECIAL_TOKENS))
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]
