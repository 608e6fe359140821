"""The data module: records (any published format) -> sampled frames (torchcodec) -> chat prompt -> processor tensors.
An image record (`image_path`, data/media.py) is one frame at time 0, read with PIL.

At setup every video is probed (a missing or corrupt file fails here, naming the file) and each
prompt's token length is computed without decoding; prompts longer than `max_prompt_length` are
dropped and counted (never truncated through vision tokens). Frames are decoded per item.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from visd_exp.data.frames import (
    PATCH_FACTOR,
    FramePlan,
    VideoDecodeError,
    decode_frames,
    plan_frames,
    probe_video,
)
from visd_exp.data.media import (
    decode_image,
    decode_video_with_stills,
    is_image_record,
    media_path,
    plan_image,
    probe_image,
    with_stills,
)
from visd_exp.data.probing import ProbeResult
from visd_exp.data.prompts import render_prompt
from visd_exp.data.records import load_records
from visd_exp.data.validate import DataValidationError, describe_extras, validate_file
from visd_exp.rewards.tasks import UnknownTaskError, task_spec

log = logging.getLogger(__name__)


def _canonical(task: str) -> str:
    """The project's name of a task (readers and aliases alike); a V-STaR chain name as it is."""
    try:
        return task_spec(task).name
    except UnknownTaskError:
        return task


def key_times(record: dict) -> list[float]:
    """Key-frame times that spatio-temporal tasks must show the model. None for a record that carries its
    benchmark's own prompt (data.vstar_prompts=official | open_o3): those pipelines sample frames without
    looking at the answer's boxes."""
    if record.get("prompt") is not None:
        return []
    try:
        if not task_spec(record.get("task")).uses_key_frames:
            return []
    except UnknownTaskError:  # the V-STaR chains (evaluation only)
        return []
    return [float(k["time"]) for k in record.get("key_frames") or [] if "time" in k]


def decode_media(record: dict, plan: FramePlan) -> torch.Tensor:
    """The planned frames of a record's video, or its one image (image records: data/media.py)."""
    if is_image_record(record):
        return decode_image(record["image_path"], plan)
    return decode_video_with_stills(record, plan, decode_frames)  # still images after it (media.py)


def prompt_text(processor, record: dict, plan: FramePlan) -> str:
    return render_prompt(processor, record, plan.times, plan.duration)


def prompt_length(processor, text: str, plan: FramePlan) -> int:
    """Token count after the processor expands each <|image_pad|> into its vision tokens."""
    tokens_per_frame = (plan.height // PATCH_FACTOR) * (plan.width // PATCH_FACTOR)
    n_text = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
    return n_text + len(plan.times) * (tokens_per_frame - 1)


def encode_prompt(processor, text: str, frames: torch.Tensor) -> dict:
    """Processor tensors for one prompt (batch dim 1); frames are already resized, so no resize here."""
    return processor(
        text=[text],
        images=[list(frames)],
        return_tensors="pt",
        do_resize=False,
        return_mm_token_type_ids=True,
    )


class VideoQADataset(Dataset):
    """Items: the record (with frame_size/frame_times added), prompt text and processor tensors."""

    def __init__(
        self, records: Sequence[dict], plans: Sequence[FramePlan], processor, cache_items: bool = False
    ):
        self.records = list(records)
        self.plans = list(plans)
        self.processor = processor
        # data.cache_items: keep each decoded and encoded item in memory after its first use (small data
        # seen for many epochs, e.g. the SFT warm start: decoding and the processor then cost nothing)
        self.cache_items = cache_items
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        if index in self._cache:
            item = self._cache[index]
            return {**item, "sample": dict(item["sample"])}
        record, plan = self.records[index], self.plans[index]
        try:
            frames = decode_media(record, plan)
        except VideoDecodeError as exc:  # became unreadable after validation: skip it, never crash the run
            log.warning("skipping %s: %s", record.get("_where", record["id"]), exc)
            return {"skipped": media_path(record)}
        item = self.item(record, plan, frames)
        if self.cache_items:
            self._cache[index] = item
            return {**item, "sample": dict(item["sample"])}
        return item

    def item(self, record: dict, plan: FramePlan, frames: torch.Tensor) -> dict:
        """The item of `record` shown `frames` sampled by `plan` (evaluation controls pass other frames)."""
        text = prompt_text(self.processor, record, plan)
        sample = {
            **record,
            "frame_size": list(plan.frame_size),
            "frame_times": list(plan.times),
            "video_duration": plan.duration,
        }
        return {
            "sample": sample,
            "frames": frames,
            "text": text,
            **encode_prompt(self.processor, text, frames),
        }


def collate_prompts(items: list[dict], pad_token_id: int) -> dict:
    """Left-pad prompts into one batch; pixel values stay per item (rollouts repeat them per generation).

    Items whose video could not be decoded are dropped and counted in `skipped_videos`.
    """
    skipped = sum("skipped" in item for item in items)
    items = [item for item in items if "skipped" not in item]
    if not items:
        return {"samples": [], "skipped_videos": skipped}
    length = max(item["input_ids"].shape[1] for item in items)

    def left_pad(key: str, value: int) -> torch.Tensor:
        rows = []
        for item in items:
            row = item[key][0]
            rows.append(torch.cat([row.new_full((length - row.shape[0],), value), row]))
        return torch.stack(rows)

    return {
        "input_ids": left_pad("input_ids", pad_token_id),
        "attention_mask": left_pad("attention_mask", 0),
        "mm_token_type_ids": left_pad("mm_token_type_ids", 0),
        "pixel_values": [item["pixel_values"] for item in items],
        "image_grid_thw": [item["image_grid_thw"] for item in items],
        "samples": [item["sample"] for item in items],
        "frames": [item["frames"] for item in items],
        "texts": [item["text"] for item in items],
        "skipped_videos": skipped,
    }


class ResumableSampler(torch.utils.data.Sampler):
    """A seeded shuffle per epoch that can start part-way into an epoch: exact resume of the data order.

    The permutation of epoch e depends only on (seed, e); `start(batches_seen)` positions the next
    iteration after that many batches (drop_last batching), so a resumed run sees the same batches.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int):
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.batches_per_epoch = max(1, num_samples // batch_size)
        self.epoch, self.offset = 0, 0

    def start(self, batches_seen: int) -> None:
        self.epoch, rest = divmod(int(batches_seen), self.batches_per_epoch)
        self.offset = rest * self.batch_size

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        offset, self.offset = self.offset, 0
        self.epoch += 1
        yield from order[offset:]

    def __len__(self) -> int:
        return self.num_samples


class VideoQADataModule(L.LightningDataModule):
    """Train/val/test splits from JSONL files; the synthetic set is generated on first use."""

    def __init__(self, cfg, processor):
        super().__init__()
        if cfg.get("video_input", "frames") != "frames":
            raise NotImplementedError(
                f"data.video_input={cfg.video_input!r}: only 'frames' (timestamped images) is built; a native video "
                "input needs a torch-only video processor (transformers' own need torchvision)"
            )
        self.cfg = cfg
        self.processor = processor
        self.datasets: dict[str, VideoQADataset] = {}
        self.stats: dict[str, float] = {}
        self.probes: dict[str, ProbeResult] = {}  # video path -> probe, shared with validation
        self.batches_seen = 0  # training batches consumed: the data position saved in checkpoints

    def state_dict(self) -> dict:
        module = self.trainer.lightning_module if self.trainer is not None else None
        return {"batches_seen": getattr(module, "batches_seen", self.batches_seen)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.batches_seen = int(state_dict["batches_seen"])

    def prepare_data(self) -> None:
        synthetic = self.cfg.get("synthetic")
        if synthetic is not None:
            from omegaconf import OmegaConf

            from visd_exp.data.synthetic import ensure_dataset

            difficulty = synthetic.get("difficulty")
            overrides = OmegaConf.to_container(difficulty, resolve=True) if difficulty is not None else {}
            ensure_dataset(
                synthetic.out_dir,
                num_videos=synthetic.num_videos,
                seed=synthetic.seed,
                preset=synthetic.preset,
                **overrides,
            )

    def build_split(self, split: str) -> VideoQADataset | None:
        path = self.cfg.get(f"{split}_file")
        if not path:
            return None
        records = self.read_records(split, path)
        if self.cfg.get("tasks"):
            wanted = {_canonical(t) for t in self.cfg.tasks}
            records = [r for r in records if _canonical(r["task"]) in wanted]
        kept, plans, dropped = [], [], 0
        for record in records:
            if is_image_record(record):  # one frame at time 0 (data/media.py)
                plan = plan_image(self.video_info(record["image_path"], image=True), self.cfg)
            else:
                plan = plan_frames(self.video_info(record["video_path"]), self.cfg, key_times(record))
                plan = with_stills(plan, record)  # VideoMMMU's Adaptation image after the frames (media.py)
            if (
                prompt_length(self.processor, prompt_text(self.processor, record, plan), plan)
                > self.cfg.max_prompt_length
            ):
                dropped += 1
                continue
            kept.append(record)
            plans.append(plan)
        self.stats[f"data/{split}_records"] = len(kept)
        self.stats[f"data/{split}_dropped_long_prompts"] = dropped
        if dropped:
            log.warning(
                "%s: dropped %d of %d prompts longer than %d tokens",
                path,
                dropped,
                len(records),
                self.cfg.max_prompt_length,
            )
        if not kept:
            raise ValueError(f"{path}: no usable records (all {len(records)} dropped or filtered)")
        return VideoQADataset(
            kept, plans, self.processor, cache_items=bool(self.cfg.get("cache_items", False))
        )

    def video_info(self, path: str, image: bool = False):
        """The video's header (an image's size): validation already probed it (once per file); otherwise
        probe now."""
        probed = self.probes.get(path)
        if probed is not None and probed.info is not None:
            return probed.info
        info = probe_image(path) if image else probe_video(path)  # VideoDecodeError names the file
        self.probes[path] = ProbeResult(info, None)
        return info

    def reading(self) -> dict:
        """How data files are read: data.format (null = detected), data.video_root, data.source_roots, and
        the readers' options (data.vstar_prompts: official | open_o3 | project, formats/vstar.py)."""
        from omegaconf import DictConfig, OmegaConf

        roots = self.cfg.get("source_roots")  # null, a mapping, or a layout name (formats.base)
        if isinstance(roots, DictConfig):
            roots = OmegaConf.to_container(roots, resolve=True)
        return {
            "fmt": self.cfg.get("format"),
            "video_root": self.cfg.get("video_root"),
            "source_roots": roots,
            "options": {"vstar_prompts": self.cfg.get("vstar_prompts") or "project"},
        }

    def read_records(self, split: str, path: str) -> list[dict]:
        """Records of a split file in any published format, after validation: strict stops on any problem
        (all listed, with file:line: field), lenient drops bad records and counts them (data/skipped),
        off only parses. Records a reader does not use (images) and clipped intervals are counted."""
        mode = self.cfg.get("validation", "strict")
        if mode == "off":
            return load_records(path, **self.reading())
        report = validate_file(
            path, max_problems=int(self.cfg.get("max_problems", 50)), cache=self.probes, **self.reading()
        )
        records = report.records
        if report.problems and mode == "strict":
            raise DataValidationError(report)
        for line in describe_extras(report):
            log.warning(line)
        for problem in report.problems:
            log.warning("skipping %s", problem)
        if report.skipped:
            log.warning(
                "%s: kept %d of %d records, skipped %d (data.validation=lenient)",
                path,
                len(records),
                report.total,
                report.skipped,
            )
        self.stats[f"data/{split}_skipped"] = report.skipped
        self.stats[f"data/{split}_unused"] = sum(report.unused.values())
        self.stats[f"data/{split}_clipped"] = report.clipped
        self.stats["data/skipped"] = self.stats.get("data/skipped", 0) + report.skipped
        return records

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.datasets and (dataset := self.build_split(split)) is not None:
                self.datasets[split] = dataset

    def loader(self, split: str, shuffle: bool, batch_size: int | None = None) -> DataLoader:
        """A loader over a built split; shuffle=True is the resumable training order. `batch_size`
        (unshuffled only): other than data.batch_size, e.g. for validation's generation."""
        if shuffle and batch_size is not None:
            raise ValueError("the training order is defined over data.batch_size batches")
        pad = self.processor.tokenizer.pad_token_id
        sampler = None
        if shuffle:
            from visd_exp.distributed.sampler import train_sampler

            # hook (multi-process): each rank takes its share of every global batch; one rank: ResumableSampler
            sampler = train_sampler(
                len(self.datasets[split]), self.cfg.batch_size, int(self.cfg.get("seed", 0)), self.trainer
            )
            sampler.start(self.batches_seen)
        return DataLoader(
            self.datasets[split],
            batch_size=batch_size or self.cfg.batch_size,
            sampler=sampler,
            shuffle=False,
            drop_last=shuffle,
            num_workers=self.cfg.num_workers,
            collate_fn=functools.partial(collate_prompts, pad_token_id=pad),
            # Its own generator: creating an iterator must not draw from the global RNG (exact resume).
            generator=torch.Generator().manual_seed(int(self.cfg.get("seed", 0))),
            persistent_workers=self.cfg.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader("test", shuffle=False)
