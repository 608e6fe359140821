"""Bounded memory (issue 11): micro-batched update, teacher replay and recompute agree with the full batch;
gradient accumulation over batches equals one step on all their prompts; generation keeps no [N, C, V]."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from test_logprob_consistency import ALGO, make_batch
from test_train_e2e import FAST, compose_train, shared_paths
from visd_exp.judge import evidence_from_sample
from visd_exp.models import vision_token_ids
from visd_exp.module import VISDModule
from visd_exp.rollout.generation import generate_rollouts, repeat_prompts, select_rows
from visd_exp.step_forward import TeacherReplay, micro_slices, policy_update, recompute_logprobs
from visd_exp.teacher import privileged_block, teacher_inputs, teacher_states

REAL_STEP, REAL_BATCH = VISDModule.take_optimizer_step, VISDModule.training_step
CREDIT = OmegaConf.create({"name": "topk", "k": 4, "eps_w": 0.2})


@pytest.fixture(scope="module")
def case(tiny, tmp_path_factory):
    """2 prompts of different lengths and frame counts x G = 3: N = 6 rollouts; a perturbed EMA-like
    teacher with a privileged block; old log-probs off the policy so that the clip acts."""
    from conftest import write_square_video

    model, processor = tiny
    video = write_square_video(tmp_path_factory.mktemp("v") / "v.mp4")
    batch = make_batch(processor, video)
    for sample, times in zip(batch["samples"], ([i * 1.0 for i in range(8)], [i * 1.6 for i in range(5)])):
        sample.update({"frame_times": times, "video_duration": 8.0, "answer": "B", "segment": [2.0, 5.0]})
    torch.manual_seed(0)
    rollouts = generate_rollouts(model, processor, batch, ALGO, vision_token_ids(processor.tokenizer))
    G = ALGO.num_generations
    samples = [s for s in batch["samples"] for _ in range(G)]
    grids = [g for g in batch["image_grid_thw"] for _ in range(G)]
    blocks = [
        privileged_block(s["answer"], evidence_from_sample(s), f"note {i}") for i, s in enumerate(samples)
    ]
    inputs = teacher_inputs(processor, rollouts, samples, blocks, grids)
    teacher = copy.deepcopy(model)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.02 * torch.randn_like(p))
    rollouts.old_logprobs = rollouts.old_logprobs + 0.3 * torch.randn_like(rollouts.old_logprobs)
    rollouts.old_logprobs *= rollouts.completion_mask
    advantages = torch.tensor([1.0, -0.5, -0.5, 0.8, 0.0, -0.8])
    return model, teacher, rollouts, inputs, advantages


def update(case, size):
    model, teacher, rollouts, inputs, advantages = case
    C = rollouts.completion_ids.shape[1]
    replay = TeacherReplay(
        inputs,
        lambda x, images, features=None: teacher_states(teacher, x, C, images, features),
        CREDIT,
        lam=0.5,
    )
    model.zero_grad(set_to_none=True)
    out = policy_update(
        model, rollouts, advantages, temperature=0.9, epsilon=0.2, micro_batch_size=size, replay=replay
    )
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return out, grads


def test_micro_slices():
    assert micro_slices(6, None) == [slice(0, 6)] and micro_slices(6, 8) == [slice(0, 6)]
    assert micro_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    with pytest.raises(ValueError, match="micro_batch_size"):
        micro_slices(4, 0)


def test_select_rows_keeps_each_rows_images(case):
    _, _, rollouts, _, _ = case
    assert rollouts.images_per_row == [8, 8, 8, 5, 5, 5]
    part = rollouts.select(slice(2, 4))  # the last row of prompt 1 and the first of prompt 2
    assert part.image_grid_thw.shape[0] == 13
    assert torch.equal(
        part.image_grid_thw, torch.cat([rollouts.image_grid_thw[16:24], rollouts.image_grid_thw[24:29]])
    )
    start = int(rollouts.image_grid_thw[:16].prod(-1).sum())
    assert torch.equal(part.pixel_values, rollouts.pixel_values[start : start + part.pixel_values.shape[0]])
    assert select_rows(rollouts.model_inputs(), slice(0, 6), rollouts.images_per_row)[
        "pixel_values"
    ].shape == (rollouts.pixel_values.shape)


@pytest.mark.parametrize("size", [3, 4, 1])
def test_loss_gradients_and_delta_agree_across_micro_batch_sizes(case, size):
    """fp32: micro-batches of 3 (N/2), 4 (uneven: 4 + 2) and 1 against all N = 6 at once, to 1e-5."""
    full, full_grads = update(case, None)
    part, part_grads = update(case, size)
    assert full.delta.abs().max() > 1e-2 and full_grads  # a real teacher signal and a real gradient
    assert abs(full.loss.item()) > 1e-3
    assert abs(part.loss.item() - full.loss.item()) < 1e-5
    assert full_grads.keys() == part_grads.keys()
    worst = max((part_grads[k] - full_grads[k]).abs().max().item() for k in full_grads)
    assert worst < 1e-5, worst
    for name in ("delta", "weights", "token_advantages", "logprobs"):
        torch.testing.assert_close(getattr(part, name), getattr(full, name), atol=1e-5, rtol=0)
    assert abs(part.entropy - full.entropy) < 1e-5


def test_recompute_is_micro_batched_and_matches_the_update_forward(case):
    model, _, rollouts, _, _ = case
    full = recompute_logprobs(model, rollouts, 0.9, None)
    for size in (3, 1):
        torch.testing.assert_close(recompute_logprobs(model, rollouts, 0.9, size), full, atol=1e-5, rtol=0)
    # the same forward as the update's: ratio exactly 1 in fp32 as well
    fresh = copy.copy(rollouts)
    fresh.old_logprobs = recompute_logprobs(model, rollouts, 0.9, 3)
    out = policy_update(model, fresh, torch.ones(6), temperature=0.9, epsilon=0.2, micro_batch_size=3)
    model.zero_grad(set_to_none=True)
    mask = rollouts.completion_mask.bool()
    assert torch.equal(out.logprobs[mask], fresh.old_logprobs[mask])


def test_generation_keeps_no_vocabulary_sized_scores(tiny, tmp_path, monkeypatch):
    from conftest import write_square_video

    model, processor = tiny
    seen = {}
    real = model.generate

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    batch = make_batch(processor, write_square_video(tmp_path / "v.mp4"))
    out = generate_rollouts(model, processor, batch, ALGO, vision_token_ids(processor.tokenizer))
    for key in ("output_logits", "output_scores", "return_dict_in_generate"):
        assert not seen.get(key), key
    assert out.old_logprobs.shape == out.completion_ids.shape and out.old_logprobs.dtype == torch.float32


def test_min_completion_length_forces_the_length_bench_vs_trl_compares(tiny, tmp_path):
    """With the end token made near-certain, completions stop at once; min_completion_length holds it off
    for exactly that many tokens (bench/vs_trl.py sets min = max: every completion max long, truncated)."""
    from conftest import write_square_video

    model, processor = tiny
    eos = processor.tokenizer.eos_token_id
    batch = make_batch(processor, write_square_video(tmp_path / "v.mp4"))
    suppress = vision_token_ids(processor.tokenizer)

    def eos_likely(module, inputs, output):
        output[..., eos] += 100.0
        return output

    handle = model.get_output_embeddings().register_forward_hook(eos_likely)
    try:
        torch.manual_seed(0)
        free = generate_rollouts(model, processor, batch, ALGO, suppress)
        held = generate_rollouts(
            model, processor, batch, OmegaConf.merge(ALGO, {"min_completion_length": 5}), suppress
        )
        full = OmegaConf.merge(ALGO, {"min_completion_length": 20})
        equal = generate_rollouts(model, processor, batch, full, suppress)
    finally:
        handle.remove()
    assert free.completion_mask.sum(1).tolist() == [1] * 6  # the end token first
    assert held.completion_mask.sum(1).tolist() == [6] * 6  # 5 tokens, then the end token
    assert (held.completion_ids[:, :5] != eos).all() and (held.completion_ids[:, 5] == eos).all()
    assert equal.completion_mask.sum(1).tolist() == [20] * 6 and equal.truncated.all()


def test_min_completion_length_longer_than_the_limit_fails_at_start():
    from visd_exp.algorithms import build_algorithm

    with pytest.raises(ValueError, match="min_completion_length must be in"):
        build_algorithm(compose_train([*FAST, "algorithm.min_completion_length=97"]))  # FAST: max 96


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_teacher_current_reuses_the_students_image_features(case, monkeypatch, dtype):
    """teacher=current: the replay takes the student forward's image features (detached) instead of encoding
    the same frames with the same weights again: one vision pass per micro-batch instead of two, and the
    same Delta_t, loss and gradients, in fp32 and under bf16 autocast (the features keep its dtype)."""
    model, _, rollouts, inputs, advantages = case
    C = rollouts.completion_ids.shape[1]
    calls = []
    real = model.get_image_features

    def counted(*args, **kwargs):
        calls.append(kwargs.get("return_dict"))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "get_image_features", counted)

    def run(shares: bool):
        calls.clear()
        forward = lambda x, images, features=None: teacher_states(model, x, C, images, features)  # noqa: E731
        replay = TeacherReplay(inputs, forward, CREDIT, lam=0.5, shares_student_vision=shares)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = policy_update(
                model, rollouts, advantages, temperature=0.9, epsilon=0.2, micro_batch_size=3, replay=replay
            )
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out, grads, len(calls)

    apart, apart_grads, apart_calls = run(False)
    shared, shared_grads, shared_calls = run(True)
    assert (apart_calls, shared_calls) == (4, 2)  # 2 micro-batches: student + teacher each, or student only
    assert apart.delta.abs().max() > 1e-3  # the teacher (at lambda 0.5, with a privileged block) moves Delta
    torch.testing.assert_close(shared.delta, apart.delta, atol=1e-6, rtol=0)
    assert abs(shared.loss.item() - apart.loss.item()) < 1e-6
    assert any(k.startswith("model.visual") for k in shared_grads)  # the vision tower still gets its gradient
    worst = max((shared_grads[k] - apart_grads[k]).abs().max().item() for k in apart_grads)
    assert worst < 1e-6, worst


def test_teacher_prompts_are_rendered_once_per_prompt_and_block(tiny, case, monkeypatch):
    """The G rows of a prompt (the same sample object) with the same privileged block share one rendering;
    rows with their own feedback are rendered apiece; the inputs equal rendering every row."""
    import visd_exp.teacher.replay as replay

    _, processor = tiny
    _, _, rollouts, _, _ = case
    samples = [s for s in case_samples() for _ in range(3)]
    grids = list(torch.split(rollouts.image_grid_thw, rollouts.images_per_row))
    rendered = []
    real = replay.render_prompt
    monkeypatch.setattr(replay, "render_prompt", lambda *a: rendered.append(1) or real(*a))
    same = [privileged_block("B", None, None)] * 6
    shared = teacher_inputs(processor, rollouts, samples, same, grids)
    assert len(rendered) == 2  # two prompts
    apiece = teacher_inputs(processor, rollouts, [dict(s) for s in samples], same, grids)  # copies: 6
    assert len(rendered) == 2 + 6
    assert all(torch.equal(shared[k], apiece[k]) for k in shared)
    teacher_inputs(
        processor, rollouts, samples, [privileged_block("B", None, f"note {i}") for i in range(6)], grids
    )
    assert len(rendered) == 2 + 6 + 6  # each row's own feedback


def case_samples() -> list[dict]:
    """The case's two prompts' records, as the fixture built them (8 and 5 frames)."""
    return [
        {"question": "When is it visible?", "task": "temporal_grounding", "answer": "B", "segment": [2.0, 5.0],
         "frame_times": [i * 1.0 for i in range(8)], "video_duration": 8.0},
        {"question": "What colour? " * 6, "task": "temporal_grounding", "answer": "B", "segment": [2.0, 5.0],
         "frame_times": [i * 1.6 for i in range(5)], "video_duration": 8.0},
    ]  # fmt: skip


def test_student_goes_first_only_while_the_judges_feedback_is_pending(case):
    """With the teacher's inputs still to build (a remote judge's feedback on its way) the first micro-batch
    runs the student first, so the judge's calls overlap its forward, then builds the inputs once; every
    other micro-batch, and every one when the inputs are ready, runs the teacher first. Same results."""
    model, teacher, rollouts, inputs, advantages = case
    C = rollouts.completion_ids.shape[1]
    events = []

    def build_inputs():
        events.append("inputs")
        return inputs

    def teacher_forward(x, images, features=None):
        events.append("teacher")
        return teacher_states(teacher, x, C, images, features)

    def run(replay_inputs):
        events.clear()
        replay = TeacherReplay(replay_inputs, teacher_forward, CREDIT, lam=0.5)
        out = policy_update(
            model, rollouts, advantages, temperature=0.9, epsilon=0.2, micro_batch_size=3, replay=replay
        )
        model.zero_grad(set_to_none=True)
        return out, list(events)

    handle = model.model.register_forward_pre_hook(lambda *a: events.append("student"))  # the backbone
    try:
        pending, pending_order = run(build_inputs)
        ready, ready_order = run(inputs)
    finally:
        handle.remove()
    assert pending_order == ["student", "inputs", "teacher", "teacher", "student"]
    assert ready_order == ["teacher", "student", "teacher", "student"]
    torch.testing.assert_close(pending.delta, ready.delta, atol=0, rtol=0)
    assert pending.loss.item() == ready.loss.item()


# -- gradient accumulation across batches, through the training loop -----------------------------------


def fixed_completions(sample: dict, G: int) -> list[str]:
    """G completions with different rewards (format, answer), the same whatever the batch."""
    answer = sample["answer"]
    texts = [
        f"<think>I look at the frames.</think><answer>{answer}</answer>",
        f"<answer>{answer}</answer>",
        "<think>Hard to say.</think><answer>none</answer>",
        "no idea",
    ]
    return texts[:G]


def fixed_rollouts(model, processor, batch, cfg, suppress_ids):
    """Rollouts that depend only on each prompt (not on what else is in the batch, nor on the RNG)."""
    from visd_exp.rollout.generation import RolloutBatch, completion_mask_from

    tok, G, C = processor.tokenizer, cfg.num_generations, cfg.max_completion_length
    inputs = repeat_prompts(batch, G)
    texts = [t for s in batch["samples"] for t in fixed_completions(s, G)]
    ids = torch.full((len(texts), C), tok.pad_token_id)
    for i, text in enumerate(texts):
        row = (tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:C]
        ids[i, : len(row)] = torch.tensor(row)
    mask, truncated = completion_mask_from(ids, tok.eos_token_id)
    return RolloutBatch(
        prompt_ids=inputs["input_ids"],
        prompt_mask=inputs["attention_mask"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
        completion_ids=ids,
        completion_mask=mask,
        old_logprobs=torch.zeros(ids.shape),  # recomputed (algorithm.old_logprobs=recompute)
        truncated=truncated,
        texts=tok.batch_decode(ids, skip_special_tokens=True),
        images_per_row=[len(g) for g in batch["image_grid_thw"] for _ in range(G)],
    )


def accumulated_gradient(cache_dir, out_dir, monkeypatch, batch_size: int, accumulate: int):
    """Run one optimizer step; return (gradient at the step, optimizer steps, training batches)."""
    import visd_exp.module as module
    import visd_exp.rollout.generation as generation
    from visd_exp.train import train

    monkeypatch.setattr(generation, "generate_rollouts", fixed_rollouts)
    # SFTModule (the warm start, when this test builds it) binds VISDModule's optimizer step at import:
    # import it before the spy replaces that step, or the warm start's steps are counted too
    import visd_exp.sft  # noqa: F401

    steps, batches = [], []

    def step_spy(self, optimizer, scheduler):
        steps.append({n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None})
        return REAL_STEP(self, optimizer, scheduler)

    def batch_spy(self, batch, batch_idx):
        batches.append(len(batch["samples"]))
        return REAL_BATCH(self, batch, batch_idx)

    monkeypatch.setattr(module.VISDModule, "take_optimizer_step", step_spy)
    monkeypatch.setattr(module.VISDModule, "training_step", batch_spy)
    cfg = compose_train(
        FAST
        + shared_paths(cache_dir, out_dir)
        + [
            f"paths.output_dir={out_dir}",
            "logger=csv",
            "+experiment=ema_topk",
            "trainer.max_steps=1",
            f"data.batch_size={batch_size}",
            f"optim.accumulate_grad_batches={accumulate}",
            "algorithm.old_logprobs=recompute",
            "algorithm.max_completion_length=24",
            "callbacks.validation.every_n_steps=0",
            "dumps.credit_every_n_steps=0",
            "save_hf_model=false",
        ]
    )
    train(cfg)
    return steps, batches


def test_two_batches_accumulated_equal_one_step_on_both_prompts(cache_dir, tmp_path, monkeypatch):
    joint_steps, joint_batches = accumulated_gradient(cache_dir, tmp_path / "joint", monkeypatch, 2, 1)
    acc_steps, acc_batches = accumulated_gradient(cache_dir, tmp_path / "acc", monkeypatch, 1, 2)
    assert joint_batches == [2] and acc_batches == [1, 1]  # the same two prompts
    assert len(joint_steps) == 1 and len(acc_steps) == 1  # the optimizer stepped once
    (joint,), (acc,) = joint_steps, acc_steps
    assert joint.keys() == acc.keys()
    assert max(g.abs().max().item() for g in joint.values()) > 1e-4  # a real gradient
    worst = max((joint[k] - acc[k]).abs().max().item() for k in joint)
    assert worst < 1e-5, worst
