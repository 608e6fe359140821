"""Data loading with `data.num_workers > 0`: torchcodec decodes in the worker processes, the batches are
the ones a single process loads, and the worker decodes the next batch before it is asked for it (while
the training step on the current batch runs)."""

from __future__ import annotations

import time

import pytest
import torch
from omegaconf import OmegaConf

import visd_exp.data.datamodule as datamodule
from conftest import PROJECT_ROOT


def make_datamodule(processor, cache_dir, num_workers: int):
    cfg = OmegaConf.load(PROJECT_ROOT / "conf/data/synthetic_easy.yaml")
    cfg.synthetic.num_videos = 6
    cfg.synthetic.out_dir = str(cache_dir / "data" / "workers")
    cfg.val_file, cfg.test_file = None, None
    cfg.seed, cfg.batch_size, cfg.num_workers = 0, 2, num_workers
    dm = datamodule.VideoQADataModule(cfg, processor)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_workers_load_the_same_batches_and_prefetch_the_next(tiny, cache_dir, tmp_path, monkeypatch):
    _, processor = tiny
    single = [b for _, b in zip(range(3), make_datamodule(processor, cache_dir, 0).train_dataloader())]

    # every decode, in whichever process it runs, appends the video's path to a file (workers are forked
    # from this process, so they inherit the patched function)
    journal = tmp_path / "decoded.txt"
    real = datamodule.decode_frames

    def logged(path, plan):
        frames = real(path, plan)
        with open(journal, "a") as handle:
            handle.write(f"{path}\n")
        return frames

    monkeypatch.setattr(datamodule, "decode_frames", logged)
    loader = make_datamodule(processor, cache_dir, 1).train_dataloader()
    assert loader.num_workers == 1 and loader.persistent_workers
    batches = iter(loader)
    first = next(batches)
    # the "training step" on the first batch: nothing asks for the second, yet the worker decodes it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        decoded = journal.read_text().splitlines() if journal.exists() else []
        if len(decoded) >= 4:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the worker did not prefetch the second batch (decoded: {decoded})")
    second = next(batches)
    assert decoded[2:4] == [s["video_path"] for s in second["samples"]]

    for got, want in zip((first, second), single):
        assert [s["id"] for s in got["samples"]] == [s["id"] for s in want["samples"]]
        assert torch.equal(got["input_ids"], want["input_ids"])
        assert len(got["pixel_values"]) == len(want["pixel_values"]) == 2
        assert all(torch.equal(a, b) for a, b in zip(got["pixel_values"], want["pixel_values"]))
