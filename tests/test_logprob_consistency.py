"""Acceptance: the sampled tokens' log-probs at generation time equal the training forward's to 1e-4.

Every importance ratio in the objective depends on this. The batch mixes prompts of different
lengths (left padding, different mrope offsets) and frame counts, in fp32.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from visd_exp.data.datamodule import collate_prompts, encode_prompt, prompt_text
from visd_exp.data.frames import decode_frames, plan_frames, probe_video
from visd_exp.models import vision_token_ids
from visd_exp.rollout.generation import RolloutBatch, generate_rollouts, policy_logprobs

ALGO = OmegaConf.create(
    {"num_generations": 3, "temperature": 0.9, "top_p": 1.0, "top_k": 0, "max_completion_length": 20}
)


def make_batch(processor, video, frame_counts=(8, 5), questions=("When is it visible?", "What colour? " * 6)):
    items = []
    for n_frames, question in zip(frame_counts, questions):
        cfg = OmegaConf.create(
            {
                "fps": n_frames / 8.0,
                "min_frames": 1,
                "max_frames": 16,
                "min_pixels": 784,
                "max_pixels": 100352,
                "total_pixels": 401408,
            }
        )
        plan = plan_frames(probe_video(video), cfg)
        frames = decode_frames(video, plan)
        record = {"question": question, "task": "temporal_grounding"}
        text = prompt_text(processor, record, plan)
        items.append(
            {**encode_prompt(processor, text, frames), "sample": record, "frames": frames, "text": text}
        )
    return collate_prompts(items, processor.tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def rollouts(tiny, tmp_path_factory) -> RolloutBatch:
    from conftest import write_square_video

    model, processor = tiny
    video = write_square_video(tmp_path_factory.mktemp("v") / "v.mp4")
    batch = make_batch(processor, video)
    assert batch["attention_mask"][1].eq(0).any(), "the second prompt must be left-padded"
    torch.manual_seed(0)
    return generate_rollouts(model, processor, batch, ALGO, vision_token_ids(processor.tokenizer))


def test_generation_and_training_logprobs_agree(tiny, rollouts):
    model, _ = tiny
    with torch.no_grad():
        logprobs, _ = policy_logprobs(model, rollouts, ALGO.temperature)
    mask = rollouts.completion_mask.bool()
    assert mask.sum() > 0
    diff = (logprobs - rollouts.old_logprobs)[mask].abs().max().item()
    assert diff < 1e-4, diff


def test_mm_token_type_ids_matter(tiny, rollouts):
    """Without mm_token_type_ids the model silently uses 1-D positions: the check above would fail."""
    model, _ = tiny
    inputs = rollouts.model_inputs()
    inputs.pop("mm_token_type_ids")
    with torch.no_grad():
        out = model(**inputs, logits_to_keep=rollouts.completion_ids.shape[1] + 1, use_cache=False)
    logits = out.logits[:, :-1].float() / ALGO.temperature
    lp = torch.log_softmax(logits, -1).gather(-1, rollouts.completion_ids[..., None])[..., 0]
    mask = rollouts.completion_mask.bool()
    assert (lp - rollouts.old_logprobs)[mask].abs().max().item() > 1e-3


def test_rollout_layout(tiny, rollouts):
    _, processor = tiny
    n = 2 * ALGO.num_generations
    assert rollouts.completion_ids.shape[0] == n and len(rollouts.texts) == n
    # rows of one prompt are contiguous and share the prompt
    assert torch.equal(rollouts.prompt_ids[0], rollouts.prompt_ids[2])
    assert not torch.equal(rollouts.prompt_ids[0], rollouts.prompt_ids[3])
    # never a vision token in a completion
    for token in vision_token_ids(processor.tokenizer):
        assert not (rollouts.completion_ids == token).any()
    # mask: contiguous from the start, ending at the end token; truncated rows have none and are fully masked
    eos = processor.tokenizer.eos_token_id
    for ids, row, truncated in zip(rollouts.completion_ids, rollouts.completion_mask, rollouts.truncated):
        length = int(row.sum())
        assert row[:length].all() and not row[length:].any()
        if truncated:
            assert length == ALGO.max_completion_length and eos not in ids.tolist()
        else:
            assert ids[length - 1] == eos
