"""The run planner (`python -m visd_exp.plan`) against real tensors.

- parameter counts: the 7B's published 8.29 B, and the tiny model's every tensor as loaded;
- per-rank items EXACTLY against `rank_memory` (distributed/memory.py) on the tensors of real training runs
  (tests/memory_probe.py reads them at train start and after the first optimizer step): one process (tiny
  fp32 EMA; a mid-size bf16-mixed EMA with a bf16 teacher copy; tiny bf16 Sync-N) and two ZeRO-3 processes
  (mid-size, bf16, persistent small parameters), whose checkpoint size is checked too (within 10%: pickle
  and RNG bookkeeping on top of the tensors);
- activations: the planner's saved-tensor bytes against what a real forward keeps for backward (autograd's
  saved tensors, the checkpointed blocks' inputs and the outputs the caller keeps), within 3%;
- the command line: --json, --assume, a `plan:` node, errors; the paper_7b target (teacher=ema, 8 x 80 GB).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import PROJECT_ROOT
from test_train_e2e import shared_paths
from visd_exp.plan import compose_config, make_plan, plan_config, split_arguments
from visd_exp.planning.activations import Forward, saved_bytes
from visd_exp.planning.models import model_spec, spec_from_config

GIB = 2**30
RUN = [
    "+experiment=ema_topk",
    "trainer.max_steps=1",
    "model.warm_start.steps=0",
    "data.synthetic.num_videos=12",
    "algorithm.max_completion_length=24",
    "callbacks.progress_bar=null",
    "callbacks.validation.at_start=false",
    "callbacks.validation.every_n_steps=0",
    "dumps.credit_every_n_steps=0",
    "logger=csv",
    "save_hf_model=false",
    "callbacks.model_checkpoint.every_n_train_steps=1",
]
MID = [  # a mid-size tiny spec: ~3.4x the default's parameters, 3 layers, GQA 6 / 2 heads
    "model.tiny.hidden_size=192",
    "model.tiny.intermediate_size=512",
    "model.tiny.num_hidden_layers=3",
    "model.tiny.num_attention_heads=6",
    "model.tiny.num_key_value_heads=2",
    "model.tiny.vision_hidden_size=96",
    "model.tiny.vision_intermediate_size=256",
    "model.tiny.vision_depth=3",
]


def probe(out) -> list[str]:
    return [
        "+callbacks.memory_probe._target_=memory_probe.MemoryProbe",
        f"+callbacks.memory_probe.dirpath={out}/mem",
    ]


# -- parameter counts --------------------------------------------------------------------------------------
def test_7b_count_is_the_published_one():
    spec = model_spec(compose_config(["+experiment=paper_7b"]).model)
    # Qwen2.5-VL-7B: 8.29 B parameters, language model 7.62 B, vision tower 0.68 B (notes/scale.md, model card)
    assert round(spec.numel / 1e9, 2) == 8.29
    assert round((spec.numel - spec.vision_numel) / 1e9, 2) == 7.62
    assert round(spec.vision_numel / 1e9, 2) == 0.68
    assert not spec.tied and spec.vocab == 152064


def test_tiny_count_is_every_loaded_tensor(tiny, cache_dir):
    model, _ = tiny
    spec = model_spec(compose_config([f"paths.cache_dir={cache_dir}"]).model)
    assert [(p.name, p.numel) for p in spec.params] == [(n, p.numel()) for n, p in model.named_parameters()]


# -- exact per-rank items against real runs ------------------------------------------------------------------
ONE_PROCESS = {
    "tiny-fp32-ema": [],
    "mid-bf16-ema": [*MID, "model.dtype=bfloat16", "trainer.precision=bf16-mixed"],
    "tiny-bf16-sync": ["teacher=sync", "model.dtype=bfloat16", "trainer.precision=bf16-mixed"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ONE_PROCESS))
def test_one_process_items_are_the_runs_tensors(name, cache_dir, tmp_path):
    from test_train_e2e import compose_train
    from visd_exp.train import train

    overrides = [*RUN, *ONE_PROCESS[name], *shared_paths(cache_dir, tmp_path), f"paths.output_dir={tmp_path}"]
    train(compose_train(overrides + probe(tmp_path)))
    measured = json.loads((tmp_path / "mem" / "memory_rank0.json").read_text())
    plan = make_plan(overrides)
    for phase in ("start", "after_step"):
        assert plan["per_rank_bytes"][phase] == measured[phase]["memory"], phase
    after = measured["after_step"]["memory"]
    assert after["memory/optimizer_state_bytes"] > after["memory/model_fp32_bytes"]  # Adam moments exist
    if "bf16" in name:  # a bf16 copy: half the fp32 bytes; the EMA keeps fp32 beside it, Sync-N nothing
        assert after["memory/teacher_weight_bytes"] * 2 == after["memory/model_fp32_bytes"]
        assert after["memory/teacher_state_bytes"] == (
            0 if "sync" in name else after["memory/model_fp32_bytes"]
        )


@pytest.mark.slow
def test_two_zero3_processes_items_and_checkpoint(cache_dir, tmp_path):
    """Mid-size, bf16, ZeRO-3 on 2 CPU processes, parameters of <= 200 elements persistent (whole on every
    rank after their first forward): every item on both ranks, and the checkpoint's size on disk."""
    overrides = [
        *RUN,
        *MID,
        "trainer=deepspeed_cpu",
        "trainer.devices=2",
        "trainer.precision=bf16-mixed",
        "algorithm.micro_batch_size=2",
        "trainer.strategy.zero_extra.stage3_param_persistence_threshold=200",
        *shared_paths(cache_dir, tmp_path),
        f"paths.output_dir={tmp_path}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false"}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(PROJECT_ROOT / "tests"))
    result = subprocess.run(
        [sys.executable, "-m", "visd_exp.train", *overrides, *probe(tmp_path)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    from omegaconf import OmegaConf

    plan = plan_config(OmegaConf.load(tmp_path / "config_resolved.yaml"))
    for rank in (0, 1):
        measured = json.loads((tmp_path / "mem" / f"memory_rank{rank}.json").read_text())
        for phase in ("start", "after_step"):
            assert plan["per_rank_bytes"][phase] == measured[phase]["memory"], (rank, phase)
        # persistent parameters: more of the weights on the rank after the first forward than at start
        start, after = (measured[p]["memory"]["memory/student_weight_bytes"] for p in ("start", "after_step"))
        assert after > start
    files = [f for f in (tmp_path / "checkpoints" / "step_000001.ckpt").rglob("*") if f.is_file()]
    on_disk = sum(f.stat().st_size for f in files)
    assert on_disk == pytest.approx(plan["checkpoint_bytes"]["total"], rel=0.10)


# -- activations against a real forward ----------------------------------------------------------------------
def _model(mid: bool, dtype, checkpointing: bool):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    h, layers, heads, kv, i, dv, depth, vi = (
        (192, 3, 6, 2, 512, 96, 3, 256) if mid else (64, 2, 4, 2, 128, 32, 2, 64)
    )
    half = h // heads // 2
    section = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=512,
            hidden_size=h,
            intermediate_size=i,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv,
            pad_token_id=0,
            rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 1e6},
        ),
        vision_config=dict(
            depth=depth,
            hidden_size=dv,
            intermediate_size=vi,
            num_heads=4,
            out_hidden_size=h,
            fullatt_block_indexes=[depth - 1],
        ),
        image_token_id=5,
        video_token_id=6,
        vision_start_token_id=3,
        vision_end_token_id=4,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).to(dtype).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def measured_activations(
    model, rows: int, frames: int, grid: tuple[int, int], text: int, checkpointing: bool
):
    """(bytes a real forward keeps for backward, sequence length, vision patches): autograd's saved tensors,
    the inputs the checkpointed blocks keep for their recompute, and the outputs kept by the caller, each
    storage once, parameters excluded. The frames are encoded once for all rows, as models/shared_vision.py
    does for the G rollouts of a prompt."""
    from transformers.modeling_layers import GradientCheckpointingLayer
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    dtype = next(model.parameters()).dtype
    tokens = grid[0] * grid[1] // 4
    ids = [7] * text
    for _ in range(frames):
        ids += [8, 3] + [5] * tokens + [4]
    input_ids = torch.tensor([ids + [9] * 16] * rows)
    pixels = torch.randn(frames * grid[0] * grid[1], 3 * 2 * 14 * 14).to(dtype)
    grids = torch.tensor([[1, *grid]] * frames)
    kept: dict[int, int] = {}

    def keep(t):
        if isinstance(t, torch.Tensor) and t.numel():
            kept.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())

    def pack(t):
        keep(t)
        return t

    def block_inputs(module, args, kwargs):
        if torch.is_grad_enabled():
            for value in [*args, *kwargs.values()]:
                for t in value if isinstance(value, tuple) else (value,):
                    keep(t)

    hooks = (
        [
            m.register_forward_pre_hook(block_inputs, with_kwargs=True)
            for m in model.modules()
            if isinstance(m, GradientCheckpointingLayer)
        ]
        if checkpointing
        else []
    )
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        features = model.model.get_image_features(pixels, grids, return_dict=True).pooler_output
        per_row = tuple(f for _ in range(rows) for f in features)
        hidden = model.model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=(input_ids == 5).long(),
            image_grid_thw=grids.repeat(rows, 1),
            mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=per_row)},
            use_cache=False,
        )[0]
    for h in hooks:
        h.remove()
    keep(hidden)
    for f in features:
        keep(f)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = sum(n for ptr, n in kept.items() if ptr not in weights)
    return total, input_ids.shape[1], pixels.shape[0]


@pytest.mark.parametrize("mid", [False, True], ids=["tiny", "mid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("checkpointing", [True, False], ids=["checkpointed", "whole"])
def test_activations_are_what_a_forward_keeps(mid, dtype, checkpointing):
    model = _model(mid, dtype, checkpointing)
    rows, frames, grid = (4, 3, (4, 8)) if mid else (3, 2, (4, 4))
    measured, length, patches = measured_activations(model, rows, frames, grid, 20, checkpointing)
    spec = spec_from_config(model.config, "test")
    b = 2 if dtype == torch.bfloat16 else 4
    planned = saved_bytes(spec, Forward(rows, length, patches, b, checkpointing))  # maskless sdpa: GQA widths
    assert planned == pytest.approx(measured, rel=0.03), (planned, measured)


# -- the command line and the target --------------------------------------------------------------------------
PAPER_8 = ["+experiment=paper_7b", "trainer.devices=8", "trainer.num_nodes=1"]


def test_paper_7b_ema_on_8_gpus_fits_in_45_gb(tmp_path):
    out = tmp_path / "plan.json"
    args = [*PAPER_8, "teacher=ema", "--json", str(out), "--assume", "gpu_memory_gb=80"]
    result = subprocess.run(
        [sys.executable, "-m", "visd_exp.plan", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    plan = json.loads(out.read_text())
    assert "per_gpu_peak_gb" in result.stdout and "checkpoint_gb" in result.stdout
    assert plan["layout"] == {
        "world": 8,
        "devices": 8,
        "nodes": 1,
        "zero_stage": 3,
        "precision": "bf16-mixed",
        "teacher": "ema",
    }
    assert plan["per_gpu_peak_gb"] <= 45, plan["phases"]
    # the EMA's fp32 state is this rank's partitions (1/8 of 4 bytes x 8.29 B, padding aside), not a full copy
    state = plan["per_rank_bytes"]["after_step"]["memory/teacher_state_bytes"]
    assert 4 * 8.29e9 / 8 * 0.999 < state < 4 * 8.30e9 / 8
    assert plan["checkpoint_gb"] > 12 * 8.29e9 / GIB  # at least every rank's optimizer partitions


def test_teacher_variants_change_the_items():
    ema, current = (make_plan([*PAPER_8, f"teacher={t}"]) for t in ("ema", "current"))
    assert current["per_rank_bytes"]["after_step"]["memory/teacher_weight_bytes"] == 0
    assert current["per_rank_bytes"]["after_step"]["memory/teacher_state_bytes"] == 0
    assert current["per_gpu_peak_gb"] < ema["per_gpu_peak_gb"]
    assert current["checkpoint_gb"] < ema["checkpoint_gb"]


def test_assumptions_come_from_assume_and_a_plan_node():
    base = make_plan(PAPER_8)
    faster = make_plan([*PAPER_8, "+plan.mfu=0.4"], ["gpu=h100"])
    assert faster["assumptions"]["mfu"] == 0.4 and faster["assumptions"]["bf16_tflops"] == 989.0
    assert base["assumptions"]["mfu"] == 0.2
    ratio = base["step_time"]["training_compute_s"] / faster["step_time"]["training_compute_s"]
    assert ratio == pytest.approx(2 * 989 / 312, rel=1e-6)
    override = make_plan([*PAPER_8, "+plan.mfu=0.4"], ["mfu=0.1"])  # --assume wins over the node
    assert override["assumptions"]["mfu"] == 0.1
    # per-layer gathers are slower than one gather per generate call, which is slower than vLLM
    by_engine = {t["engine"]: t["step_s"] for t in base["step_time_by_engine"]}
    assert by_engine["hf/per_layer"] > by_engine["hf/once"] > by_engine["vllm"]


def test_command_line_split():
    overrides, path, assume = split_arguments(
        [
            "+experiment=paper_7b",
            "--assume",
            "mfu=0.3",
            "nvlink_gbps=150",
            "trainer.devices=8",
            "--json",
            "p.json",
        ]
    )
    assert overrides == ["+experiment=paper_7b", "trainer.devices=8"]
    assert path == "p.json" and assume == ["mfu=0.3", "nvlink_gbps=150"]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="bandwidth_gbps"):
        make_plan(PAPER_8, ["bandwidth_gbps=3"])
    with pytest.raises(ValueError, match="gpu=tpu"):
        make_plan(PAPER_8, ["gpu=tpu"])
    with pytest.raises(ValueError, match="trainer.devices"):
        make_plan(["+experiment=paper_7b", "trainer.devices=-1"])
    with pytest.raises(ValueError, match="model.pretrained_model_name_or_path"):
        make_plan([*PAPER_8, "model.pretrained_model_name_or_path=org/unknown-model"])
