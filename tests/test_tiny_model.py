"""The tiny offline model: real Qwen2.5-VL classes, built once, reloaded with from_pretrained."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from visd_exp.models.processor import FramesProcessor, load_processor
from visd_exp.models.tiny import SPECIAL_TOKENS, TinySpec, ensure_tiny


def test_build_and_reload_round_trip(tmp_path):
    spec = TinySpec(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    path = ensure_tiny(tmp_path, spec)
    assert (path / "model.safetensors").stat().st_size < 10_000_000
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    processor = load_processor(path)
    assert isinstance(processor, FramesProcessor)
    assert model.config.model_type == "qwen2_5_vl"
    # special tokens keep Qwen's names and the config points at them
    tok = processor.tokenizer
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in SPECIAL_TOKENS)
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert tok.eos_token == "<|im_end|>" and tok.padding_side == "left"
    # a second load gives identical weights and identical logits
    again = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    ids = torch.tensor([[1, 20, 30, 40]])
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    # byte-level BPE: any text round-trips
    text = "<think>The <obj>red square</obj><box>[1,2,3,4]</box>at<t>3.0</t>s ünï</think>"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_cache_is_reused_and_keyed_by_spec(tmp_path):
    first = ensure_tiny(tmp_path, TinySpec())
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny(tmp_path, TinySpec()) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime
    other = ensure_tiny(tmp_path, TinySpec(num_hidden_layers=1))
    assert other != first and not list(tmp_path.glob(".tmp-*"))


def test_building_the_tiny_model_leaves_the_callers_rng_alone(tmp_path):
    """A run that builds the model (empty cache) must sample what a run that finds it cached samples: the
    builder seeds its own initialisation without resetting the global stream (it once did, so the first
    run of a fresh cache drew different rollouts than every later run with the same seed)."""
    import torch

    from visd_exp.models.tiny import TinySpec, build_tiny

    torch.manual_seed(123)
    torch.rand(3)
    before = torch.get_rng_state()
    build_tiny(tmp_path / "tiny", TinySpec())
    assert torch.equal(torch.get_rng_state(), before)
