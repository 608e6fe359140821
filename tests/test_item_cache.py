"""data.cache_items: an item is decoded and encoded once, then served from memory, unchanged."""

from __future__ import annotations

import torch

import visd_exp.data.datamodule as datamodule
from test_controls import dataset  # noqa: F401 (the fixture)


def test_cached_items_are_decoded_once_and_equal(dataset, monkeypatch):  # noqa: F811
    calls = []
    real = datamodule.decode_frames
    monkeypatch.setattr(datamodule, "decode_frames", lambda *a: calls.append(1) or real(*a))
    cached = datamodule.VideoQADataset(dataset.records, dataset.plans, dataset.processor, cache_items=True)
    first = [cached[i] for i in range(len(cached))]
    again = [cached[i] for i in range(len(cached))]
    assert len(calls) == len(cached)  # the second pass decoded nothing
    for a, b, plain in zip(first, again, (dataset[i] for i in range(len(dataset)))):
        assert torch.equal(a["pixel_values"], plain["pixel_values"]) and torch.equal(
            b["input_ids"], plain["input_ids"]
        )
        assert (
            b["sample"] == plain["sample"] and b["sample"] is not a["sample"]
        )  # a copy: callers may add keys
