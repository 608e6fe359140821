"""Start-up checks of a run's recipe: values a config requires and prompts per optimizer step.

A required value is `???`, or `${required:}` where a config group already gives the key a default
(OmegaConf's merge keeps an earlier value over a later `???`, so an experiment cannot demand
`model.init_from` with `???` while conf/model/*.yaml default it to null). Reading a `${required:}`
value raises a RecipeError naming the key; `check_required_values` lists every unset one at start-up.

An experiment that states `algorithm.prompts_per_step` (the paper: 16) is checked against
devices x nodes x data.batch_size x optim.accumulate_grad_batches before anything heavy loads, and
again once the trainer has resolved `devices: -1` / `auto` to a count. `data.batch_size: auto` is
resolved there to prompts_per_step / (devices x nodes x accumulation): every optimizer step is then ONE
batch per rank (one rollout call) whatever the layout, e.g. 16 = 8 devices x 2 nodes x 1 or 8 x 1 x 2.
"""

from __future__ import annotations

import re

from omegaconf import DictConfig, ListConfig, OmegaConf

REQUIRED = re.compile(r"^\$\{required:[^}]*\}$")


class RecipeError(ValueError):
    """A run's config contradicts its own recipe or misses a required value; the message says which."""


def _required(hint: str = "", *, _node_) -> None:
    key = _node_._get_full_key(None)
    raise RecipeError(
        f"{key} is required by this config and is not set: add {key}=...{f' ({hint})' if hint else ''} "
        "to the command line"
    )


if not OmegaConf.has_resolver("required"):
    OmegaConf.register_new_resolver("required", _required)


def missing_keys(node, prefix: str = "") -> list[str]:
    """Dotted keys whose value is `???` or `${required:...}` in a plain (unresolved) container."""
    if isinstance(node, dict):
        items = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in node.items())
    elif isinstance(node, list):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(node))
    else:
        return [prefix] if node == "???" or (isinstance(node, str) and REQUIRED.match(node)) else []
    return [key for path, value in items for key in missing_keys(value, path)]


def check_required_values(cfg: DictConfig) -> None:
    """Fail with every mandatory (`???`) value still unset, named by its dotted key."""
    missing = sorted(missing_keys(OmegaConf.to_container(cfg, resolve=False)))  # interpolations untouched
    if missing:
        lines = "\n".join(f"  {key}=..." for key in missing)
        raise RecipeError(
            f"this run's config requires {', '.join(missing)}, not set; set "
            f"{'it' if len(missing) == 1 else 'them'} on the command line:\n{lines}"
        )


def device_count(devices) -> int | None:
    """Devices per node from a trainer's `devices` value, or None while it is still -1 / 'auto'."""
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        devices = int(text) if text.lstrip("-").isdigit() else None
    if isinstance(devices, int) and devices > 0:
        return devices
    return None


AUTO = "auto"


def resolve_batch_size(cfg: DictConfig, devices: int, num_nodes: int) -> int:
    """`data.batch_size: auto` -> algorithm.prompts_per_step / (devices x nodes x accumulation), written
    into cfg.data.batch_size; a number is returned as it is. RecipeError when the split is not whole."""
    batch = cfg.data.batch_size
    if not (isinstance(batch, str) and batch.strip().lower() == AUTO):
        return int(batch)
    stated = cfg.algorithm.get("prompts_per_step")
    if stated is None:
        raise RecipeError(
            "data.batch_size=auto needs algorithm.prompts_per_step (the prompts of one optimizer step) to "
            "divide among the ranks; set a number for data.batch_size or state algorithm.prompts_per_step"
        )
    accumulate = int(cfg.optim.get("accumulate_grad_batches", 1) or 1)
    ranks = devices * num_nodes * accumulate
    if int(stated) % ranks:
        raise RecipeError(
            f"data.batch_size=auto: algorithm.prompts_per_step={stated} does not split into {devices} devices x "
            f"{num_nodes} nodes x optim.accumulate_grad_batches {accumulate} = {ranks} equal batches; change "
            "trainer.devices, trainer.num_nodes or optim.accumulate_grad_batches, or set data.batch_size"
        )
    cfg.data.batch_size = int(stated) // ranks
    return cfg.data.batch_size


def prompts_per_optimizer_step(cfg: DictConfig, devices: int, num_nodes: int) -> tuple[int, str]:
    """Prompts behind one optimizer step, and the product that gives it (for messages)."""
    batch = int(cfg.data.batch_size)
    accumulate = int(cfg.optim.get("accumulate_grad_batches", 1) or 1)
    total = devices * num_nodes * batch * accumulate
    arithmetic = (
        f"{devices} devices x {num_nodes} nodes x data.batch_size {batch} x "
        f"optim.accumulate_grad_batches {accumulate} = {total}"
    )
    return total, arithmetic


def check_prompts_per_step(cfg: DictConfig, devices=None, num_nodes=None) -> int | None:
    """When `algorithm.prompts_per_step` is set, fail unless the run's layout gives exactly that many.

    `devices`/`num_nodes` default to the trainer config's; returns the checked total, or None when
    nothing is stated or the device count is not known yet (devices -1 or 'auto' before the trainer).
    A `data.batch_size: auto` is resolved first, once the device count is known (resolve_batch_size).
    """
    stated = cfg.algorithm.get("prompts_per_step")
    batch = cfg.data.get("batch_size")
    if stated is None and not (isinstance(batch, str) and batch.strip().lower() == AUTO):
        return None
    devices = device_count(cfg.trainer.get("devices", 1) if devices is None else devices)
    num_nodes = int(cfg.trainer.get("num_nodes", 1) if num_nodes is None else num_nodes)
    if devices is None:
        return None
    resolve_batch_size(cfg, devices, num_nodes)
    total, arithmetic = prompts_per_optimizer_step(cfg, devices, num_nodes)
    if total != int(stated):
        raise RecipeError(
            f"algorithm.prompts_per_step={stated} but this run takes {arithmetic} prompts per optimizer "
            "step; change trainer.devices, trainer.num_nodes, data.batch_size or "
            "optim.accumulate_grad_batches so the product matches (or set algorithm.prompts_per_step=null)"
        )
    return total
