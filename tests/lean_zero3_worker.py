"""One rank of a 2-process ZeRO-3 check of the chunked output-layer passes (gloo, CPU), launched by
tests/test_lean_logprobs.py.

argv: out_dir. The output layer is partitioned and gathers its weight collectively at every call; rank 0
has 3 valid positions and rank 1 has 13, so with chunks of 2 they would call it 2 and 7 times and the
gathers would not line up. The passes agree on the number of chunks, so both ranks finish: the teacher's
terms (top-K) and the student's log-probs with their backward. Each rank writes <out_dir>/rank_<r>.json
with its results' largest difference from the same sums on the gathered weight.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main() -> None:
    import deepspeed
    import torch

    from visd_exp.credit.lean import output_terms
    from visd_exp.distributed.strategy import use_cpu_accelerator
    from visd_exp.distributed.zero import is_partitioned
    from visd_exp.objectives import selective_log_softmax
    from visd_exp.objectives.chunked_logprobs import completion_logprobs

    use_cpu_accelerator()
    deepspeed.init_distributed("gloo")
    rank = torch.distributed.get_rank()
    torch.manual_seed(0)  # the same weights on both ranks before partitioning
    hidden_size, vocab, chunk = 8, 32, 2
    head = torch.nn.Linear(hidden_size, vocab)
    reference_head = torch.nn.Linear(hidden_size, vocab)
    reference_head.load_state_dict(head.state_dict())
    config = {
        "train_micro_batch_size_per_gpu": 1,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    }
    engine, *_ = deepspeed.initialize(
        model=torch.nn.ModuleDict({"head": head}),
        optimizer=torch.optim.SGD(head.parameters(), lr=0.1),
        config=config,
    )
    assert is_partitioned(head)
    g = torch.Generator().manual_seed(1 + rank)
    n, c = 2, 8
    mask = torch.zeros(n, c, dtype=torch.long)
    mask.view(-1)[: 3 if rank == 0 else 13] = 1  # 3 or 13 valid positions: 2 or 7 chunks of 2
    tokens = torch.randint(0, vocab, (n, c), generator=g)
    hidden = torch.randn(n, c, hidden_size, generator=g, requires_grad=True)

    teacher = output_terms(hidden.detach(), head, tokens, mask, 0.7, k=3, chunk_size=chunk)
    out = completion_logprobs(hidden, head, tokens, mask, 0.7, teacher=teacher, chunk_size=chunk)
    engine.backward(out.logprobs.sum())

    want_lp = selective_log_softmax(reference_head(hidden.detach()), tokens, 0.7) * mask
    want_top = (reference_head(hidden.detach()) / 0.7).topk(3, dim=-1).values
    valid = mask.bool()
    result = {
        "rank": rank,
        "logprob_diff": (out.logprobs.detach() - want_lp).abs().max().item(),
        "topk_diff": (teacher.support_logits[valid] - want_top[valid]).abs().max().item(),
        "hidden_grad": hidden.grad is not None and bool(hidden.grad[valid].abs().sum() > 0),
    }
    Path(sys.argv[1], f"rank_{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
