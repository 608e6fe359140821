"""Building the student and the teacher under DeepSpeed ZeRO-3 without any rank holding the whole model.

Called inside `deepspeed.zero.Init` (Lightning runs `LightningModule.configure_model` in it when the
strategy is ZeRO-3): every parameter is partitioned as it is created, so a rank allocates 1 / N of the
weights. The weights are then read one safetensors file at a time and one module at a time: all ranks
open the file (its header: the names), gather the module's parameters, rank 0 copies the tensors from
the file (memory-mapped, one tensor at a time) and `GatheredParameters(modifier_rank=0)` scatters them
back into partitions. Host memory at start is the partitions plus one module's gathered parameters,
where `from_pretrained` under ZeRO-3 first reads every file whole on every rank.

The teacher copy (teacher=sync / ema) is built empty the same way and filled from the student's
partitions locally: both are partitioned over the same ranks in the same order, so rank r copies its
own partition of each student parameter; no gather.

Checkpoint names: files written by transformers' `save_pretrained` for Qwen2.5-VL (and the published
Qwen2.5-VL checkpoints) use the original layout (`model.layers.*`, `visual.*`); the module tree of
transformers 5 nests them as `model.language_model.*` and `model.visual.*`. `module_name` maps one to the
other; a name that maps to no parameter, or a parameter no file provides, fails the load.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from torch import nn

from visd_exp.models.loading import (
    _DTYPES,
    PROCESSOR_FILES,
    check_init_from,
    enable_gradient_checkpointing,
    resolve_model_path,
)

log = logging.getLogger(__name__)

# the original Qwen2.5-VL checkpoint layout -> transformers 5's module tree (applied in order, first match)
_RENAMES = (
    (re.compile(r"^visual\."), "model.visual."),
    (re.compile(r"^model\.(?!language_model\.|visual\.)"), "model.language_model."),
)


def module_name(key: str, names: set[str]) -> str | None:
    """The model's parameter name for a checkpoint key (or None: a key no parameter takes)."""
    if key in names:
        return key
    for pattern, repl in _RENAMES:
        renamed = pattern.sub(repl, key, count=1)
        if renamed != key and renamed in names:
            return renamed
    return None


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a Hugging Face model directory, in the index's order when there is one."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / f for f in files]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors weights (ZeRO-3 start-up reads safetensors only)")
    return files


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def empty_model(path: str, dtype, attn_implementation: str) -> nn.Module:
    """The model of `path`'s config without its weights (partitioned when inside zero.Init)."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(path, local_files_only=Path(path).exists())
    if getattr(config, "model_type", None) != "qwen2_5_vl":
        raise ValueError(f"{path}: model_type {config.model_type!r}, not a Qwen2.5-VL model ('qwen2_5_vl')")
    with no_init_weights():  # every parameter comes from the files: no random init of the whole model
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=None if dtype == "auto" else dtype, attn_implementation=attn_implementation
        )
    model.tie_weights()  # tied embeddings (the tiny model's) share one parameter, as from_pretrained leaves them
    return model


@torch.no_grad()
def load_weights(model: nn.Module, path: Path) -> int:
    """Fill a (partitioned) model from the directory's safetensors files, module by module; returns the
    number of tensors read. Collective under ZeRO-3: every rank calls it."""
    from safetensors import safe_open

    from visd_exp.distributed.zero import gathered

    owners, seen = {}, set()  # parameter name -> (module, attribute); a tied parameter under its first name
    for prefix, mod in model.named_modules():
        for attr, param in mod.named_parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                owners[f"{prefix}.{attr}" if prefix else attr] = (mod, attr)
    names = set(owners)
    loaded: set[str] = set()
    reader = _rank() == 0
    for file in weight_files(Path(path)):
        with safe_open(str(file), framework="pt") as f:
            by_module: dict[int, list[tuple[str, str, str]]] = {}  # module -> (key, attribute, name)
            modules = {}
            for key in f.keys():  # noqa: SIM118 (safe_open has keys(), not iteration)
                name = module_name(key, names)
                if name is None:
                    if key == "lm_head.weight" and model.config.get_text_config().tie_word_embeddings:
                        continue  # tied to the embedding: the model shares one parameter
                    raise KeyError(f"{file}: tensor {key!r} matches no parameter of {type(model).__name__}")
                mod, attr = owners[name]
                modules[id(mod)] = mod
                by_module.setdefault(id(mod), []).append((key, attr, name))
            for mod_id, items in by_module.items():
                params = [getattr(modules[mod_id], attr) for _, attr, _ in items]
                with gathered(params, modifier_rank=0):
                    if reader:
                        for (key, _, _), param in zip(items, params):
                            value = f.get_tensor(key)
                            if tuple(value.shape) != tuple(param.shape):
                                raise ValueError(
                                    f"{file}: {key} has shape {tuple(value.shape)}, the model expects "
                                    f"{tuple(param.shape)}"
                                )
                            param.data.copy_(value.to(param.dtype))
                loaded.update(name for _, _, name in items)
    missing = sorted(names - loaded)
    if missing:
        raise KeyError(f"{path}: no weights for {len(missing)} parameters, e.g. {missing[:3]}")
    return len(loaded)


@torch.no_grad()
def copy_partitions(dst: nn.Module, src: nn.Module) -> None:
    """dst <- src, partition by partition on this rank (both ZeRO-3 partitioned the same way); buffers too."""
    d_params, s_params = list(dst.parameters()), list(src.parameters())
    if len(d_params) != len(s_params):
        raise ValueError("teacher and student differ in structure: cannot copy partitions")
    for d, s in zip(d_params, s_params):
        if d.ds_numel != s.ds_numel or d.ds_tensor.numel() != s.ds_tensor.numel():
            raise ValueError(f"partition mismatch {tuple(d.ds_shape)} vs {tuple(s.ds_shape)}")
        d.ds_tensor.data.copy_(s.ds_tensor.data)
    for d, s in zip(dst.buffers(), src.buffers()):
        d.copy_(s)


def load_partitioned(model_cfg, data_cfg=None) -> nn.Module:
    """The student for `model_cfg`, built partitioned (inside zero.Init) and loaded file by file."""
    init_from = model_cfg.get("init_from")
    path = (
        str(check_init_from(init_from)) if init_from is not None else resolve_model_path(model_cfg, data_cfg)
    )
    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"model {path!r}: ZeRO-3 start-up reads a local directory; download the model first "
            "(e.g. `huggingface-cli download <id> --local-dir DIR`) and pass model.pretrained_model_name_or_path=DIR"
        )
    dtype = _DTYPES[str(model_cfg.get("dtype", "float32"))]
    model = empty_model(path, dtype, model_cfg.get("attn_implementation", "sdpa"))
    tensors = load_weights(model, Path(path))
    if model_cfg.get("gradient_checkpointing", False):
        enable_gradient_checkpointing(model)
    log.info("built %s partitioned (zero.Init), %d tensors read file by file", path, tensors)
    return model


def empty_like(model: nn.Module) -> nn.Module:
    """An empty model of `model`'s config and dtype (partitioned when inside zero.Init), for the teacher."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        copy = type(model)._from_config(
            model.config,
            dtype=next(model.parameters()).dtype,
            attn_implementation=model.config._attn_implementation,
        )
    copy.tie_weights()
    return copy


def wants_partitioned_init(cfg) -> bool:
    """Whether to build the model under zero.Init: `model.partitioned_init` auto (the default) when the run's
    strategy is DeepSpeed ZeRO-3 (`trainer.strategy` a DeepSpeed node with stage 3); false builds the model
    whole on every rank first, as before (kept for comparison: bench/zero3_start_memory.py)."""
    setting = str((cfg.get("model") or {}).get("partitioned_init", "auto")).lower()
    if setting not in ("auto", "true", "false"):
        raise ValueError(f"model.partitioned_init={setting!r}: auto, true or false")
    strategy = (cfg.get("trainer") or {}).get("strategy")
    zero3 = (
        hasattr(strategy, "get")
        and "DeepSpeed" in str(strategy.get("_target_", ""))
        and int(strategy.get("stage", 2)) == 3
    )
    if setting == "true" and not zero3:
        raise ValueError("model.partitioned_init=true needs DeepSpeed ZeRO-3 (trainer.strategy.stage=3)")
    return zero3 and setting != "false"


def load_processor_only(model_cfg, data_cfg=None):
    """The processor `load_model_and_processor` would return, without loading any weights."""
    from visd_exp.models.processor import load_processor

    init_from = model_cfg.get("init_from")
    path = str(check_init_from(init_from)) if init_from is not None else None
    if path is None or not all((Path(path) / n).is_file() for n in PROCESSOR_FILES):
        path = resolve_model_path(model_cfg, data_cfg)
    return load_processor(path, local_files_only=Path(path).exists())
