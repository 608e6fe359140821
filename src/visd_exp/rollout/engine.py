"""One rollout engine behind every caller that samples: `rollout.engine: hf | vllm`.

Training rollouts (GRPO, VISD), T-GRPO's shuffled rollouts, FFR's re-answers under a patch, validation
(greedy and sampled) and `evaluate` all call

    engine.generate(model, processor, batch, how, suppress_ids) -> RolloutBatch

with a collated batch (data/datamodule.py: prompt ids, masks, vision tensors, and the frames they were
built from) and `how`, the sampling settings (num_generations, temperature, top_p, top_k,
max_completion_length, min_completion_length, do_sample). What comes back is the same for both engines:
prompt and completion ids and masks, the vision tensors the update needs, truncation flags, texts, and
the sampled tokens' log-probs under the engine (`RolloutBatch.engine_logprobs`).

    hf    transformers' `generate` on the trained model itself (rollout/generation.py): no second copy of
          the weights, nothing to keep in sync; the default, and the right choice on a CPU at the tiny
          sizes. Its sampled log-probs are the trainer's own in fp32.
    vllm  a vLLM engine colocated in the training process (rollout/vllm_engine.py), one per rank, whose
          weights are pushed from the trainer's after every optimizer step (`sync`) and checked against
          the trainer's forward at step 0 and every `rollout.vllm.verify_every` steps (`verify`).

Weights carry a version: the module bumps it after each optimizer step and after a checkpoint is loaded;
`sync(model, version)` pushes only when the engine's version is older, so every caller that samples gets
the trainer's current weights whichever hook ran first.
"""

from __future__ import annotations

import logging

from visd_exp.rollout import generation
from visd_exp.rollout.generation import RolloutBatch

log = logging.getLogger(__name__)

ENGINES = ("hf", "vllm")


ZERO3_GATHER = ("per_layer", "once")


class HFEngine:
    """transformers' `generate` on the trained model: the weights are the trainer's by construction.

    zero3_gather (`rollout.hf.zero3_gather`), under DeepSpeed ZeRO-3 only: `per_layer` lets ZeRO-3's hooks
    gather each layer at each decode step (every generated token moves the whole model over the network);
    `once` gathers the model whole for the generate call (distributed/zero.py `gathered_for_generation`):
    the same tokens, one gather per call, the whole model in memory on every rank meanwhile."""

    name = "hf"
    version: int | None = None

    def __init__(self, zero3_gather: str = "per_layer"):
        if zero3_gather not in ZERO3_GATHER:
            raise ValueError(f"rollout.hf.zero3_gather={zero3_gather!r}: one of {', '.join(ZERO3_GATHER)}")
        self.zero3_gather = zero3_gather

    def generate(self, model, processor, batch: dict, how, suppress_ids: list[int]) -> RolloutBatch:
        # looked up at call time: tests record what reaches it
        if self.zero3_gather == "once":
            from visd_exp.distributed.zero import gathered_for_generation

            with gathered_for_generation(model):
                return generation.generate_rollouts(model, processor, batch, how, suppress_ids)
        return generation.generate_rollouts(model, processor, batch, how, suppress_ids)

    def sync(self, model, version: int) -> float:
        """Seconds spent pushing weights: none, the engine samples from the trained model itself."""
        self.version = version
        return 0.0

    def verify(self, model, step: int | None) -> dict[str, float]:
        return {}

    def close(self) -> None:
        pass


def engine_name(rollout_cfg) -> str:
    name = str((rollout_cfg or {}).get("engine", "hf"))
    if name not in ENGINES:
        raise ValueError(f"rollout.engine={name!r}: one of {', '.join(ENGINES)}")
    return name


def build_engine(rollout_cfg, model, processor, *, precision: str = "32-true", limits: dict | None = None):
    """The engine `rollout.engine` names. limits: what the engine must hold ({max_images,
    max_model_len, max_num_seqs}); the vLLM engine sizes its KV cache and inputs by them."""
    name = engine_name(rollout_cfg)
    if name == "hf":
        return HFEngine(str(((rollout_cfg or {}).get("hf") or {}).get("zero3_gather", "per_layer")))
    from visd_exp.rollout.vllm_engine import VLLMEngine

    return VLLMEngine(rollout_cfg.vllm, model, processor, precision=precision, limits=limits or {})
