"""Video-dependence controls for evaluation: does the model use the video at all?

    swap_frames     each sample is shown ANOTHER sample's frames (a derangement: never its own), with its
                    own question and ground truth; the prompt's frame times are those of the frames shown
    shuffle_frames  each sample is shown its OWN frames in a random non-identity order, the prompt's
                    "Frame i at t s:" labels still in ascending time (only what the model sees moves)

A model that ignores the video scores the same on the normal run and on both controls; one that grounds
scores far lower under swap_frames (the evidence belongs to another question) and lower under
shuffle_frames for anything temporal. `python -m visd_exp.evaluate control=all` reports them side by side.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from visd_exp.data.frames import VideoDecodeError, decode_frames

CONTROLS = ("swap_frames", "shuffle_frames")


def derangement(n: int, generator: torch.Generator) -> list[int]:
    """A random permutation of range(n) with no fixed point (n >= 2)."""
    if n < 2:
        raise ValueError(f"control=swap_frames needs at least 2 samples to swap, got {n}")
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        if all(i != j for i, j in enumerate(order)):
            return order


def non_identity_order(n: int, generator: torch.Generator) -> list[int]:
    """A random order of n frames other than the identity (the identity when n < 2: nothing to shuffle)."""
    if n < 2:
        return list(range(n))
    while True:
        order = torch.randperm(n, generator=generator).tolist()
        if order != list(range(n)):
            return order


class ControlDataset(Dataset):
    """A VideoQADataset whose items show other frames: `control` in CONTROLS, draws fixed by `seed`."""

    def __init__(self, base, control: str, seed: int = 0):
        if control not in CONTROLS:
            raise ValueError(f"control={control!r}: one of {', '.join(CONTROLS)}")
        self.base, self.control = base, control
        generator = torch.Generator().manual_seed(seed)
        n = len(base)
        self.source = derangement(n, generator) if control == "swap_frames" else list(range(n))
        self.orders = [non_identity_order(len(plan.times), generator) for plan in base.plans]

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        record = self.base.records[index]
        other = self.source[index]
        video, plan = self.base.records[other]["video_path"], self.base.plans[other]
        try:
            frames = decode_frames(video, plan)
        except VideoDecodeError:
            return {"skipped": video}
        if self.control == "shuffle_frames":
            frames = frames[self.orders[index]]
        item = self.base.item(record, plan, frames)
        item["sample"]["control"] = self.control
        return item
