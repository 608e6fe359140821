"""One loading path for every model: a hub id, a local directory, or the tiny offline model.

`pretrained_model_name_or_path`, `dtype` and `attn_implementation` go straight to transformers'
`from_pretrained`, so the 7B recipe and the tiny default exercise the same code. `init_from` (a
Hugging Face directory, e.g. an SFT run's `<run>/hf_model`) replaces the weights the student, and so
the teacher built from it, start from; `gradient_checkpointing` recomputes the activations of every
language and vision block in the backward pass.
"""

from __future__ import annotations

import json
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


QWEN2_5_VL_MODEL_TYPE = "qwen2_5_vl"
PROCESSOR_FILES = ("tokenizer_config.json", "preprocessor_config.json")


class NotQwen2_5VLError(ValueError):
    """A model directory whose config.json is not a Qwen2.5-VL model's; the message names both."""


def check_qwen2_5_vl(path, where: str = "model") -> None:
    """Loud before any weight is read: a local directory must hold a Qwen2.5-VL config.json.

    Only Qwen2.5-VL checkpoints load here (the model class is Qwen2_5_VLForConditionalGeneration); the
    baselines compared against (Open-o3-Video, Video-R1, VideoRFT) are fine-tunes of it. A hub id (no
    local directory) is left to from_pretrained."""
    directory = Path(str(path)).expanduser()
    if not directory.is_dir():
        return
    config = directory / "config.json"
    if not config.is_file():
        raise NotQwen2_5VLError(f"{where}={directory}: no config.json, so not a Hugging Face model directory")
    try:
        found = json.loads(config.read_text())
        model_type, architectures = found.get("model_type"), list(found.get("architectures") or [])
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise NotQwen2_5VLError(f"{where}={directory}: config.json is unreadable ({exc})") from exc
    if model_type == QWEN2_5_VL_MODEL_TYPE or (
        model_type is None and any(str(a).startswith("Qwen2_5_VL") for a in architectures)
    ):
        return
    raise NotQwen2_5VLError(
        f"{where}={directory}: config.json has model_type {model_type!r} (architectures {architectures}); "
        f"only Qwen2.5-VL checkpoints (model_type {QWEN2_5_VL_MODEL_TYPE!r}) load here, and fine-tunes of "
        "it such as Open-o3-Video, Video-R1 and VideoRFT"
    )


class InitFromError(ValueError):
    """`model.init_from` is missing or does not hold a Qwen2.5-VL model; the message names the path."""


def check_init_from(path) -> Path:
    """The `model.init_from` directory, after checking it holds a Qwen2.5-VL config and weights."""
    where = f"model.init_from={path}"
    directory = Path(str(path)).expanduser()
    if not directory.exists():
        raise InitFromError(
            f"{where}: no such directory (expected a Hugging Face model directory, e.g. <run>/hf_model)"
        )
    if not directory.is_dir():
        raise InitFromError(
            f"{where}: not a directory (expected a Hugging Face model directory, e.g. <run>/hf_model)"
        )
    config = directory / "config.json"
    if not config.is_file():
        raise InitFromError(f"{where}: no config.json, so not a Hugging Face model directory")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise InitFromError(f"{where}: config.json is unreadable ({exc})") from exc
    if model_type != QWEN2_5_VL_MODEL_TYPE:
        raise InitFromError(
            f"{where}: config.json has model_type {model_type!r}, not a Qwen2.5-VL model ({QWEN2_5_VL_MODEL_TYPE!r})"
        )
    weights = [*directory.glob("*.safetensors"), *directory.glob("pytorch_model*.bin")]
    if not weights:
        raise InitFromError(f"{where}: no weights (*.safetensors or pytorch_model*.bin) in the directory")
    return directory


def enable_gradient_checkpointing(model) -> int:
    """Checkpoint every language and vision block (non-reentrant); returns how many blocks were set."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old name warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    blocks = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not blocks or not all(m.gradient_checkpointing for m in blocks):
        raise RuntimeError(f"{type(model).__name__}: gradient checkpointing did not reach every block")
    return len(blocks)


def load_model_and_processor(cfg, data_cfg=None):
    """Load (model, processor) for a `model` config node (`data_cfg`: frame settings for a warm start).

    With `cfg.init_from` set, the weights (and the processor, when the directory has one) come from
    that directory; the base model is then only resolved when a processor must come from it.
    """
    from transformers import Qwen2_5_VLForConditionalGeneration

    from visd_exp.models.processor import load_processor

    init_from = cfg.get("init_from")
    if init_from is not None:
        path = str(check_init_from(init_from))
        has_processor = all((Path(path) / name).is_file() for name in PROCESSOR_FILES)
        processor_path = path if has_processor else resolve_model_path(cfg, data_cfg)
    else:
        path = processor_path = resolve_model_path(cfg, data_cfg)
        check_qwen2_5_vl(path, "model.pretrained_model_name_or_path")
    dtype = _DTYPES[str(cfg.get("dtype", "float32"))]
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            path,
            dtype=dtype,
            attn_implementation=cfg.get("attn_implementation", "sdpa"),
            local_files_only=Path(path).exists(),
        )
    except Exception as exc:
        if init_from is None:
            raise
        raise InitFromError(f"model.init_from={init_from}: cannot load a Qwen2.5-VL model ({exc})") from exc
    processor = load_processor(processor_path, local_files_only=Path(processor_path).exists())
    if cfg.get("gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    log.info(
        "loaded %s (%.2fM parameters, %s)%s",
        path,
        sum(p.numel() for p in model.parameters()) / 1e6,
        dtype,
        f", processor from {processor_path}" if processor_path != path else "",
    )
    return model, processor


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the vision special tokens, which must never be sampled (the next forward would fail)."""
    ids = tokenizer.convert_tokens_to_ids(list(VISION_SPECIAL_TOKENS))
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]
