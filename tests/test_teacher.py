"""Teacher variants, the privileged block, and token-for-token alignment of the teacher replay."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from visd_exp.data.prompts import render_prompt
from visd_exp.judge import evidence_from_sample
from visd_exp.teacher import build_teacher, privileged_block, teacher_inputs, teacher_logits
from visd_exp.teacher.replay import expand_and_tokenize


def small_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))


def test_ema_update_is_eq_8():
    student = small_net()
    teacher = build_teacher(OmegaConf.create({"name": "ema", "rate": 0.01}), student)
    before = [p.clone() for p in teacher.copy.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.after_optimizer_step(student, step=1)
    for t, b, s in zip(teacher.copy.parameters(), before, student.parameters()):
        assert torch.allclose(t, 0.99 * b + 0.01 * s, atol=1e-7)


def test_sync_refreshes_every_n_steps_only():
    student = small_net()
    teacher = build_teacher(OmegaConf.create({"name": "sync", "every_n_steps": 3}), student)
    initial = copy.deepcopy(teacher.copy.state_dict())
    with torch.no_grad():
        student[0].weight.add_(1.0)
    for step in (1, 2):
        teacher.after_optimizer_step(student, step)
        assert torch.equal(teacher.copy[0].weight, initial["0.weight"])  # frozen between syncs
    teacher.after_optimizer_step(student, 3)
    assert torch.equal(teacher.copy[0].weight, student[0].weight)


def test_current_teacher_is_the_student_without_a_copy():
    student = small_net()
    teacher = build_teacher(OmegaConf.create({"name": "current"}), student)
    assert teacher.copy is None and teacher.model(student) is student
    assert sum(1 for _ in teacher.parameters()) == 0
    assert build_teacher(OmegaConf.create({"name": "none"}), student) is None


def test_teacher_copy_never_trains_and_gets_no_grad():
    student = small_net()
    teacher = build_teacher(OmegaConf.create({"name": "ema", "rate": 0.01}), student)
    teacher.train(True)
    assert not teacher.copy.training
    assert all(not p.requires_grad for p in teacher.copy.parameters())
    out = student(torch.randn(2, 3)).sum() + teacher.copy(torch.randn(2, 3)).sum()
    out.backward()
    assert all(p.grad is None for p in teacher.copy.parameters())


def test_privileged_block_carries_answer_evidence_and_feedback():
    sample = {
        "answer": "From <t>2.0</t>s to <t>5.0</t>s",
        "segment": [2, 5],
        "image_size": [56, 56],
        "frame_size": [112, 112],
        "key_frames": [{"idx": 12, "time": 3.0}],
        "key_items": {"12": {"red square": [[8, 8, 32, 32]]}},
    }
    block = privileged_block(sample["answer"], evidence_from_sample(sample), "The end time is late.")
    assert "Verified answer: From <t>2.0</t>s to <t>5.0</t>s" in block
    assert "segment 2.0-5.0 s" in block and "at 3.0 s: red square [16,16,64,64]" in block  # scaled 2x
    assert "Feedback on this response: The end time is late." in block
    assert "Feedback" not in privileged_block(sample["answer"], evidence_from_sample(sample), None)


@pytest.fixture(scope="module")
def replay_setup(tiny, tmp_path_factory):
    from conftest import write_square_video
    from test_logprob_consistency import ALGO, make_batch
    from visd_exp.models import vision_token_ids
    from visd_exp.rollout.generation import generate_rollouts

    model, processor = tiny
    video = write_square_video(tmp_path_factory.mktemp("v") / "v.mp4")
    batch = make_batch(processor, video)
    for sample, times in zip(batch["samples"], ([i * 1.0 for i in range(8)], [i * 1.6 for i in range(5)])):
        sample.update(
            {
                "frame_times": times,
                "video_duration": 8.0,
                "answer": "From <t>2.0</t>s to <t>5.0</t>s",
                "segment": [2.0, 5.0],
            }
        )
    torch.manual_seed(1)
    rollouts = generate_rollouts(model, processor, batch, ALGO, vision_token_ids(processor.tokenizer))
    G = ALGO.num_generations
    samples = [s for s in batch["samples"] for _ in range(G)]
    grids = [g for g in batch["image_grid_thw"] for _ in range(G)]
    return model, processor, batch, rollouts, samples, grids


def test_teacher_prompt_tokens_match_the_processor(replay_setup):
    _, processor, batch, _, samples, _ = replay_setup
    for i, sample in enumerate(batch["samples"]):
        text = render_prompt(
            processor, sample, sample["frame_times"], sample["video_duration"], "Verified answer: B"
        )
        frames = batch["frames"][i]
        want = processor(
            text=[text],
            images=[list(frames)],
            return_tensors="pt",
            do_resize=False,
            return_mm_token_type_ids=True,
        )
        ids, types = expand_and_tokenize(processor, text, batch["image_grid_thw"][i])
        assert ids == want["input_ids"][0].tolist()
        assert types == want["mm_token_type_ids"][0].tolist()


def test_replay_without_privileged_block_reproduces_the_student(replay_setup):
    """The teacher input ends with the same completion tokens; with no block the teacher IS the student."""
    model, processor, _, rollouts, samples, grids = replay_setup
    inputs = teacher_inputs(processor, rollouts, samples, [None] * len(samples), grids)
    C = rollouts.completion_ids.shape[1]
    assert torch.equal(inputs["input_ids"][:, -C:], rollouts.completion_ids)
    student = rollouts.model_inputs()
    assert torch.equal(inputs["input_ids"], student["input_ids"])
    assert torch.equal(inputs["mm_token_type_ids"], student["mm_token_type_ids"])
    t = torch.log_softmax(teacher_logits(model, inputs, C).float() / 0.9, -1)
    lp = t.gather(-1, rollouts.completion_ids[..., None])[..., 0]
    mask = rollouts.completion_mask.bool()
    assert (lp - rollouts.old_logprobs)[mask].abs().max() < 1e-4


def test_replay_with_privileged_block_lines_up_token_for_token(replay_setup):
    model, processor, _, rollouts, samples, grids = replay_setup
    blocks = [
        privileged_block(s["answer"], evidence_from_sample(s), f"feedback {i}") for i, s in enumerate(samples)
    ]
    inputs = teacher_inputs(processor, rollouts, samples, blocks, grids)
    C = rollouts.completion_ids.shape[1]
    student = rollouts.model_inputs()
    assert inputs["input_ids"].shape[1] > student["input_ids"].shape[1]  # the block adds tokens
    assert torch.equal(inputs["input_ids"][:, -C:], rollouts.completion_ids)
    assert torch.equal(inputs["attention_mask"][:, -C:], rollouts.completion_mask)
    # both prompts end with the same assistant header right before the completion
    header = processor.tokenizer("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for row_t, row_s in zip(inputs["input_ids"], student["input_ids"]):
        assert row_t[-C - len(header) : -C].tolist() == header == row_s[-C - len(header) : -C].tolist()
    logits = teacher_logits(model, inputs, C)
    assert logits.shape[:2] == rollouts.completion_ids.shape and torch.isfinite(logits).all()
    assert not logits.requires_grad
