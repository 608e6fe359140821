"""model.init_from (weights from a Hugging Face directory) and model.gradient_checkpointing."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT
from visd_exp.models import load_model_and_processor
from visd_exp.models.loading import InitFromError, check_init_from, enable_gradient_checkpointing


def tiny_cfg(cache_dir, **overrides):
    cfg = OmegaConf.load(PROJECT_ROOT / "conf/model/tiny.yaml")
    cfg.cache_dir = str(cache_dir / "models")
    cfg.warm_start = None
    return OmegaConf.merge(cfg, overrides)


@pytest.fixture
def saved_model(tiny, tmp_path):
    """The session's tiny model with perturbed weights (so they differ from a fresh build), saved."""
    model, processor = tiny
    from visd_exp.models.processor import save_processor

    state = {k: v + 0.01 * torch.randn_like(v) for k, v in model.state_dict().items()}
    changed = type(model)(model.config)
    changed.load_state_dict(state)
    out = tmp_path / "run" / "hf_model"
    changed.save_pretrained(out)
    save_processor(processor, out)
    return out, {k: v.clone() for k, v in changed.state_dict().items()}  # tied weights: as saved


def test_init_from_loads_those_weights(cache_dir, saved_model):
    path, state = saved_model
    model, processor = load_model_and_processor(tiny_cfg(cache_dir, init_from=str(path)))
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    base, _ = load_model_and_processor(tiny_cfg(cache_dir))
    assert not torch.equal(base.lm_head.weight, model.lm_head.weight)  # the base weights were replaced
    assert processor.tokenizer.padding_side == "left"


def test_the_teacher_starts_from_init_from_too(cache_dir, saved_model):
    """Table 8: teacher initialisation = student initialisation (the EMA copy of the loaded student)."""
    from visd_exp.teacher.variants import build_teacher

    path, state = saved_model
    student, _ = load_model_and_processor(tiny_cfg(cache_dir, init_from=str(path)))
    teacher = build_teacher(OmegaConf.create({"name": "ema", "rate": 0.01}), student)
    copy = teacher.model(student).state_dict()
    assert teacher.model(student) is not student
    assert all(torch.equal(copy[k], state[k]) for k in state)


def test_init_from_without_a_processor_takes_the_base_ones(cache_dir, saved_model):
    path, state = saved_model
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        (path / name).unlink()
    model, processor = load_model_and_processor(tiny_cfg(cache_dir, init_from=str(path)))
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


def test_init_from_errors_name_the_path(tmp_path, saved_model):
    missing = tmp_path / "no_such_run" / "hf_model"
    with pytest.raises(InitFromError, match=rf"model.init_from={missing}: no such directory"):
        check_init_from(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InitFromError, match=rf"model.init_from={empty}: no config.json"):
        check_init_from(empty)
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InitFromError, match=rf"model.init_from={other}: .*'llama', not a Qwen2.5-VL"):
        check_init_from(other)
    path, _ = saved_model
    (path / "model.safetensors").unlink()
    with pytest.raises(InitFromError, match=rf"model.init_from={path}: no weights"):
        check_init_from(path)


def vision_inputs(processor, frames: int = 2):
    """One prompt with `frames` random 56x56 images, through the project's processor path."""
    from visd_exp.data.datamodule import encode_prompt

    images = torch.randint(0, 256, (frames, 3, 56, 56), generator=torch.Generator().manual_seed(0))
    text = "".join(f"Frame {i}: <|vision_start|><|image_pad|><|vision_end|>\n" for i in range(frames))
    return dict(encode_prompt(processor, text + "What moves?", images.to(torch.uint8)))


def loss_and_grads(model, inputs):
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    loss = out.logits.float().log_softmax(-1)[0, :, 3].mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_gradient_checkpointing_recomputes_language_and_vision_blocks(cache_dir):
    """Each block's forward runs again in the backward pass (vision tower included), with the same
    loss and gradients as without checkpointing."""
    plain, processor = load_model_and_processor(tiny_cfg(cache_dir))
    ckpt, _ = load_model_and_processor(tiny_cfg(cache_dir, gradient_checkpointing=True))
    for model in (plain, ckpt):
        model.train()
    counts = {}

    def counter(name):
        def hook(module, args):
            counts[name] = counts.get(name, 0) + 1

        return hook

    vision_block = ckpt.model.visual.blocks[0]
    text_block = ckpt.model.language_model.layers[0]
    assert vision_block.gradient_checkpointing and text_block.gradient_checkpointing
    assert not plain.model.visual.blocks[0].gradient_checkpointing
    inputs = vision_inputs(processor)
    # transformers checkpoints a block's `forward`, not `__call__` (hooks stay outside): count a
    # submodule inside each block, which the recompute runs again.
    handles = [
        vision_block.mlp.register_forward_pre_hook(counter("vision")),
        text_block.mlp.register_forward_pre_hook(counter("text")),
    ]
    out = ckpt(**inputs)
    forward_only = dict(counts)
    out.logits.float().log_softmax(-1)[0, :, 3].mean().backward()
    for handle in handles:
        handle.remove()
    assert forward_only == {"vision": 1, "text": 1}
    assert counts == {"vision": 2, "text": 2}  # recomputed once each during backward
    counts.clear()  # the control: without checkpointing nothing runs again
    handles = [
        plain.model.visual.blocks[0].mlp.register_forward_pre_hook(counter("vision")),
        plain.model.language_model.layers[0].mlp.register_forward_pre_hook(counter("text")),
    ]
    plain(**inputs).logits.float().log_softmax(-1)[0, :, 3].mean().backward()
    for handle in handles:
        handle.remove()
    assert counts == {"vision": 1, "text": 1}

    loss_plain, grads_plain = loss_and_grads(plain, inputs)
    loss_ckpt, grads_ckpt = loss_and_grads(ckpt, inputs)
    torch.testing.assert_close(loss_ckpt, loss_plain, rtol=0, atol=1e-6)
    assert grads_plain.keys() == grads_ckpt.keys()
    assert any(n.startswith("model.visual.") for n in grads_plain)
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-5, atol=1e-7)
    assert enable_gradient_checkpointing(plain) == len(plain.model.visual.blocks) + len(
        plain.model.language_model.layers
    )
