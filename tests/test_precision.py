"""Precision (issue 11): fp32 master weights under bf16 autocast, an fp32 EMA, recomputed old log-probs.

A bf16 weight of magnitude ~0.02 has a rounding step of ~1e-4: AdamW updates of lr 1e-6 stepped in bf16
round away, and an EMA at rate 0.01 computed in bf16 never moves. The first two tests show the failure
the measure detects; the run below shows the fix on the real training path.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from test_train_e2e import FAST, compose_train, read_metrics, shared_paths
from visd_exp.precision import PrecisionError, prepare_trained_weights, resolve_old_logprobs
from visd_exp.teacher import build_teacher
from visd_exp.train import train

BF16_RUN = ["+experiment=ema_topk", "model.dtype=bfloat16", "optim.lr=1e-6", "optim.warmup_steps=0"]


def changed_fraction(before: dict, after: dict) -> float:
    """Share of elements (over all tensors) whose value differs."""
    changed = sum(int((before[k].float() != after[k].float()).sum()) for k in before)
    return changed / sum(v.numel() for v in before.values())


def weights(scale: float = 0.02, n: int = 4096, dtype=torch.bfloat16) -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(n // 64, 64, bias=False)
    with torch.no_grad():
        layer.weight.normal_(0.0, scale)
    return layer.to(dtype)


def test_bf16_weights_with_adamw_at_lr_1e6_barely_move():
    """What the refusal prevents: the measure used below reports < 50% for a pure-bf16 AdamW run."""
    layer = weights()
    before = {"w": layer.weight.detach().clone()}
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-6, weight_decay=0.01)
    for _ in range(3):
        layer.weight.grad = torch.randn_like(layer.weight)
        optimizer.step()
    assert changed_fraction(before, {"w": layer.weight.detach()}) < 0.1


def test_ema_accumulates_in_fp32_when_the_copy_is_bf16():
    student = weights()  # loaded in bf16: the teacher copy is bf16
    teacher = build_teacher(OmegaConf.create({"name": "ema", "rate": 0.01}), student)
    assert teacher.master is not None and teacher.master.p0.dtype == torch.float32
    prepare_trained_weights(student, "bf16-mixed")  # the student becomes its fp32 master, as in setup()
    before = teacher.master.p0.clone()
    bf16_ema = teacher.copy.weight.detach().clone()  # the same EMA computed in bf16, for contrast
    with torch.no_grad():
        student.weight.add_(1e-6 * torch.randn_like(student.weight))  # a few lr-1e-6 steps away
    for step in range(1, 4):
        teacher.after_optimizer_step(student, step)
        bf16_ema.lerp_(student.weight.detach().bfloat16(), 0.01)
    fp32 = teacher.master.p0
    expected = before + (1 - 0.99**3) * (student.weight.detach().float() - before)  # Eq. 8 three times
    torch.testing.assert_close(fp32, expected, atol=1e-9, rtol=1e-5)
    assert (fp32 != before).float().mean() > 0.9
    assert (bf16_ema != before.bfloat16()).float().mean() < 0.1  # the bf16 EMA would be frozen
    assert torch.equal(
        teacher.copy.weight, fp32.bfloat16()
    )  # the forward copy is rounded from the fp32 state


def test_prepare_trained_weights_upcasts_under_mixed_and_refuses_pure_half():
    layer = weights()
    with pytest.raises(PrecisionError, match="trainer.precision=bf16-mixed"):
        prepare_trained_weights(layer, "32-true")
    with pytest.raises(PrecisionError, match="fp32 master weights"):
        prepare_trained_weights(weights(dtype=torch.float32), "bf16-true")
    assert prepare_trained_weights(layer, "bf16-mixed") == 1 and layer.weight.dtype == torch.float32
    assert prepare_trained_weights(weights(), "bf16-true", "DeepSpeedStrategy") == 0  # its own fp32 masters
    assert resolve_old_logprobs("auto", "bf16-mixed") == "current"  # one update per batch: no recompute
    assert resolve_old_logprobs("auto", "32-true") == "generate"
    assert resolve_old_logprobs("generate", "bf16-mixed") == "generate"
    with pytest.raises(ValueError, match="old_logprobs"):
        resolve_old_logprobs("cached", "32-true")


def run(cache_dir, out_dir, *overrides):
    cfg = compose_train(
        FAST
        + shared_paths(cache_dir, out_dir)
        + [f"paths.output_dir={out_dir}", "logger=csv", "dumps.credit_every_n_steps=0", *overrides]
    )
    train(cfg)
    return cfg


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    from visd_exp.models import load_model_and_processor

    model, _ = load_model_and_processor(cfg.model, cfg.data)
    return {name: p.detach().float().clone() for name, p in model.named_parameters()}


def test_bf16_compute_at_lr_1e6_moves_student_and_ema_teacher(cache_dir, tmp_path):
    """bf16 weights loaded (as the 7B config does) + bf16-mixed: fp32 masters and an fp32 EMA train at lr
    1e-6; old log-probs are the update's own forward (auto: current), so every update's ratio is exactly 1."""
    out = tmp_path / "bf16"
    cfg = run(
        cache_dir,
        out,
        *BF16_RUN,
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=3",
        "callbacks.model_checkpoint.every_n_train_steps=1",
    )
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 3
    sd = state["state_dict"]
    before = initial_weights(cfg)
    student = {k: sd[f"model.{k}"] for k in before}
    assert all(v.dtype == torch.float32 for v in student.values())  # fp32 masters
    teacher_fp32 = [sd[f"teacher.master.p{i}"] for i in range(len(before))]
    assert all(v.dtype == torch.float32 for v in teacher_fp32)
    teacher = dict(zip(before, teacher_fp32))  # FP32State keeps parameters() order
    assert changed_fraction(before, student) > 0.5, changed_fraction(before, student)
    assert changed_fraction(before, teacher) > 0.5, changed_fraction(before, teacher)

    rows = read_metrics(out)
    assert len(rows) == 3
    for r in rows:  # current: the ratio of each (single) update is exactly 1, so nothing is clipped
        assert float(r["ratio/mean"]) == 1.0 and float(r["clip_ratio"]) == 0.0
        assert math.isfinite(float(r["loss"]))
        # a batch whose groups all tie has A = 0 everywhere (Eq. 14): no gradient, rightly
        tied = float(r["frac_reward_zero_std"]) == 1.0
        assert (float(r["grad_norm"]) == 0.0) if tied else (float(r["grad_norm"]) > 0), r
    assert any(float(r["grad_norm"]) > 0 for r in rows)
    # ... while the sampling pass's bf16 log-probs were off: `generate` would have started away from 1
    assert float(rows[0]["rollout/logprob_diff_mean"]) > 1e-4


def test_generate_in_bf16_starts_the_ratio_away_from_1(cache_dir, tmp_path):
    """The contrast: the same first step with old_logprobs=generate has a ratio mean != 1."""
    run(
        cache_dir,
        tmp_path,
        *BF16_RUN,
        "trainer.precision=bf16-mixed",
        "trainer.max_steps=1",
        "algorithm.old_logprobs=generate",
    )
    (row,) = read_metrics(tmp_path)
    assert float(row["ratio/mean"]) != 1.0


@pytest.mark.parametrize("precision", ["bf16-true", "32-true"])
def test_pure_bf16_weights_with_a_plain_optimizer_are_refused_at_start(cache_dir, tmp_path, precision):
    with pytest.raises(PrecisionError, match="trainer.precision=bf16-mixed"):
        run(cache_dir, tmp_path, *BF16_RUN, f"trainer.precision={precision}", "trainer.max_steps=3")
    assert not (tmp_path / "checkpoints").exists() and not list(tmp_path.glob("csv/*/metrics.csv"))
