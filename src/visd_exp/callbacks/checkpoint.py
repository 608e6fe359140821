"""Checkpoints that cannot fill a disk: the last `keep_last` step checkpoints plus named steps are kept,
the space is checked before each save, and every save is published atomically.

Lightning's ModelCheckpoint with three changes:

- **Rotation.** After each step checkpoint, older ones beyond the newest `keep_last` (>= 1) are deleted,
  except the steps in `keep_steps`, the checkpoint the run resumed from and anything outside `dirpath`
  (Lightning's own rule). The list of step checkpoints travels in the checkpoint, so a run resumed into
  the same directory goes on rotating them. A step in `keep_steps` is saved even off the
  `every_n_train_steps` grid.
- **Space.** Before a write, rank 0 compares the bytes it needs with the free space of `dirpath` and
  broadcasts the verdict, so every rank stops together, before anything is written, with the path, both
  numbers and what to change. Needed = the previous checkpoint's real size (this run's, else the one it
  resumed from) x (1 + `space_margin`); before any: `estimate_checkpoint_bytes` x (1 + `space_margin`)
  + 16 MiB for the non-tensor state.
- **Atomic writes.** Each save is written under `.tmp-<name>` in `dirpath` (DeepSpeed: a directory every
  rank writes into), the ranks agree that every write succeeded, and only then rank 0 renames it over the
  final name (`utils.fs.replace_path`). A failed write (a full disk mid-way included) deletes the
  temporary and stops the run; `last.ckpt` stays the previous whole checkpoint. `last.ckpt` itself is
  made of hard links to the step checkpoint just written (no second write, no second copy on disk); it
  is copied where the filesystem has no hard links. Leftover `.tmp-*` from a killed run are deleted at
  start.

Plain checkpoints are written with `torch.save` straight into the temporary file (Lightning's default
writer first stages the whole file in the system temp directory, often another, smaller disk, and copies
it over). Peak disk use: keep_last + 1 step checkpoints plus the `keep_steps` ones.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from weakref import proxy

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DeepSpeedStrategy

from visd_exp.utils.fs import link_or_copy, path_size, remove_path, replace_path

log = logging.getLogger(__name__)
TMP_PREFIX = ".tmp-"
STATE_HEADROOM = 16 * 2**20  # loops, callbacks, RNG states, hyper-parameters: KBs, with room to spare


class CheckpointSpaceError(OSError):
    """A checkpoint would not fit (or did not fit) on its disk; nothing was published."""

    def __init__(self, message: str):
        super().__init__(errno.ENOSPC, message)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def estimate_checkpoint_bytes(trainer, pl_module) -> int:
    """Bytes of the tensors a checkpoint of `pl_module` holds, over all ranks (every rank must call it).

    Parameters at their full size (`ds_numel` for ZeRO-3's partitioned ones) and buffers, counted once,
    plus the optimizers' state (Adam's m and v) and any tensors they update that are not the module's
    parameters (DeepSpeed's fp32 master partitions). Under DeepSpeed every rank writes its own optimizer
    shard, so those are summed over the ranks; under the other strategies rank 0 writes one file. An upper
    bound: shared storage (tied embeddings) is written once.
    """
    params = list(pl_module.parameters())
    model = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in params)
    model += _tensor_bytes(pl_module.buffers())
    own = {id(p) for p in params}
    optim = 0
    for optimizer in trainer.optimizers:
        optim += sum(_tensor_bytes(state.values()) for state in optimizer.state.values())
        masters = (p for group in optimizer.param_groups for p in group["params"] if id(p) not in own)
        optim += _tensor_bytes(masters)
    if isinstance(trainer.strategy, DeepSpeedStrategy):
        total = torch.tensor(float(optim), dtype=torch.float64, device=trainer.strategy.root_device)
        optim = int(trainer.strategy.reduce(total, reduce_op="sum").item())
    return int(model + optim)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


class BoundedCheckpoint(ModelCheckpoint):
    """ModelCheckpoint(save_top_k=-1) that keeps `keep_last` step checkpoints (None: all) plus `keep_steps`,
    checks free space before each save and publishes each save atomically (module docstring)."""

    def __init__(
        self,
        *args,
        keep_last: int | None = 3,
        keep_steps: Sequence[int] = (),
        space_margin: float = 0.1,
        **kwargs,
    ):
        for key, allowed in (("save_top_k", -1), ("monitor", None)):
            if kwargs.get(key, allowed) != allowed:
                raise ValueError(
                    f"callbacks.model_checkpoint.{key}={kwargs[key]!r}: this callback keeps the newest step "
                    "checkpoints; set keep_last (and keep_steps) instead"
                )
        if kwargs.get("save_last") == "link":
            raise ValueError(
                "callbacks.model_checkpoint.save_last='link': use true (last.ckpt is hard-linked)"
            )
        if keep_last is not None and (isinstance(keep_last, bool) or int(keep_last) < 1):
            # last.ckpt is hard links to the newest step checkpoint: keeping 1 costs no more disk than 0
            raise ValueError(
                f"callbacks.model_checkpoint.keep_last={keep_last!r}: a count >= 1, or null for all"
            )
        if not 0 <= float(space_margin) < 10:
            raise ValueError(
                f"callbacks.model_checkpoint.space_margin={space_margin!r}: a fraction such as 0.1"
            )
        super().__init__(*args, save_top_k=-1, **kwargs)
        self.keep_last = None if keep_last is None else int(keep_last)
        self.keep_steps = sorted({int(s) for s in keep_steps or ()})
        self.space_margin = float(space_margin)
        self.step_checkpoints: list[tuple[int, str]] = []  # (optimizer step, path) on disk, oldest first
        self._needed_from = ""

    # -- state: the step checkpoints on disk travel in the checkpoint -----------------------------------
    def state_dict(self) -> dict:
        return {**super().state_dict(), "step_checkpoints": [list(e) for e in self.step_checkpoints]}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:  # else the old files are not ours
            self.step_checkpoints = [(int(s), str(p)) for s, p in state_dict.get("step_checkpoints", [])]

    def setup(self, trainer, pl_module, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for stale in Path(self.dirpath).glob(f"{TMP_PREFIX}*"):  # a write a killed run never finished
                log.warning("deleting %s, a checkpoint whose write never finished", stale)
                remove_path(stale)
        trainer.strategy.barrier()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        step = trainer.global_step
        if step in self.keep_steps and not self._should_skip_saving_checkpoint(trainer):  # off the grid
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)

    # -- saving -----------------------------------------------------------------------------------------
    def _save_checkpoint(self, trainer, filepath: str) -> None:
        final = Path(filepath)
        is_step = final.name != self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION
        before, doomed = self.step_checkpoints, []
        if is_step:  # the list saved inside this checkpoint is the one on disk once it is published
            self.step_checkpoints, doomed = self._rotate(trainer, (trainer.global_step, str(final)))
        try:
            self._publish(trainer, final, lambda tmp: self._write(trainer, tmp))
        except BaseException:
            self.step_checkpoints = before
            raise
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
            for _, path in doomed:
                remove_path(path)

    def _save_last_checkpoint(self, trainer, monitor_candidates) -> None:
        if not self.save_last:
            return
        filepath = self.format_checkpoint_name(monitor_candidates, self.CHECKPOINT_NAME_LAST)
        source, self.last_model_path = self._last_checkpoint_saved, filepath
        if source and source != filepath and self._last_global_step_saved == trainer.global_step:
            link = lambda tmp: self._link(trainer, Path(source), tmp)  # noqa: E731
            size = path_size(source) if trainer.is_global_zero else 0  # only a copy would need it
            self._needed_from = f"a copy of {source}, where hard links fail"
            self._publish(trainer, Path(filepath), link, needed=size)  # links write no data: no check
        else:  # nothing saved at this step (e.g. the end of a run that saved none): a full save
            self._save_checkpoint(trainer, filepath)

    def _rotate(self, trainer, new: tuple[int, str]) -> tuple[list, list]:
        """(the step checkpoints kept once `new` is on disk, the ones to delete)."""
        entries = [e for e in self.step_checkpoints if e[1] != new[1]] + [new]
        if self.keep_last is None:
            return entries, []
        newest = entries[max(0, len(entries) - self.keep_last) :]  # fewer than keep_last: all of them
        kept, doomed = [], []
        for entry in entries:
            keep = entry in newest or entry[0] in self.keep_steps
            if keep or not self._should_remove_checkpoint(trainer, entry[1], new[1]):
                kept.append(entry)
            else:
                doomed.append(entry)
        return kept, doomed

    def _publish(self, trainer, final: Path, write, needed: int | None = None) -> None:
        """Check the space (unless `needed` is given), `write(tmp)` on every rank, agree, then rank 0 renames
        `tmp` to `final`."""
        strategy = trainer.strategy
        tmp = final.with_name(TMP_PREFIX + final.name)
        check = needed is None
        if check:
            needed = self._needed_bytes(trainer, trainer.lightning_module)
        verdict = None
        if trainer.is_global_zero:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_path(tmp)
            free = shutil.disk_usage(final.parent).free
            if check and needed > free:
                verdict = self._space_message(final, needed, free, "would not fit; nothing was written")
        verdict = strategy.broadcast(verdict)
        if verdict:
            raise CheckpointSpaceError(verdict)
        error: OSError | None = None
        try:
            write(tmp)
        except OSError as exc:
            error = exc
        ok = strategy.reduce_boolean_decision(error is None, all=True)
        if ok and trainer.is_global_zero:
            try:
                replace_path(tmp, final)
            except OSError as exc:
                ok, error = False, exc
        if strategy.broadcast(ok):
            return
        if trainer.is_global_zero:
            remove_path(tmp)
        if error is not None and error.errno == errno.ENOSPC:
            free = shutil.disk_usage(final.parent).free
            raise CheckpointSpaceError(
                self._space_message(final, needed, free, "ran out of space while being written")
            ) from error
        if error is not None:
            raise error
        raise RuntimeError(
            f"writing checkpoint {final} failed on another rank (see its error); nothing published"
        )

    def _write(self, trainer, tmp: Path) -> None:
        """One checkpoint at `tmp` (every rank calls it; which ranks write is the strategy's business)."""
        with trainer.profiler.profile("save_checkpoint"):
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
            strategy = trainer.strategy
            if (
                isinstance(strategy, DeepSpeedStrategy)
                or type(strategy.checkpoint_io) is not TorchCheckpointIO
            ):
                strategy.save_checkpoint(checkpoint, str(tmp))
            elif trainer.is_global_zero:
                with open(tmp, "wb") as handle:
                    torch.save(checkpoint, handle)
                    handle.flush()
                    os.fsync(handle.fileno())

    def _link(self, trainer, source: Path, tmp: Path) -> None:
        if trainer.is_global_zero and not link_or_copy(source, tmp):
            log.warning("%s: no hard links on this filesystem, last.ckpt is a full copy", tmp.parent)

    def _needed_bytes(self, trainer, pl_module) -> int:
        estimate = estimate_checkpoint_bytes(trainer, pl_module)  # collective under DeepSpeed: every rank
        previous = self._last_checkpoint_saved or trainer.ckpt_path
        if trainer.is_global_zero and previous and Path(previous).exists():
            self._needed_from = f"the previous checkpoint {previous} x {1 + self.space_margin:g}"
            return int(path_size(previous) * (1 + self.space_margin))
        self._needed_from = (
            f"estimated from the parameters, buffers and optimizer state: {estimate:,} bytes "
            f"x {1 + self.space_margin:g} + {_gib(STATE_HEADROOM)}"
        )
        return int(estimate * (1 + self.space_margin)) + STATE_HEADROOM

    def _space_message(self, final: Path, needed: int, free: int, what: str) -> str:
        return (
            f"checkpoint {final} {what}: it needs about {needed:,} bytes ({_gib(needed)}; "
            f"{self._needed_from}) and {final.parent} has {free:,} bytes free ({_gib(free)}). "
            f"last.ckpt is still the previous checkpoint. Free space there, lower "
            f"callbacks.model_checkpoint.keep_last (now {self.keep_last}) or keep_steps, or point "
            "callbacks.model_checkpoint.dirpath at a larger disk."
        )
