"""The trainer's weights, one module at a time, for a rollout engine to load (rollout/vllm_engine.py).

Under ZeRO-3 a parameter holds only its rank's shard outside a forward; each module's own parameters are
gathered for as long as the engine takes to copy them, then released, so at most one module's full
weights exist beside the training state: never a second full copy of the model. Without ZeRO-3 the
tensors are the parameters themselves (no copy). Tied parameters (the output head tied to the token
embedding) are yielded once, under the first name they have.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from visd_exp.distributed.zero import gathered


@torch.no_grad()
def named_weights(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter of `model`, module by module (checkpoint names)."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        params = [(n, p) for n, p in module.named_parameters(recurse=False) if id(p) not in seen]
        if not params:
            continue
        seen.update(id(p) for _, p in params)
        partitioned = any(hasattr(p, "ds_id") for _, p in params)
        with gathered([p for _, p in params]):
            for name, p in params:
                # a gathered tensor is released on leaving the block: the engine gets its own copy
                tensor = p.detach().clone() if partitioned else p.detach()
                yield (f"{prefix}.{name}" if prefix else name), tensor
