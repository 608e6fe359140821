"""Process set-up for a vLLM engine living in the training process (`rollout.engine=vllm`).

Call `prepare_vllm()` before `import vllm` (idempotent). It

1. sets the environment variables vLLM reads at import / engine construction (only where unset,
   so a user's own choice wins);
2. on CPU machines, lets torchvision's pure-Python parts import (see `install_torchvision_shim`).

This module imports nothing heavy at top level: `make install-vllm` puts a `.pth` hook into
`.venv-vllm` that loads it at interpreter start-up to install the torchvision shim lazily, so every
process in that venv (tests, training without vLLM) sees a working `import transformers`.

Why the torchvision shim: vLLM's Qwen2-VL code imports `smart_resize` from transformers'
`image_processing_qwen2_vl`, which imports `torchvision.transforms.v2`, and vLLM's processor path
builds `Qwen2VLVideoProcessor` (torchvision too). PyPI has no CPU torchvision wheel and no sdist: its
`_C.so` links `libtorch_cuda.so`, so loading it fails on CPU torch (torchvision catches that), and
then `torchvision/_meta_registrations.py` calls `torch.library.register_fake("torchvision::nms")` /
`("torchvision::qnms")` for ops that do not exist: `RuntimeError: operator torchvision::nms does not
exist`, and with it `from transformers import Qwen2_5_VLForConditionalGeneration` breaks. Defining
those two op *schemas* (no kernels) before torchvision loads makes the import succeed; calling
`torchvision.ops.nms` would still raise (no kernel), and nothing here calls it. Where torchvision's
`_C` loads (a CUDA torch with the matching torchvision), the shim does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# The two ops `torchvision/_meta_registrations.py` registers fake kernels for by name (torchvision
# 0.28's schemas, from its csrc/ops/nms.cpp); every other op there goes through a lookup that tolerates
# a missing op.
TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
)

# Environment vLLM reads; values are defaults (setdefault), each with why.
VLLM_ENV = {
    # In-process engine core: no spawned EngineCore process (start-up 3-6 s instead of 18-44 s, no
    # `__main__` guard needed, weights reachable as a Python object for in-process pushes).
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    # CPU backend: do not pin OpenMP threads to cores. The default ("auto") binds the worker's threads
    # to a NUMA node's cores, i.e. binds the *training* process; with 2 cores and two ranks that starves
    # one of them. Ignored by the CUDA build.
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    # No usage-stats reporting thread (no network here anyway).
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
}

_LIBRARY = None  # the torch.library.Library holding the schemas: must stay alive, or they are dropped


def _torchvision_dir() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def apply_torchvision_shim() -> bool:
    """Define `torchvision::nms`/`qnms` schemas when torchvision's C++ ops cannot load; True if defined.

    Must run before torchvision is first imported. Idempotent; a no-op without torchvision installed
    or where its `_C` extension loads (then the real ops exist).
    """
    global _LIBRARY
    if _LIBRARY is not None:
        return True
    tv_dir = _torchvision_dir()
    if tv_dir is None:
        return False
    import torch

    if hasattr(torch.ops.torchvision, "nms"):  # real ops loaded, or the shim applied by another copy
        return False
    extensions = sorted(tv_dir.glob("_C*.so")) + sorted(tv_dir.glob("_C*.pyd"))
    for ext in extensions:
        try:
            torch.ops.load_library(str(ext))  # what torchvision/extension.py does; fine to repeat
        except (OSError, ImportError, RuntimeError):
            continue
        if hasattr(torch.ops.torchvision, "nms"):
            return False
    lib = torch.library.Library("torchvision", "DEF")
    for schema in TORCHVISION_SCHEMAS:
        lib.define(schema)
    # A Library drops its definitions when garbage-collected; a module loaded by the venv's .pth hook
    # may be collected with its finder, so the object is also pinned on torch itself.
    _LIBRARY = torch._visd_exp_torchvision_schemas = lib
    return True


class _TorchvisionShimFinder:
    """A meta-path finder that applies the shim the first time `torchvision` is imported, then leaves."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            _remove_finder()
            apply_torchvision_shim()
        return None  # let the normal finders import it


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionShimFinder)]


def install_torchvision_shim() -> None:
    """Apply the shim lazily, just before torchvision's first import (cheap: imports nothing now)."""
    if "torchvision" in sys.modules:
        return  # already imported: too late (or not needed)
    if any(type(f).__name__ == "_TorchvisionShimFinder" for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionShimFinder())


def prepare_vllm(env: dict[str, str] | None = None) -> None:
    """Set vLLM's environment defaults and the torchvision shim; call before `import vllm`. Idempotent.

    `env` adds or overrides defaults (still only where the variable is unset).
    """
    for key, value in {**VLLM_ENV, **(env or {})}.items():
        os.environ.setdefault(key, value)
    if "torchvision" not in sys.modules:
        _remove_finder()
        apply_torchvision_shim()
