"""The tiny offline model: the REAL `Qwen2_5_VLForConditionalGeneration` class with a small config and
random weights, a byte-level BPE tokenizer trained locally with Qwen2.5-VL's special tokens, a
Qwen-style chat template, and the real processor. No hub access: everything is built here, once,
saved with `save_pretrained` into a cache directory keyed by its spec, then loaded with
`from_pretrained` like any checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from visd_exp.data.prompts import SYSTEM_PROMPT, TASK_INSTRUCTIONS
from visd_exp.utils.fs import atomic_directory, file_lock

FORMAT_VERSION = 3

# Qwen2.5-VL's special tokens, in its order (ids are assigned from 0 here, not Qwen's 151643+).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The output format's tags, atomic in the tiny tokenizer (normal, not special, tokens: they decode as
# text). Real Qwen splits them into several tokens; the tiny model gets shorter sequences instead.
FORMAT_TAGS = [
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    "<obj>",
    "</obj>",
    "<box>",
    "</box>",
    "<t>",
    "</t>",
]

# A Qwen-style chat template: a default system turn, images and videos as vision placeholders that
# the processor expands, and the assistant header when a generation prompt is requested.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class TinySpec:
    """Everything that determines the tiny model; its hash names the cache directory."""

    vocab_size: int = 1024  # BPE target incl. special tokens (the model's table is rounded up to 64)
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    vision_hidden_size: int = 64
    vision_intermediate_size: int = 128
    vision_depth: int = 2
    vision_num_heads: int = 4
    max_position_embeddings: int = 8192
    seed: int = 0
    corpus_lines: int = 4000
    extra_corpus: tuple[str, ...] = field(default_factory=tuple)

    def key(self) -> str:
        blob = json.dumps({"v": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _corpus(spec: TinySpec) -> Iterator[str]:
    """Text shaped like this project's prompts and answers, so its frequent strings become single tokens:
    the system prompt, task instructions, frame headers, and records of the synthetic generator
    (built without rendering any video) for every preset."""
    import numpy as np

    from visd_exp.data.synthetic import PRESETS, build_records, sample_scene

    rng = random.Random(spec.seed)
    yield SYSTEM_PROMPT
    yield from TASK_INSTRUCTIONS.values()
    yield from spec.extra_corpus
    for _ in range(spec.corpus_lines // 10):
        yield f"The video is {rng.randint(4, 60)}.0 seconds long.\nFrame {rng.randint(1, 16)} at {rng.randint(0, 59)}.{rng.choice('05')}s:"
    np_rng = np.random.default_rng(spec.seed)
    names = sorted(PRESETS)
    tasks = ["temporal_grounding", "spatio_temporal_grounding", "multiple_choice", "free_form"]
    for i in range(spec.corpus_lines // len(tasks)):
        difficulty = PRESETS[names[i % len(names)]]
        scene = sample_scene(np_rng, difficulty)
        for record in build_records(f"{i}", "v.mp4", scene, difficulty, tasks, np_rng):
            yield record["question"]
            yield record["reasoning_process"]


def _train_tokenizer(spec: TinySpec):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec), trainer=trainer)
    tok.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in FORMAT_TAGS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
    )


def _model_config(spec: TinySpec, tokenizer):
    from transformers import Qwen2_5_VLConfig

    head_dim = spec.hidden_size // spec.num_attention_heads
    half = head_dim // 2  # mrope sections (temporal, height, width) must sum to head_dim / 2
    mrope = [half - 2 * (half * 3 // 8), half * 3 // 8, half * 3 // 8]
    vocab = -(-len(tokenizer) // 64) * 64
    ids = tokenizer.convert_tokens_to_ids
    return Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab,
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_hidden_layers,
            "num_attention_heads": spec.num_attention_heads,
            "num_key_value_heads": spec.num_key_value_heads,
            "max_position_embeddings": spec.max_position_embeddings,
            "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 1_000_000.0},
            "bos_token_id": ids("<|endoftext|>"),
            "eos_token_id": ids("<|im_end|>"),
            "pad_token_id": ids("<|endoftext|>"),
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size,
            "num_heads": spec.vision_num_heads,
            "out_hidden_size": spec.hidden_size,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [spec.vision_depth - 1],
            "tokens_per_second": 2,
        },
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        tie_word_embeddings=True,
    )


def build_tiny(out_dir: str | Path, spec: TinySpec) -> Path:
    """Build the tiny model, tokenizer and processor into `out_dir` (save_pretrained layout)."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from visd_exp.models.processor import FramesProcessor, save_processor

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer(spec)
    config = _model_config(spec, tokenizer)
    # Its own seed without touching the caller's stream: a run that builds the model (empty cache) must
    # sample exactly what a run that finds it cached samples (same seed, same rollouts).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    # Pixel budgets are enforced by the data module, which resizes frames itself; the processor is told
    # not to resize again (see visd_exp.data.frames).
    image_processor = Qwen2VLImageProcessorPil()
    processor = FramesProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    model.save_pretrained(out_dir)
    save_processor(processor, out_dir)
    (out_dir / "tiny_spec.json").write_text(json.dumps({"format": FORMAT_VERSION, **asdict(spec)}, indent=2))
    return out_dir


def ensure_tiny(cache_dir: str | Path, spec: TinySpec | Mapping | None = None) -> Path:
    """Return the directory of the tiny model for `spec`, building it once (locked, atomic)."""
    if spec is None:
        spec = TinySpec()
    elif isinstance(spec, Mapping):
        spec = TinySpec(**{k: (tuple(v) if k == "extra_corpus" else v) for k, v in spec.items()})
    final = Path(cache_dir) / f"tiny-qwen2_5_vl-{spec.key()}"
    if (final / "tiny_spec.json").exists():
        return final
    with file_lock(str(final) + ".lock"):
        if (final / "tiny_spec.json").exists():  # another process built it while we waited
            return final
        with atomic_directory(final) as tmp:
            build_tiny(tmp, spec)
    return final
