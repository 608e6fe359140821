"""Video-R1's T-GRPO unit (algorithms/tgrpo.py): the gate and bonuses by hand, the shuffled rollouts really
see permuted frames (Video-R1's vLLM path once passed the unshuffled video), and a short training run."""

from __future__ import annotations

import math

import pytest
import torch

import visd_exp.rollout.generation as generation
from test_logprob_consistency import make_batch
from test_train_e2e import compose_train, fast, read_metrics, shared_paths
from visd_exp.algorithms import Policy, build_algorithm
from visd_exp.algorithms.tgrpo import LengthWindow, TemporalRule, random_order, shape_group, shuffle_frames
from visd_exp.models import vision_token_ids
from visd_exp.utils.steps import Stopwatch

RULE = TemporalRule()  # Video-R1: mu 0.8, alpha 0.3, correct = accuracy > 0.1, no length reward
REWARDS = [2.0, 1.05, 1.5, 1.0]


# -- the gate and the bonuses on hand-made groups --------------------------------------------------
def test_gate_open_gives_alpha_to_correct_ordered_rollouts_only():
    # p = (1 + 0.05 + 0.5 + 0) / 4 = 0.3875 >= 0.8 * mean(0, 0.2) = 0.08
    out = shape_group(REWARDS, [1.0, 0.05, 0.5, 0.0], [0.0, 0.2], [10] * 4, RULE)
    assert out.gate is True
    assert out.temporal == [True, False, True, False]  # 0.05 and 0 are not > 0.1
    assert out.rewards == pytest.approx([2.3, 1.05, 1.8, 1.0])
    assert out.length == [False] * 4  # length reward off


def test_gate_closed_gives_nothing():
    # p = 0.3875 < 0.8 * mean(1, 0) = 0.4
    out = shape_group(REWARDS, [1.0, 0.05, 0.5, 0.0], [1.0, 0.0], [10] * 4, RULE)
    assert out.gate is False and out.temporal == [False] * 4 and out.rewards == REWARDS


def test_gate_boundary_p_equal_mu_p_tilde_is_open():
    ordered, shuffled = [0.8, 0.0, 0.0, 0.0], [0.25, 0.25]
    p, p_tilde = sum(ordered) / 4, sum(shuffled) / 2
    assert p == RULE.mu * p_tilde  # exactly the boundary in floating point
    out = shape_group(REWARDS, ordered, shuffled, [10] * 4, RULE)
    assert out.gate is True and out.rewards == pytest.approx([2.3, 1.05, 1.5, 1.0])
    below = shape_group(REWARDS, ordered, [0.25, 0.2500001], [10] * 4, RULE)
    assert below.gate is False and below.rewards == REWARDS


def test_threshold_is_strict_and_images_get_no_temporal_bonus():
    out = shape_group(REWARDS, [0.1, 0.1000001, 0.0, 0.0], [0.0, 0.0], [10] * 4, RULE)
    assert out.temporal == [False, True, False, False]
    image = shape_group(REWARDS, [1.0, 1.0, 1.0, 1.0], None, [10] * 4, RULE)  # a single frame: not shuffled
    assert image.gate is None and image.temporal == [False] * 4 and image.rewards == REWARDS


def test_length_bonus_needs_more_than_one_correct_and_the_window():
    rule = TemporalRule(length=LengthWindow(bonus=0.2, min_tokens=40, max_tokens=120))
    # gate closed (p~ high): only the length bonus acts. Correct: 0, 1, 3; in the window: 0, 2, 3 (edges count)
    out = shape_group(REWARDS, [1.0, 0.9, 0.0, 0.5], [1.0, 1.0, 1.0], [40, 121, 60, 120], rule)
    assert out.gate is False
    assert out.length == [True, False, False, True]
    assert out.rewards == pytest.approx([2.2, 1.05, 1.5, 1.2])
    # one correct rollout: no length bonus even inside the window
    one = shape_group(REWARDS, [1.0, 0.0, 0.05, 0.0], [1.0, 1.0], [50, 50, 50, 50], rule)
    assert one.length == [False] * 4 and one.rewards == REWARDS
    # both bonuses add up; an image prompt still gets the length bonus (Video-R1 applies it to all samples)
    both = shape_group(REWARDS, [1.0, 1.0, 0.0, 0.0], [0.0, 0.0], [50, 500, 50, 50], rule)
    assert both.rewards == pytest.approx([2.5, 1.35, 1.5, 1.0])
    image = shape_group(REWARDS, [1.0, 1.0, 0.0, 0.0], None, [50, 500, 50, 50], rule)
    assert image.rewards == pytest.approx([2.2, 1.05, 1.5, 1.0])


def test_random_order_is_seeded_and_never_the_identity():
    torch.manual_seed(3)
    first = [random_order(3) for _ in range(20)]
    torch.manual_seed(3)
    assert [random_order(3) for _ in range(20)] == first
    assert all(sorted(o) == [0, 1, 2] and o != [0, 1, 2] for o in first)
    assert all(random_order(2) == [1, 0] for _ in range(30))
    assert random_order(1) == [0]


def test_shuffle_frames_moves_whole_blocks():
    grid = torch.tensor([[1, 2, 2]] * 3)
    pixels = torch.arange(12 * 2).view(12, 2)  # 3 frames x 4 patches
    out, out_grid = shuffle_frames(pixels, grid, [2, 0, 1])
    assert torch.equal(out, torch.cat([pixels[8:12], pixels[0:4], pixels[4:8]]))
    assert torch.equal(out_grid, grid)
    with pytest.raises(ValueError, match="one size"):
        shuffle_frames(torch.zeros(8, 2), torch.tensor([[1, 2, 2], [1, 2, 1], [1, 1, 2]]), [1, 0, 2])


# -- what reaches generate_rollouts for the shuffled call -----------------------------------------
def test_shuffled_rollouts_see_permuted_frames(tiny, tmp_path, monkeypatch):
    from conftest import write_square_video

    model, processor = tiny
    batch = make_batch(processor, write_square_video(tmp_path / "v.mp4"), frame_counts=(8, 1))
    assert [g.shape[0] for g in batch["image_grid_thw"]] == [8, 1]  # a video and a single image
    torch.manual_seed(0)
    batch["pixel_values"] = [torch.randn_like(pv) for pv in batch["pixel_values"]]  # distinct blocks
    for sample, times in zip(batch["samples"], ([float(i) for i in range(8)], [0.0])):
        sample.update({"frame_times": times, "video_duration": 8.0, "answer": "B", "segment": [2.0, 5.0]})
    cfg = compose_train(["algorithm=tgrpo", "algorithm.max_completion_length=8"])
    algo = build_algorithm(cfg)
    assert algo.name == "tgrpo" and algo.G == 4 and algo.K == 2

    calls, real = [], generation.generate_rollouts

    def recording(model, processor, inputs, algo_cfg, suppress):
        calls.append((inputs, int(algo_cfg.num_generations)))
        return real(model, processor, inputs, algo_cfg, suppress)

    monkeypatch.setattr(generation, "generate_rollouts", recording)
    watch = Stopwatch()
    step = algo.step(Policy(model, processor, vision_token_ids(processor.tokenizer)), batch, 0.0, watch)

    assert [n for _, n in calls] == [4, 2]  # G ordered per prompt, then G/2 shuffled per video prompt
    ordered, shuffled = calls[0][0], calls[1][0]
    assert ordered["pixel_values"] is batch["pixel_values"]  # the ordered call: GRPO's, untouched
    # only the video prompt is shuffled; its prompt text (timestamps ascending) is unchanged
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        assert torch.equal(shuffled[key], batch[key][:1]), key
    assert len(shuffled["pixel_values"]) == len(shuffled["image_grid_thw"]) == 1
    grid, pv = batch["image_grid_thw"][0], batch["pixel_values"][0]
    new_grid, new_pv = shuffled["image_grid_thw"][0], shuffled["pixel_values"][0]
    assert torch.equal(new_grid, grid) and new_pv.shape == pv.shape
    size = int(grid[0].prod())
    blocks, new_blocks = pv.split(size), new_pv.split(size)
    order = [next(j for j, b in enumerate(blocks) if torch.equal(nb, b)) for nb in new_blocks]
    assert sorted(order) == list(range(8)) and order != list(range(8))  # the same blocks, moved

    # only the ordered rows enter the loss; the image prompt's rewards are the verifier's totals
    assert step.rollouts.num_rollouts == len(step.samples) == len(step.scores) == step.rewards.shape[0] == 8
    totals = torch.tensor([s["total"] for s in step.scores])
    assert torch.allclose(step.rewards[4:], totals[4:])
    bonus = step.rewards - totals
    assert torch.all((bonus.abs() < 1e-6) | ((bonus - 0.3).abs() < 1e-6))
    assert step.metrics["tgrpo/bonus_frac"] == pytest.approx(float((bonus > 0.1).float().mean()))
    for key in ("tgrpo/ordered_acc", "tgrpo/shuffled_acc", "tgrpo/bonus_frac"):
        assert math.isfinite(step.metrics[key]), key
    assert "tgrpo/length_bonus_frac" not in step.metrics
    assert {"rollout", "rollout_shuffled", "reward"} <= set(watch.seconds)


# -- the training loop ----------------------------------------------------------------------------
def test_train_logs_tgrpo_metrics_every_step(cache_dir, tmp_path):
    from visd_exp.train import train

    cfg = compose_train(
        fast("trainer.max_steps", "callbacks.model_checkpoint")
        + shared_paths(cache_dir, tmp_path)
        + [
            f"paths.output_dir={tmp_path}",
            "+experiment=tgrpo",
            "trainer.max_steps=3",
            "logger=csv",
            "algorithm.tgrpo.length_reward.enabled=true",
            "algorithm.tgrpo.length_reward.min_tokens=20",
            "algorithm.tgrpo.length_reward.max_tokens=96",
        ]
    )
    assert cfg.algorithm.name == "tgrpo"
    train(cfg)
    rows = read_metrics(tmp_path)
    assert [int(r["step"]) for r in rows] == [0, 1, 2]
    for key in ("tgrpo/ordered_acc", "tgrpo/shuffled_acc", "tgrpo/bonus_frac", "tgrpo/length_bonus_frac"):
        values = [float(r[key]) for r in rows]
        assert all(0.0 <= v <= 1.0 for v in values), (key, values)  # logged, finite, a share/accuracy
    assert all(float(r["timing/rollout_shuffled"]) > 0 for r in rows)
