"""A run's real length in optimizer steps, from the trainer's stopping rule, the data and the batch.

Training stops at `trainer.max_steps` optimizer steps or after `trainer.max_epochs` epochs, whichever
comes first. The project accumulates gradients itself (manual optimisation; Lightning's own
`accumulate_grad_batches` stays 1), so an epoch of B batches per rank is B / k optimizer steps for
k = `optim.accumulate_grad_batches`, and the accumulation window carries over epoch boundaries:

    steps = min(max_steps, floor(B x max_epochs / k)),  B = records after filtering / (ranks x batch)

(drop_last batching). B is `trainer.num_training_batches`, the per-rank length of the training loader
(each rank takes 1 / ranks of every global batch: distributed/sampler.py). Lightning's
`estimated_stepping_batches` counts batches, not these steps, once k > 1 under manual optimisation.

Eq. 12's sigma (training progress p = step / steps) and a `schedule.fraction` of lambda's annealing
are defined over this number; an optimizer step skipped for a non-finite gradient is not counted by
`global_step`, so such a run takes a few more batches than planned, never fewer steps.
"""

from __future__ import annotations

import math


def planned_optimizer_steps(trainer, accumulate: int = 1) -> int | None:
    """The optimizer steps this fit will take; None when it has no end (no max_steps, no max_epochs)
    or no trainer. Sets the training data up first when the trainer has not yet (as Lightning's
    `estimated_stepping_batches` does)."""
    if trainer is None:
        return None
    max_steps = int(trainer.max_steps) if trainer.max_steps is not None and trainer.max_steps > 0 else None
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0:
        return max_steps
    if trainer.train_dataloader is None:
        trainer.fit_loop.setup_data()
    batches = trainer.num_training_batches
    if batches is None or batches == float("inf") or (isinstance(batches, float) and math.isnan(batches)):
        return max_steps
    k = max(1, int(accumulate))
    steps = int(batches) * int(max_epochs) // k
    return min(steps, max_steps) if max_steps is not None else steps
