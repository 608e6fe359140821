"""The step's shapes from the config: ranks, rows per rank, frames and vision tokens, row lengths.

Worst case where the data decides: every video gives `data.max_frames` frames at the per-frame pixel budget
(synthetic data: its preset's frame size and duration, sampled as the data module samples them), and every
completion runs to `algorithm.max_completion_length` (assumption `completion_fraction` for step time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from visd_exp.planning.assumptions import Assumptions
from visd_exp.planning.models import ModelSpec


@dataclass(frozen=True)
class Shapes:
    world: int  # data-parallel ranks (devices x nodes)
    devices: int
    nodes: int
    prompts: int  # prompts per rank per batch (data.batch_size)
    generations: int  # G
    rows: int  # rollouts per rank per batch
    micro_rows: int  # rollouts per forward pass (algorithm.micro_batch_size)
    micro_prompts: int  # distinct prompts in the largest micro-batch (their frames are encoded once)
    accumulate: int  # batches per optimizer step
    frames: int
    frame_pixels: int
    patches_per_frame: int  # vision-tower positions per frame
    tokens_per_frame: int  # language-model positions per frame (after the spatial merge)
    text_tokens: int  # the prompt's text (estimated: assumptions)
    prompt: int  # student prompt positions
    privileged: int  # the teacher's extra block
    completion: int  # max_completion_length
    mean_completion: int  # for step time
    precision: str
    deepspeed: bool
    stage: int  # ZeRO stage (0 without DeepSpeed)

    @property
    def student_len(self) -> int:
        return self.prompt + self.completion

    @property
    def teacher_len(self) -> int:
        return self.prompt + self.privileged + self.completion

    @property
    def half(self) -> bool:
        return not self.precision.startswith(("32", "64"))

    def describe(self) -> dict[str, object]:
        out = dict(self.__dict__)
        out.update(student_len=self.student_len, teacher_len=self.teacher_len)
        return out


def _devices(value) -> int:
    from visd_exp.utils.recipe import device_count

    count = device_count(value)
    if count is None:
        raise ValueError(
            f"trainer.devices={value}: the planner needs a device count (e.g. trainer.devices=8)"
        )
    return count


def batch_size(cfg, devices: int, nodes: int) -> int:
    """data.batch_size, `auto` resolved as the run resolves it (utils/recipe.py)."""
    from visd_exp.utils.recipe import check_prompts_per_step

    check_prompts_per_step(cfg, devices, nodes)  # also resolves `auto` in place
    value = cfg.data.batch_size
    if isinstance(value, str):
        raise ValueError(f"data.batch_size={value!r}: set a number (or algorithm.prompts_per_step for auto)")
    return int(value)


def max_prompts_in_slice(rows: int, size: int, generations: int) -> int:
    """Most distinct prompts among the rows of one micro-batch (slices [k s, (k + 1) s), G rows per prompt)."""
    return max(
        (min(start + size, rows) - 1) // generations - start // generations + 1
        for start in range(0, rows, size)
    )


def frame_plan(data, spec: ModelSpec, assume: Assumptions) -> tuple[int, int]:
    """(frames per video, pixels per frame) in the worst case the data config allows."""
    from visd_exp.data.frames import PATCH_FACTOR, frame_pixels_cap, sample_times, smart_resize

    synthetic = data.get("synthetic")
    if synthetic is not None:  # synthetic videos: their known size and duration
        from visd_exp.data.synthetic import PRESETS

        preset = PRESETS[synthetic.preset]
        width, height = tuple((synthetic.get("difficulty") or {}).get("frame_size") or preset.frame_size)
        duration = float((synthetic.get("difficulty") or {}).get("duration") or preset.duration)
        frames = len(sample_times(duration, data.fps, data.min_frames, data.max_frames))
        h, w = smart_resize(height, width, data.min_pixels, frame_pixels_cap(data, frames))
        pixels = h * w
    else:
        frames = int(data.max_frames)
        cap = frame_pixels_cap(data, frames)
        pixels = max(PATCH_FACTOR**2, cap // PATCH_FACTOR**2 * PATCH_FACTOR**2)
    if assume.frame_pixels is not None:
        pixels = int(assume.frame_pixels)
    unit = (spec.patch * spec.merge) ** 2
    if pixels % unit:
        raise ValueError(
            f"frame_pixels={pixels} is not a multiple of {unit} (patch {spec.patch} x merge {spec.merge})^2"
        )
    return frames, pixels


def text_tokens(frames: int, assume: Assumptions) -> int:
    from visd_exp.data.prompts import SYSTEM_PROMPT

    system = math.ceil(len(SYSTEM_PROMPT) / assume.chars_per_token)
    return system + assume.template_tokens + assume.question_tokens + frames * assume.frame_header_tokens


def build_shapes(cfg, spec: ModelSpec, assume: Assumptions) -> Shapes:
    trainer, algo, data = cfg.trainer, cfg.algorithm, cfg.data
    devices, nodes = _devices(trainer.get("devices", 1)), int(trainer.get("num_nodes", 1) or 1)
    prompts = batch_size(cfg, devices, nodes)
    generations = int(algo.num_generations)
    rows = prompts * generations
    micro = algo.get("micro_batch_size")
    micro_rows = rows if micro is None else min(rows, int(micro))
    frames, pixels = frame_plan(data, spec, assume)
    patches = pixels // spec.patch**2
    tokens = patches // spec.merge**2
    text = text_tokens(frames, assume)
    strategy = trainer.get("strategy")
    target = str(strategy.get("_target_", "")) if hasattr(strategy, "get") else str(strategy or "")
    deepspeed = "deepspeed" in target.lower()
    completion = int(algo.max_completion_length)
    return Shapes(
        world=devices * nodes,
        devices=devices,
        nodes=nodes,
        prompts=prompts,
        generations=generations,
        rows=rows,
        micro_rows=micro_rows,
        micro_prompts=max_prompts_in_slice(rows, micro_rows, generations),
        accumulate=int(cfg.optim.get("accumulate_grad_batches", 1) or 1),
        frames=frames,
        frame_pixels=pixels,
        patches_per_frame=patches,
        tokens_per_frame=tokens,
        text_tokens=text,
        # + <|vision_start|> and <|vision_end|> per frame; a longer prompt than data.max_prompt_length is
        # dropped by the data module, so none in training is longer
        prompt=min(frames * (tokens + 2) + text, int(data.get("max_prompt_length") or 1 << 30)),
        privileged=int(assume.privileged_tokens)
        if cfg.get("teacher") and cfg.teacher.get("name") not in (None, "none")
        else 0,
        completion=completion,
        mean_completion=max(1, round(completion * assume.completion_fraction)),
        precision=str(trainer.get("precision", "32-true")),
        deepspeed=deepspeed,
        stage=int(strategy.get("stage", 0)) if deepspeed else 0,
    )
