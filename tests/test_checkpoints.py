"""Checkpoints that cannot fill a disk (callbacks/checkpoint.py): rotation to the newest `keep_last` plus
`keep_steps`, a free-space check before each save, atomic publishing, and resume after a full disk.

Runs are in-process (`train(cfg)`) so that the disk can be made to look full: `shutil.disk_usage`
reports too little space, or the checkpoint write itself fails with ENOSPC half-way through its bytes.
The tiny default model, validation off, a checkpoint every step (every 2 in the second pair of runs).
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import pytest
import torch

from test_train_e2e import compose_train, fast, shared_paths
from visd_exp.callbacks import BoundedCheckpoint, CheckpointSpaceError
from visd_exp.callbacks import checkpoint as checkpoint_module
from visd_exp.utils import fs
from visd_exp.utils.fs import link_or_copy, replace_path


def config(cache_dir: Path, out: Path, steps: int, *extra: str):
    return compose_train(
        [
            f"trainer.max_steps={steps}",
            "logger=csv",
            "callbacks.validation.every_n_steps=0",
            "dumps.credit_every_n_steps=0",
            *fast("trainer.max_steps", "callbacks.model_checkpoint", "algorithm.max_completion_length"),
            "algorithm.max_completion_length=24",  # short rollouts: these runs are about files, not rewards
            *shared_paths(cache_dir, out),
            f"paths.output_dir={out}",
            *extra,
        ]
    )


def train_fails(cfg) -> CheckpointSpaceError:
    from visd_exp.train import train

    with pytest.raises(CheckpointSpaceError) as info:
        train(cfg)
    return info.value


def listing(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def step_of(path: Path) -> int:
    return torch.load(path, weights_only=False)["global_step"]


EVERY_STEP = ["callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.keep_last=2"]


@pytest.fixture(scope="module")
def full_disk_run(cache_dir, tmp_path_factory):
    """3 steps, a checkpoint each; once step 2's is on disk the disk reports 1,000 bytes free. Also records
    the estimate the first save was checked against (no previous checkpoint then)."""
    out = tmp_path_factory.mktemp("full_disk")
    real_usage, real_estimate, estimates = shutil.disk_usage, checkpoint_module.estimate_checkpoint_bytes, []

    def usage(path):
        real = real_usage(path)
        full = (out / "checkpoints" / "step_000002.ckpt").exists()
        return real._replace(free=1000) if full else real

    def estimate(trainer, pl_module):
        estimates.append(real_estimate(trainer, pl_module))
        return estimates[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "disk_usage", usage)
        patch.setattr(checkpoint_module, "estimate_checkpoint_bytes", estimate)
        error = train_fails(config(cache_dir, out, 3, *EVERY_STEP))
    return out, error, estimates


def test_a_save_that_would_not_fit_stops_before_writing(full_disk_run):
    out, error, _ = full_disk_run
    ckpts = out / "checkpoints"
    assert listing(out) == ["last.ckpt", "step_000001.ckpt", "step_000002.ckpt"]  # no step 3, no .tmp-*
    message = str(error)
    needed = int((ckpts / "step_000002.ckpt").stat().st_size * 1.1)  # the previous one's size + 10%
    for part in (
        str(ckpts / "step_000003.ckpt"),
        f"{needed:,} bytes",
        "1,000 bytes free",
        "keep_last (now 2)",
    ):
        assert part in message, (part, message)
    assert step_of(ckpts / "last.ckpt") == 2
    # last.ckpt is the step-2 checkpoint's file, hard-linked: no second write, no second copy on disk
    assert os.path.samefile(ckpts / "last.ckpt", ckpts / "step_000002.ckpt")


def test_the_first_save_is_checked_against_an_estimate_that_covers_it(full_disk_run):
    """Student, teacher copy, optimizer state: the tensors' bytes are within a few % of the real file (the
    rest is pickled structure, RNG states and counters, which the 16 MiB headroom covers many times)."""
    out, _, estimates = full_disk_run
    real = (out / "checkpoints" / "step_000001.ckpt").stat().st_size
    assert 0.95 * real <= estimates[0] <= 1.3 * real, (estimates[0], real)
    assert estimates[0] * 1.1 + checkpoint_module.STATE_HEADROOM >= real


def test_resume_after_the_full_disk_keeps_exactly_the_last_two(full_disk_run, cache_dir):
    """Resumed from last.ckpt into the same directory: the step list travels in the checkpoint, so the
    step 1 and 2 files of the first run are rotated away too."""
    from visd_exp.train import train

    out, _, _ = full_disk_run
    train(config(cache_dir, out, 4, *EVERY_STEP, "ckpt_path=last"))
    assert listing(out) == ["last.ckpt", "step_000003.ckpt", "step_000004.ckpt"]
    assert step_of(out / "checkpoints" / "last.ckpt") == 4
    assert (out / "hf_model" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def write_fails_run(cache_dir, tmp_path_factory):
    """A checkpoint every 2 steps plus step 1 (keep_steps, off the grid), keep_last 1; the step-2 write
    runs out of space half-way through its bytes."""
    out = tmp_path_factory.mktemp("write_fails")
    real_save, written = torch.save, []

    def save(obj, f, *args, **kwargs):
        if not getattr(f, "name", "").endswith(".tmp-step_000002.ckpt"):
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        written.append(os.path.getsize(f.name))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    keep = [
        "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.model_checkpoint.keep_last=1",
        "callbacks.model_checkpoint.keep_steps=[1]",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "save", save)
        error = train_fails(config(cache_dir, out, 2, *keep))
    return out, error, written, keep


def test_a_write_that_runs_out_of_space_publishes_nothing(write_fails_run):
    out, error, written, _ = write_fails_run
    assert written and written[0] > 0  # the temporary really was half-written
    assert listing(out) == ["last.ckpt", "step_000001.ckpt"]  # the half-written .tmp-* deleted
    assert isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC
    assert "ran out of space while being written" in str(error)
    assert str(out / "checkpoints" / "step_000002.ckpt") in str(error)
    assert step_of(out / "checkpoints" / "last.ckpt") == 1


def test_resume_after_the_failed_write_keeps_the_named_step(write_fails_run, cache_dir):
    from visd_exp.train import train

    out, _, _, keep = write_fails_run
    train(config(cache_dir, out, 4, *keep, "ckpt_path=last"))
    # step 2 was saved again and rotated away at step 4; step 1 is named in keep_steps
    assert listing(out) == ["last.ckpt", "step_000001.ckpt", "step_000004.ckpt"]
    assert step_of(out / "checkpoints" / "step_000001.ckpt") == 1
    assert step_of(out / "checkpoints" / "last.ckpt") == 4


# -- the pieces --------------------------------------------------------------------------------------
@pytest.mark.parametrize("swap", [True, False], ids=["renameat2", "rename-aside"])
def test_a_directory_is_replaced_whole(tmp_path, monkeypatch, swap):
    """DeepSpeed checkpoints are directories: the new one replaces the old one, nothing of either mixed,
    by a one-step swap where the kernel has one, else by renaming the old one aside first."""
    if swap:
        probe_a, probe_b = tmp_path / "a", tmp_path / "b"
        probe_a.mkdir(), probe_b.mkdir()
        if not fs._exchange(probe_a, probe_b):
            pytest.skip("no renameat2 on this system")
        probe_a.rmdir(), probe_b.rmdir()
    else:
        monkeypatch.setattr(fs, "_exchange", lambda a, b: False)
    final, tmp = tmp_path / "last.ckpt", tmp_path / ".tmp-last.ckpt"
    (final / "checkpoint").mkdir(parents=True)
    (final / "checkpoint" / "old_shard.pt").write_text("old")
    (tmp / "checkpoint").mkdir(parents=True)
    (tmp / "checkpoint" / "new_shard.pt").write_text("new")
    replace_path(tmp, final)
    assert [p.name for p in (final / "checkpoint").iterdir()] == ["new_shard.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_last_is_hard_linked_and_copied_where_links_fail(tmp_path, monkeypatch):
    src = tmp_path / "step" / "checkpoint"
    src.mkdir(parents=True)
    (src / "shard.pt").write_bytes(b"x" * 100)
    assert link_or_copy(tmp_path / "step", tmp_path / "linked")
    assert os.path.samefile(src / "shard.pt", tmp_path / "linked" / "checkpoint" / "shard.pt")

    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(os, "link", no_links)
    assert not link_or_copy(tmp_path / "step", tmp_path / "copied")
    copied = tmp_path / "copied" / "checkpoint" / "shard.pt"
    assert copied.read_bytes() == b"x" * 100 and not os.path.samefile(src / "shard.pt", copied)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"save_top_k": 5}, "save_top_k"), ({"monitor": "reward"}, "monitor"), ({"keep_last": 0}, "keep_last")],
)
def test_bad_settings_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(ValueError, match=f"callbacks.model_checkpoint.{field}"):
        BoundedCheckpoint(dirpath=tmp_path, **kwargs)


def rotate(callback, trainer, steps: list[int]) -> list[tuple[list[int], list[int]]]:
    """(kept steps, deleted steps) after each save of `steps`, as the callback decides them."""
    out = []
    for step in steps:
        kept, doomed = callback._rotate(
            trainer, (step, str(Path(callback.dirpath) / f"step_{step:06d}.ckpt"))
        )
        callback.step_checkpoints = kept
        out.append(([s for s, _ in kept], [s for s, _ in doomed]))
    return out


def test_rotation_keeps_the_newest_and_the_named_steps(tmp_path):
    """keep_last=3, keep_steps=[4], a save every 2 steps: fewer than 3 on disk keeps them all; then the
    oldest goes at each save, except step 4."""
    from types import SimpleNamespace

    callback = BoundedCheckpoint(dirpath=tmp_path, keep_last=3, keep_steps=[4])
    callback.dirpath = str(tmp_path)
    assert rotate(callback, SimpleNamespace(ckpt_path=None), [2, 4, 6, 8, 10, 12]) == [
        ([2], []),
        ([2, 4], []),
        ([2, 4, 6], []),
        ([4, 6, 8], [2]),
        ([4, 6, 8, 10], []),
        ([4, 8, 10, 12], [6]),
    ]


def test_rotation_never_deletes_the_checkpoint_the_run_resumed_from(tmp_path):
    from types import SimpleNamespace

    callback = BoundedCheckpoint(dirpath=tmp_path, keep_last=1)
    callback.dirpath = str(tmp_path)
    callback.step_checkpoints = [(2, str(tmp_path / "step_000002.ckpt"))]
    trainer = SimpleNamespace(ckpt_path=str(tmp_path / "step_000002.ckpt"))
    assert rotate(callback, trainer, [3, 4]) == [([2, 3], []), ([2, 4], [3])]
