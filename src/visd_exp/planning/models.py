"""The model a config trains, as the planner needs it: every parameter's size, counted exactly by building the
real `Qwen2_5_VLForConditionalGeneration` from its config on the `meta` device (no weights, no network).

Where the config comes from, in order: `model.init_from` when it is a directory with a config.json (the SFT
checkpoint: the same architecture as the base), `model.tiny` (the project's own builder,
models/tiny.py, which builds the tiny model once into the cache), a local `pretrained_model_name_or_path`
directory, else the published configs below, keyed by hub id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The published config.json of each hub checkpoint (the fields that set parameter shapes), from
# https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct/blob/main/config.json and
# https://huggingface.co/Qwen/Qwen2.5-VL-3B-Instruct/blob/main/config.json.
_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
}
PUBLISHED = {
    "Qwen/Qwen2.5-VL-7B-Instruct": {
        "text": {
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
        },
        "vision": {**_VISION, "out_hidden_size": 3584},
        "tie_word_embeddings": False,
    },
    "Qwen/Qwen2.5-VL-3B-Instruct": {
        "text": {
            "vocab_size": 151936,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128000,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
        },
        "vision": {**_VISION, "out_hidden_size": 2048},
        "tie_word_embeddings": True,
    },
}


@dataclass(frozen=True)
class Param:
    name: str
    numel: int
    ndim: int


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of one Qwen2.5-VL: its parameters (shared ones once, as `parameters()` yields them) and sizes."""

    source: str  # where the config came from (for the report)
    params: tuple[Param, ...]
    modules_with_params: int  # submodules that own parameters (one ZeRO-3 fetch each per forward)
    largest_module: int  # elements of the submodule owning the most (ZeRO-3 gathers a module whole)
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool
    v_depth: int
    v_hidden: int
    v_intermediate: int
    v_heads: int
    v_out: int
    patch: int
    merge: int
    temporal_patch: int

    @property
    def numel(self) -> int:
        return sum(p.numel for p in self.params)

    @property
    def vision_numel(self) -> int:
        return sum(p.numel for p in self.params if ".visual." in f".{p.name}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def largest(self) -> int:
        return max(p.numel for p in self.params)


def _config(text: dict, vision: dict, tied: bool):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config={**text, "tie_word_embeddings": tied},
        vision_config=vision,
        tie_word_embeddings=tied,
    )


def spec_from_config(config, source: str) -> ModelSpec:
    """Build the model on the meta device and read every parameter's shape."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    params = tuple(Param(n, p.numel(), p.dim()) for n, p in model.named_parameters())
    owned = [sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()]
    owned = [n for n in owned if n]
    t, v = config.text_config, config.vision_config
    return ModelSpec(
        source=source,
        params=params,
        modules_with_params=len(owned),
        largest_module=max(owned),
        hidden=t.hidden_size,
        layers=t.num_hidden_layers,
        heads=t.num_attention_heads,
        kv_heads=t.num_key_value_heads,
        intermediate=t.intermediate_size,
        vocab=t.vocab_size,
        tied=bool(getattr(config, "tie_word_embeddings", False) or getattr(t, "tie_word_embeddings", False)),
        v_depth=v.depth,
        v_hidden=v.hidden_size,
        v_intermediate=v.intermediate_size,
        v_heads=v.num_heads,
        v_out=v.out_hidden_size,
        patch=v.patch_size,
        merge=v.spatial_merge_size,
        temporal_patch=v.temporal_patch_size,
    )


def _from_directory(path: Path, where: str) -> ModelSpec:
    from transformers import Qwen2_5_VLConfig

    config_file = path / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError) as exc:
        raise ValueError(f"{where}={path}: cannot read config.json ({exc})") from exc
    if model_type != "qwen2_5_vl":
        raise ValueError(f"{where}={path}: config.json has model_type {model_type!r}, not qwen2_5_vl")
    return spec_from_config(Qwen2_5_VLConfig.from_pretrained(str(path)), f"{path}/config.json")


def _init_from(model_cfg) -> Path | None:
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(model_cfg, resolve=False).get("init_from")
    if raw is None or (isinstance(raw, str) and raw.startswith("${")):  # unset or ${required:...}
        return None
    path = Path(str(model_cfg.init_from)).expanduser()
    return path if (path / "config.json").is_file() else None


def model_spec(model_cfg) -> ModelSpec:
    """The ModelSpec of a `model` config node (conf/model/*.yaml)."""
    init_from = _init_from(model_cfg)
    if init_from is not None:
        return _from_directory(init_from, "model.init_from")
    if model_cfg.get("tiny") is not None:
        from omegaconf import OmegaConf

        from visd_exp.models.tiny import ensure_tiny

        tiny = OmegaConf.to_container(model_cfg.tiny, resolve=True)
        return _from_directory(ensure_tiny(model_cfg.cache_dir, tiny), "model.tiny")
    name = model_cfg.get("pretrained_model_name_or_path")
    if name is None:
        raise ValueError("model.pretrained_model_name_or_path is not set (and model.tiny is null)")
    if (Path(str(name)).expanduser() / "config.json").is_file():
        return _from_directory(Path(str(name)).expanduser(), "model.pretrained_model_name_or_path")
    if name not in PUBLISHED:
        known = ", ".join(PUBLISHED)
        raise ValueError(
            f"model.pretrained_model_name_or_path={name}: no local config.json and not a published config "
            f"the planner knows ({known}); point it at a directory with the model's config.json"
        )
    published = PUBLISHED[name]
    config = _config(published["text"], published["vision"], published["tie_word_embeddings"])
    return spec_from_config(config, f"{name} (published config.json)")
