"""One vision pass per distinct prompt (models/shared_vision.py): the same logits and the same gradients as
encoding every rollout's copy of the frames, in fp32 and bf16; rows with other frames are encoded alone."""

from __future__ import annotations

import copy

import pytest
import torch

from test_logprob_consistency import ALGO, make_batch
from visd_exp.models import vision_token_ids
from visd_exp.models.shared_vision import forward_with_shared_vision, image_sources, row_slices
from visd_exp.rollout.generation import generate_rollouts


@pytest.fixture(scope="module")
def rollouts(tiny, tmp_path_factory):
    """2 prompts with 8 and 5 frames x G = 3 rollouts: rows 0-2 share frames, rows 3-5 share theirs."""
    from conftest import write_square_video

    model, processor = tiny
    video = write_square_video(tmp_path_factory.mktemp("v") / "v.mp4")
    batch = make_batch(processor, video)
    torch.manual_seed(0)
    return generate_rollouts(model, processor, batch, ALGO, vision_token_ids(processor.tokenizer))


def test_image_sources_find_the_repeats_and_only_them(rollouts):
    pv, grids, per_row = rollouts.pixel_values, rollouts.image_grid_thw, rollouts.images_per_row
    assert per_row == [8, 8, 8, 5, 5, 5]
    assert image_sources(pv, grids, per_row) == [0, 0, 0, 3, 3, 3]
    images, pixels = row_slices(grids, per_row)
    assert images[3] == slice(24, 29) and pixels[5].stop == pv.shape[0]
    # row 1 shows other frames (e.g. T-GRPO's shuffled rollouts): its own pass; row 2 then differs from the
    # previous distinct row (1), so it is encoded too: only contiguous repeats are shared
    shuffled = pv.clone()
    shuffled[pixels[1]] = shuffled[pixels[1]] + 0.5
    assert image_sources(shuffled, grids, per_row) == [0, 1, 2, 3, 3, 3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_logits_and_gradients_equal_encoding_every_copy(tiny, rollouts, dtype):
    model, _ = tiny
    model = copy.deepcopy(model).to(dtype).train()
    inputs = rollouts.model_inputs()
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    C = rollouts.completion_ids.shape[1]
    calls = []
    model.model.visual.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))

    def run(shared: bool):
        model.zero_grad(set_to_none=True)
        if shared:
            out = forward_with_shared_vision(model, inputs, rollouts.images_per_row, logits_to_keep=C + 1)
        else:
            out = model(**inputs, logits_to_keep=C + 1)
        (out.logits.float() * torch.linspace(-1, 1, out.logits.shape[-1])).sum().backward()
        grads = {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.logits.detach().float(), grads

    plain_logits, plain_grads = run(shared=False)
    shared_logits, shared_grads = run(shared=True)
    patches = rollouts.pixel_values.shape[0]
    assert calls == [patches, patches // 3]  # every copy, then one per prompt (both prompts' rows are G = 3)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 0.05, "rtol": 0.02}
    torch.testing.assert_close(shared_logits, plain_logits, **tol)
    assert shared_grads.keys() == plain_grads.keys()
    vision = [n for n in plain_grads if ".visual." in n]
    assert vision and all(plain_grads[n].abs().sum() > 0 for n in vision)  # the vision tower is trained
    for name in plain_grads:
        scale = plain_grads[name].abs().max().clamp(min=1e-6)
        err = (shared_grads[name] - plain_grads[name]).abs().max() / scale
        # bf16: 0.1 of the gradient's scale; the patch embedding's weight gradient, a bf16 reduction over every
        # patch (3 times fewer when shared), measured 0.19 under transformers 5.19.0 (0.005 or less elsewhere;
        # the fp32 case above holds it to 1e-4, so the sharing itself is exact)
        bound = 1e-4 if dtype == torch.float32 else (0.25 if "patch_embed" in name else 0.1)
        assert err < bound, name


def test_rows_that_all_differ_take_the_plain_path(tiny, rollouts):
    model, _ = tiny
    part = rollouts.select(slice(2, 4))  # one row of each prompt
    inputs = part.model_inputs()
    with torch.no_grad():
        plain = model(**inputs, logits_to_keep=4).logits
        shared = forward_with_shared_vision(model, inputs, part.images_per_row, logits_to_keep=4).logits
    assert torch.equal(plain, shared)


def test_the_rollouts_prefill_encodes_each_prompt_once(tiny, tmp_path):
    from conftest import write_square_video

    model, processor = tiny
    batch = make_batch(processor, write_square_video(tmp_path / "v.mp4"))
    patches = []
    handle = model.model.visual.register_forward_hook(lambda m, args, out: patches.append(args[0].shape[0]))
    try:
        torch.manual_seed(0)
        rollouts = generate_rollouts(model, processor, batch, ALGO, vision_token_ids(processor.tokenizer))
    finally:
        handle.remove()
    assert patches == [sum(pv.shape[0] for pv in batch["pixel_values"])]  # once, not G times
    assert rollouts.pixel_values.shape[0] == ALGO.num_generations * patches[0]  # the update still gets rows


def test_under_zero3_every_rank_encodes_outside_the_forward_even_with_nothing_to_share(tiny, rollouts):
    """Whether rows repeat can differ between ranks; the partitioned vision tower must be reached at the
    same point on all of them, so a partitioned model always takes the shared path."""
    from visd_exp.models.shared_vision import shared_image_features

    model, _ = tiny
    part = rollouts.select(slice(2, 4))  # rows with different frames: nothing to share
    pv, grids = part.pixel_values, part.image_grid_thw
    assert shared_image_features(model, pv, grids, part.images_per_row) is None
    zero3 = copy.deepcopy(model)
    for p in zero3.parameters():
        p.ds_id = 0  # what DeepSpeed ZeRO-3 marks partitioned parameters with
    shared = shared_image_features(zero3, pv, grids, part.images_per_row)
    assert shared is not None and len(shared["image"].pooler_output) == sum(part.images_per_row)
    single = rollouts.select(slice(0, 1))
    assert shared_image_features(zero3, single.pixel_values, single.image_grid_thw, [8]) is not None
    with torch.no_grad():
        plain = model(**part.model_inputs(), logits_to_keep=4).logits
        got = forward_with_shared_vision(
            zero3, part.model_inputs(), part.images_per_row, logits_to_keep=4
        ).logits
    torch.testing.assert_close(got, plain, atol=1e-5, rtol=1e-5)
