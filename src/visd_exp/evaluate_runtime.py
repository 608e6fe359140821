"""Where `evaluate` runs: the device, the model's dtype and attention, and the batches sent there.

    device: auto                 cuda when torch.cuda.is_available(), else cpu; or cpu | cuda | cuda:K
    dtype: auto                  a checkpoint (model_dir, ckpt_path, a hub model): on a GPU the checkpoint's
                                 torch_dtype when it is bfloat16/float16, else bfloat16; on the CPU float32.
                                 The tiny model group: its own model.dtype. Explicit values win.
    attn_implementation: auto    on a GPU in bf16/fp16: flash_attention_2 when flash_attn imports, else sdpa
                                 (logged); otherwise sdpa (the tiny group: its own). Explicit values win.

Under data-parallel (evaluate_parallel.py) each rank takes `cuda:<local_rank>`. What was chosen is logged
and written into report.json as report["runtime"].
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}
HALF = ("bfloat16", "float16")
# Raw frames stay on the CPU: the vLLM engine takes them as images (rollout/vllm_engine.py); the model
# never reads them.
HOST_KEYS = ("frames",)


def resolve_device(spec, world_size: int = 1, local_rank: int = 0) -> torch.device:
    """The device of `device=spec` (auto | cpu | cuda | cuda:K); under data-parallel cuda:<local_rank>."""
    spec = str(spec or "auto")
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"device={spec!r}: one of auto, cpu, cuda, cuda:K ({exc})") from exc
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":
        raise ValueError(f"device={spec!r}: one of auto, cpu, cuda, cuda:K")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"device={spec}: CUDA is not available here (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}); give device=cpu, or device=auto to take a GPU only when there is one"
        )
    if world_size > 1:
        if device.index not in (None, local_rank):
            raise ValueError(
                f"device={spec}: under data-parallel every rank takes cuda:<local_rank> "
                f"(this rank: cuda:{local_rank}); give device=auto or device=cuda"
            )
        device = torch.device("cuda", local_rank)
    elif device.index is None:
        device = torch.device("cuda", 0)
    count = torch.cuda.device_count()
    if device.index >= count:
        raise RuntimeError(f"device={spec}: {device} asked for, but this machine has {count} CUDA device(s)")
    return device


def checkpoint_dtype(path) -> str | None:
    """The dtype a Hugging Face directory's config.json names (torch_dtype, or transformers 5's dtype)."""
    config = Path(str(path)) / "config.json"
    if not config.is_file():
        return None
    try:
        found = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    text = found.get("text_config") if isinstance(found.get("text_config"), dict) else {}
    for value in (found.get("torch_dtype"), found.get("dtype"), text.get("torch_dtype"), text.get("dtype")):
        if isinstance(value, str) and value.replace("torch.", "") in DTYPE_NAMES:
            return DTYPE_NAMES[value.replace("torch.", "")]
    return None


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_precision(
    dtype_spec, attn_spec, device: torch.device, from_checkpoint: str | None
) -> tuple[str, str, str]:
    """(dtype, attn_implementation, why) for a checkpoint whose config names `from_checkpoint` (or None)."""
    why = []
    dtype_spec, attn_spec = str(dtype_spec or "auto"), str(attn_spec or "auto")
    gpu = device.type == "cuda"
    if dtype_spec != "auto":
        if dtype_spec not in DTYPE_NAMES:
            raise ValueError(f"dtype={dtype_spec!r}: auto, float32, bfloat16 or float16")
        dtype = DTYPE_NAMES[dtype_spec]
        why.append(f"dtype={dtype} as given")
    elif gpu:
        dtype = from_checkpoint if from_checkpoint in HALF else "bfloat16"
        why.append(
            f"dtype={dtype}: the checkpoint's" if from_checkpoint in HALF else f"dtype={dtype} on a GPU"
        )
    else:
        dtype = "float32"
        why.append("dtype=float32 on the CPU")
    if attn_spec != "auto":
        if attn_spec == "flash_attention_2" and (not gpu or dtype not in HALF):
            raise ValueError(
                f"attn_implementation=flash_attention_2 needs a CUDA device and bfloat16/float16 "
                f"(here: {device}, {dtype})"
            )
        attn = attn_spec
        why.append(f"attention {attn} as given")
    elif gpu and dtype in HALF and flash_attn_available():
        attn = "flash_attention_2"
        why.append("flash_attention_2: flash_attn imports")
    else:
        attn = "sdpa"
        if gpu and dtype in HALF:
            why.append("sdpa: flash_attn is not installed (pip install flash-attn for flash_attention_2)")
        elif gpu:
            why.append(f"sdpa: flash_attention_2 needs bfloat16/float16, not {dtype}")
        else:
            why.append("sdpa on the CPU")
    return dtype, attn, "; ".join(why)


def batch_to(batch: dict, device: torch.device) -> dict:
    """The batch with every model input (tensors and lists of tensors) on `device`; raw frames stay."""
    out = {}
    for key, value in batch.items():
        if key in HOST_KEYS:
            out[key] = value
        elif isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, torch.Tensor) for v in value):
            out[key] = [v.to(device, non_blocking=True) for v in value]
        else:
            out[key] = value
    return out


def batches_to(batches, device: torch.device):
    for batch in batches:
        yield batch_to(batch, device)


def place_model(model, device: torch.device):
    """The model on `device` (test doubles without `.to` stay as they are)."""
    return model.to(device) if hasattr(model, "to") else model
