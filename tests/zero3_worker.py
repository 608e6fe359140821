"""One rank of a 2-process ZeRO-3 check on CPU (gloo), launched by tests/test_deepspeed_cpu.py.

argv: cache_dir video out_dir [zero_extra_json]. Rank r generates with max_completion_length 4 + 12 r,
so rank 0 finishes first. Twice with the project's generate (synced_gpus=True under ZeRO-3), then
<out_dir>/synced_<rank>.json; then twice with synced_gpus forced off, then <out_dir>/unsynced_<rank>.json,
which no rank should ever write: the ranks crash on mismatched collectives or hang.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    cache_dir, video, out_dir = sys.argv[1:4]
    zero_extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    import deepspeed
    import torch
    from omegaconf import OmegaConf

    from conftest import PROJECT_ROOT
    from test_logprob_consistency import ALGO, make_batch
    from visd_exp.distributed.strategy import use_cpu_accelerator
    from visd_exp.distributed.zero import is_partitioned
    from visd_exp.models import load_model_and_processor
    from visd_exp.rollout import generation

    use_cpu_accelerator()
    deepspeed.init_distributed("gloo")
    rank = torch.distributed.get_rank()
    cfg = OmegaConf.load(PROJECT_ROOT / "conf/model/tiny.yaml")
    cfg.cache_dir, cfg.warm_start = cache_dir, None
    model, processor = load_model_and_processor(cfg)
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0, **zero_extra},
    }
    import copy

    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    holder = torch.nn.ModuleDict({"student": model, "teacher": teacher})  # like the LightningModule
    engine, *_ = deepspeed.initialize(
        model=holder, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), config=config
    )
    assert is_partitioned(model)
    batch = make_batch(processor, video)
    algo = OmegaConf.merge(ALGO, {"max_completion_length": 4 + 12 * rank})
    torch.manual_seed(rank)
    run(generation, model, processor, batch, algo, teacher, engine, Path(out_dir) / f"synced_{rank}.json")
    compare_gathers(model, processor, batch, algo, Path(out_dir) / f"gather_{rank}.json")
    generation.generate_sync_kwargs = lambda model: {}  # the control: what the hook prevents
    run(generation, model, processor, batch, algo, teacher, engine, Path(out_dir) / f"unsynced_{rank}.json")


def run(generation, model, processor, batch, algo, teacher, engine, out_json: Path) -> None:
    import torch

    from visd_exp.models import vision_token_ids

    rank = torch.distributed.get_rank()
    lengths, seconds = [], []
    for _ in range(2):
        start = time.perf_counter()
        rollouts = generation.generate_rollouts(
            model, processor, batch, algo, vision_token_ids(processor.tokenizer)
        )
        seconds.append(time.perf_counter() - start)
        lengths.append(rollouts.completion_ids.shape[1])
        if os.environ.get("WORKER_TRAIN"):
            t0 = time.perf_counter()
            logprobs, _ = generation.policy_logprobs(model, rollouts, 1.0)
            engine.backward(-(logprobs * rollouts.completion_mask).sum())
            engine.step()
            t1 = time.perf_counter()
            with torch.no_grad():
                generation.policy_logprobs(teacher, rollouts, 1.0)
            t2 = time.perf_counter()
            from visd_exp.teacher.variants import ema_update

            ema_update(teacher, model, 0.5)
            t3 = time.perf_counter()
            seconds.append({"train": t1 - t0, "teacher": t2 - t1, "ema": t3 - t2})
    out_json.write_text(json.dumps({"rank": rank, "lengths": lengths, "seconds": seconds}))


def compare_gathers(model, processor, batch, algo, out_json: Path) -> None:
    """rollout.hf.zero3_gather: per_layer and once sample the same tokens from the same seed; once runs
    its decode steps without ZeRO-3's per-module hooks (no fetch at all)."""
    import torch

    from visd_exp.models import vision_token_ids
    from visd_exp.rollout.engine import HFEngine

    hooks_before = len(model_hooks(model))
    tokens, fetches = {}, {}
    for mode in ("per_layer", "once"):
        torch.manual_seed(7)
        calls = []
        handle = model.get_input_embeddings().register_forward_pre_hook(
            lambda mod, args, calls=calls: calls.append(len(mod._forward_pre_hooks))
        )
        rollouts = HFEngine(mode).generate(
            model, processor, batch, algo, vision_token_ids(processor.tokenizer)
        )
        handle.remove()
        tokens[mode] = rollouts.completion_ids.tolist()
        fetches[mode] = calls[0]  # pre-hooks on the embedding during the call (ZeRO-3's fetch hook + ours)
    out_json.write_text(
        json.dumps(
            {
                "tokens": tokens,
                "pre_hooks": fetches,
                "hooks_restored": len(model_hooks(model)) == hooks_before,
            }
        )
    )


def model_hooks(model) -> list:
    return [h for m in model.modules() for h in (*m._forward_pre_hooks.values(), *m._forward_hooks.values())]


if __name__ == "__main__":
    main()
