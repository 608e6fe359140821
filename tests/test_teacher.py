"""Teacher variants, the privileged block, and token-for-token alignment of the teacher replay."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from visd_exp.data.prompts import render_prompt
from visd_exp.judge import evidence_from_sample
from visd_exp.teacher import build_teacher, privileged_block, teacher_inputs, teacher_states
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
    from visd_exp.step_forward import teacher_terms

    states = teacher_states(model, inputs, C)
    sampled = OmegaConf.create({"name": "sampled_token", "eps_w": 0.2, "chunk_size": 16})
    terms = teacher_terms(sampled, states, rollouts.completion_ids, rollouts.completion_mask, 0.9)
    lp = terms.logit_y - terms.lse  # log q(y_t) at temperature 0.9
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
    states = teacher_states(model, inputs, C)  # hidden states [N, C, H] scoring the completion tokens
    assert states.hidden.shape[:2] == rollouts.completion_ids.shape and torch.isfinite(states.hidden).all()
    assert not states.hidden.requires_grad and states.head is model.get_output_embeddings()


# ---------------------------------------------------------------- a teacher told a* agrees with a correct answer
MARKER = "Verified answer:"  # the line privileged_block writes (teacher/context.py)
ALPHA, K = 3.0, 4  # the copy logit; top-K size
DELTA_AGREE = ALPHA + math.log(K) - math.log(math.exp(ALPHA) + K - 1)  # y = a*_k in TopK: |U| = K
DELTA_DISAGREE = math.log(K + 1) - math.log(math.exp(ALPHA) + K)  # y != a*_k, outside TopK: |U| = K + 1


class AnswerCopyLM(torch.nn.Module):
    """A deterministic causal LM with one skill: copying a reference answer it has read.

    At position p (predicting token p + 1) it looks only at its context x_<=p. If the context holds the
    line "Verified answer: X" and, after it, an answer opener <answer> at position o <= p, it gives logit
    ALPHA to token k = p - o of X (X's text tokenized as the completion writes it, without the space after
    the colon). Every other logit is 0, so with no such line in its context it is uniform. Student and
    teacher are this one network; only the context differs, as in VISD. Hand values on the teacher top-K
    support U (ties at logit 0 go to the lowest ids, which the answer tokens are not among), with the
    student uniform: Delta = ALPHA + log K - log(e^ALPHA + K - 1) on a token that equals a*_k and
    log(K + 1) - log(e^ALPHA + K) on one that does not (Eq. 21-22); 0 everywhere else.

    Laid out as Qwen2.5-VL is: `model` (the language model: here its "hidden states" are those logits)
    and an output layer (here the identity), so the replay takes its chunked path through it.
    """

    def __init__(self, tokenizer):
        super().__init__()
        self.model = CopyBackbone(tokenizer)
        self.lm_head = torch.nn.Identity()

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, attention_mask, logits_to_keep, **_):
        logits = self.lm_head(self.model(input_ids, attention_mask)[0])
        return SimpleNamespace(logits=logits[:, -logits_to_keep:])


class CopyBackbone(torch.nn.Module):
    """AnswerCopyLM's language model: [n, L, V] "hidden states" that are its logits (ALPHA or 0)."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.vocab_size = len(tokenizer)
        self.marker = tokenizer(MARKER, add_special_tokens=False)["input_ids"]
        self.opener = tokenizer.convert_tokens_to_ids("<answer>")

    def copy_target(self, context: list[int]) -> int | None:
        """The token this model copies next, from the context x_<=p alone (None: no copy)."""
        m = len(self.marker)
        ends = [i for i in range(m - 1, len(context)) if context[i - m + 1 : i + 1] == self.marker]
        if not ends:
            return None
        openers = [i for i in range(ends[-1] + 1, len(context)) if context[i] == self.opener]
        if not openers:
            return None
        line = self.tokenizer.decode(context[ends[-1] + 1 : openers[-1]]).split("\n")[0].strip()
        reference = self.tokenizer(line, add_special_tokens=False)["input_ids"]
        k = len(context) - 1 - openers[-1]  # answer tokens written so far
        return reference[k] if k < len(reference) else None

    def forward(self, input_ids, attention_mask, **_):
        n, length = input_ids.shape
        logits = torch.zeros(n, length, self.vocab_size)
        for b in range(n):
            keep = attention_mask[b].bool()
            positions = keep.nonzero()[:, 0].tolist()
            ids = input_ids[b][keep].tolist()  # the row without padding; its j-th token sits at positions[j]
            for j, p in enumerate(positions):
                target = self.copy_target(ids[: j + 1])
                if target is not None:
                    logits[b, p, target] = ALPHA
        return (logits,)


def copy_case(processor):
    """Two prompts x G = 2 rollouts (a correct and a wrong answer each), student prompts built the data
    module's way (render_prompt + processor on real frames), completions tokenized as the policy writes."""
    from visd_exp.data.datamodule import collate_prompts, encode_prompt
    from visd_exp.rollout.generation import RolloutBatch, completion_mask_from, repeat_prompts

    tok = processor.tokenizer
    cases = [
        (
            {"question": "Which colour is the square? A. green B. red C. blue", "task": "multiple_choice"},
            "B",
            ["B", "C"],
        ),
        (
            {
                "question": "When is the red square visible?",
                "task": "temporal_grounding",
                "segment": [2.0, 5.0],
            },
            "From <t>2.0</t>s to <t>5.0</t>s",
            ["From <t>2.0</t>s to <t>5.0</t>s", "From <t>6.0</t>s to <t>7.0</t>s"],
        ),
    ]
    frames = torch.zeros(2, 3, 56, 56, dtype=torch.uint8)  # two 56 x 56 frames: 4 vision tokens each
    frames[1, 0, 8:32, 8:32] = 255
    items, answers = [], []
    for record, answer, rollout_answers in cases:
        sample = {**record, "answer": answer, "frame_times": [1.0, 3.0], "video_duration": 8.0}
        sample["frame_size"] = sample["image_size"] = [56, 56]
        text = render_prompt(processor, sample, sample["frame_times"], sample["video_duration"])
        items.append(
            {**encode_prompt(processor, text, frames), "sample": sample, "frames": frames, "text": text}
        )
        answers += rollout_answers
    batch = collate_prompts(items, tok.pad_token_id)
    inputs = repeat_prompts(batch, 2)
    texts = [f"<think>I compare the frames.</think><answer>{a}</answer>" for a in answers]
    rows = [tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for text in texts]
    completion = torch.full((len(rows), max(map(len, rows))), tok.pad_token_id)
    for i, row in enumerate(rows):
        completion[i, : len(row)] = torch.tensor(row)
    mask, truncated = completion_mask_from(completion, tok.eos_token_id)
    rollouts = RolloutBatch(
        prompt_ids=inputs["input_ids"],
        prompt_mask=inputs["attention_mask"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        pixel_values=inputs["pixel_values"],
        image_grid_thw=inputs["image_grid_thw"],
        completion_ids=completion,
        completion_mask=mask,
        old_logprobs=torch.zeros(completion.shape),
        truncated=truncated,
        texts=tok.batch_decode(completion, skip_special_tokens=True),
    )
    samples = [s for s in batch["samples"] for _ in range(2)]
    grids = [g for g in batch["image_grid_thw"] for _ in range(2)]
    return rollouts, samples, grids, answers


def test_teacher_told_the_answer_raises_delta_on_a_correct_answer_and_lowers_it_on_a_wrong_one(tiny):
    """Through the real replay path: privileged_block (a*, e, f) -> teacher_inputs -> teacher_states and its
    top-K terms, the student's policy_logprobs at that support, Delta (Eq. 3-4), then m_t and A^_t (Eq. 5-7).

    Fails if a* is missing from the teacher's context (Delta = 0 on the answers), if the replay is off by a
    token (the copy lands on a neighbour), or if Delta's sign is flipped (teacher minus student)."""
    from visd_exp.credit import token_advantages, token_weights
    from visd_exp.credit.lean import log_ratio_from_terms
    from visd_exp.objectives import group_advantages
    from visd_exp.rollout.generation import policy_logprobs
    from visd_exp.step_forward import teacher_terms

    _, processor = tiny
    tok = processor.tokenizer
    model = AnswerCopyLM(tok)
    rollouts, samples, grids, answers = copy_case(processor)
    feedback = ["The answer is right.", "The answer is wrong.", "The span is right.", "The span is late."]
    blocks = [privileged_block(s["answer"], evidence_from_sample(s), f) for s, f in zip(samples, feedback)]
    C = rollouts.completion_ids.shape[1]
    completion, valid = rollouts.completion_ids, rollouts.completion_mask
    credit = OmegaConf.create({"name": "topk", "k": K, "eps_w": 0.2, "chunk_size": 16})

    def replay_delta(teacher_blocks) -> torch.Tensor:
        """Delta_t as policy_update takes it: the teacher's terms, then the student's pass at their support."""
        states = teacher_states(model, teacher_inputs(processor, rollouts, samples, teacher_blocks, grids), C)
        t_terms = teacher_terms(credit, states, completion, valid, 1.0)
        _, student = policy_logprobs(model, rollouts, temperature=1.0, teacher=t_terms)
        return log_ratio_from_terms(t_terms, student.terms, completion, valid)

    delta = replay_delta(blocks)
    tokens = completion.masked_fill(valid == 0, -100)

    # the expected Delta, from where each rollout writes its answer and what a* is
    want = torch.zeros(tokens.shape)
    answer_at = []
    for i, (sample, written) in enumerate(zip(samples, answers)):
        ids = tokens[i].tolist()
        start = ids.index(tok.convert_tokens_to_ids("<answer>")) + 1
        written_ids = tok(written, add_special_tokens=False)["input_ids"]
        reference = tok(sample["answer"], add_special_tokens=False)["input_ids"]
        assert ids[start : start + len(written_ids)] == written_ids and len(written_ids) == len(reference)
        assert min(written_ids) >= K  # not among the tied lowest ids of the teacher top-K
        for k, (y, a) in enumerate(zip(written_ids, reference)):
            want[i, start + k] = DELTA_AGREE if y == a else DELTA_DISAGREE
        answer_at.append(slice(start, start + len(written_ids)))
    torch.testing.assert_close(delta, want, atol=1e-5, rtol=0)

    # in words: the correct rollouts' answer tokens gain, the wrong answers lose where they depart from a*
    assert DELTA_AGREE > 0 > DELTA_DISAGREE
    correct_mc, wrong_mc, correct_span, wrong_span = (delta[i, answer_at[i]] for i in range(4))
    assert (correct_mc > 0).all() and (wrong_mc < 0).all() and (correct_span > 0).all()
    departs = torch.tensor(
        [y != a for y, a in zip(*(tok(x, add_special_tokens=False)["input_ids"] for x in answers[2:]))]
    )
    assert departs.sum() == 2 and (wrong_span[departs] < 0).all()  # the digits 6 and 7 (a*: 2 and 5)
    assert (wrong_span[~departs] > 0).all()  # "From <t>", ".0</t>s to": written as a* writes them

    # without the privileged block the same network is the student: no credit anywhere
    assert torch.equal(replay_delta([None] * 4), torch.zeros(tokens.shape))

    # rewards 1 / 0 in each group: the answer tokens get the largest weight of their rollout, m = 1 + eps_w,
    # whether the rollout is reinforced (A > 0, Delta > 0) or suppressed (A < 0, Delta < 0)
    adv = group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 2)
    m = token_weights(delta, adv, eps_w=0.2)
    a_hat = token_advantages(adv, m, lam=0.5)
    for i in (0, 1):
        assert torch.allclose(m[i, answer_at[i]], torch.tensor(1.2))
        assert (m[i, : answer_at[i].start] == 1).all()  # Delta = 0 before the answer: m = 1
        assert a_hat[i, answer_at[i]].abs().item() == pytest.approx(abs(adv[i].item()) * 1.1, rel=1e-6)
