"""Activation memory of one Qwen2.5-VL forward with gradient, read off transformers' Qwen2.5-VL code
(modeling_qwen2_5_vl.py, transformers 5.x): what autograd keeps between the forward and the backward.

`b` is the activation dtype's size (2 under bf16, 4 in fp32). The RMSNorm upcasts to fp32 and keeps that
copy for backward; in fp32 the upcast is the input itself. Attention: FlashAttention-2 (and sdpa without a
mask) keeps q, k, v at their own widths (k, v of num_key_value_heads); sdpa with a padding mask repeats k
and v to every head first (`repeat_kv`), so it keeps them at full width.

With gradient checkpointing (every language and vision block, models/loading.py) a block keeps only its
inputs until backward, where it runs again with gradient: the `recompute` peak is one block's full
activations plus its backward's temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from visd_exp.planning.models import ModelSpec

PIXEL_VALUES = 3 * 2 * 14 * 14  # values per vision patch: channels x temporal patch x patch x patch


@dataclass(frozen=True)
class Forward:
    """One forward of the student over `rows` rows of `length` positions and `patches` vision positions."""

    rows: int
    length: int
    patches: int
    b: int  # activation bytes per element
    checkpointing: bool
    gqa_kv: bool = True  # k, v kept at num_key_value_heads width (FlashAttention-2, maskless sdpa)
    padding_mask: bool = False  # sdpa with padded rows: one [n, 1, T, T] bool mask shared by every layer


def _norm(elements: int, b: int) -> int:
    """A Qwen2.5-VL RMSNorm's saved tensors, its input not included: the fp32 copy of the input (only when
    the input is not fp32) and the normalised tensor before the weight (in the input's dtype)."""
    return elements * ((4 if b != 4 else 0) + b)


def lm_layer_bytes(spec: ModelSpec, tokens: int, b: int, gqa_kv: bool) -> int:
    """Everything one decoder layer keeps for backward (no checkpointing), for `tokens` positions."""
    h, i = spec.hidden, spec.intermediate
    kv = spec.kv_dim if gqa_kv else spec.hidden
    per_token = (
        2 * (h * b if b == 4 else 0)  # the two norms' inputs (kept by them in fp32 only)
        + 2 * _norm(h, b)  # input_layernorm, post_attention_layernorm
        + 2 * h * b  # the two norms' outputs (inputs of q/k/v and of gate/up)
        + h * b  # rotated q
        + 2 * kv * b  # rotated k and v
        + h * b  # attention output (o_proj's input is a view of it)
        + 4 * i * b  # gate, SiLU(gate), up, SiLU(gate) * up
        + 2 * 4  # the norms' rsqrt
        + spec.heads * 4  # attention's log-sum-exp
    )
    return tokens * per_token


def vision_block_bytes(spec: ModelSpec, patches: int, b: int) -> int:
    """Everything one vision block keeps for backward (no checkpointing), for `patches` positions."""
    d, i = spec.v_hidden, spec.v_intermediate
    per_patch = (
        2 * (d * b if b == 4 else 0)  # norm inputs (fp32 only)
        + 2 * _norm(d, b)
        + 2 * d * b  # norm outputs
        + 3 * d * b  # the qkv projection's output, kept whole by the v view attention saves
        + 2 * d * b  # rotated q and k, back in the activation dtype
        + 2 * d * b  # attention output and the concatenated windows (proj's input)
        + 4 * i * b  # the MLP
        + 2 * 4
        + spec.v_heads * 4
    )
    return patches * per_patch


def vision_outside_bytes(spec: ModelSpec, patches: int, b: int) -> int:
    """The vision tower outside its blocks: patch-embedding input, the merger (RMSNorm over the last block's
    output, its two linears and GELU), the merged features, and the fp32 rotary tables."""
    d = spec.v_hidden
    head = d // spec.v_heads
    return (
        patches * PIXEL_VALUES * b  # Conv3d's input, cast to the weights' dtype
        + patches * d * (4 if b == 4 else 0)  # the last block's output, kept by ln_q in fp32
        + _norm(patches * d, b)
        + 3 * patches * d * b  # ln_q's output (linear 1's input), GELU's input, linear 2's input
        + patches // spec.merge**2 * spec.v_out * b  # the merged features the language model takes in
        + 2 * patches * head * 4  # cos, sin (fp32)
        + patches * 4  # rsqrt
    )


def lm_outside_bytes(spec: ModelSpec, rows: int, length: int, b: int) -> int:
    """The language model outside its layers: the final norm (over the last layer's output), the last
    hidden states the chunked output layer reads, the rotary tables and the token ids."""
    tokens = rows * length
    h = spec.hidden
    return (
        tokens * h * (4 if b == 4 else 0)  # the last layer's output, kept by the final norm in fp32
        + _norm(tokens * h, b)
        + tokens * h * b  # the final hidden states [n, T, H]
        + 2 * tokens * spec.head_dim * b  # cos, sin
        + tokens * 4  # rsqrt
        + tokens * 8  # input ids (the embedding's backward)
    )


def saved_bytes(spec: ModelSpec, f: Forward) -> int:
    """What the student's forward keeps for backward: the `activations` item."""
    tokens = f.rows * f.length
    if f.checkpointing:
        lm = spec.layers * tokens * spec.hidden * f.b  # each layer's input, kept by its checkpoint
        vision = spec.v_depth * f.patches * spec.v_hidden * f.b
    else:
        lm = spec.layers * lm_layer_bytes(spec, tokens, f.b, f.gqa_kv)
        vision = spec.v_depth * vision_block_bytes(spec, f.patches, f.b)
    return (
        lm
        + lm_outside_bytes(spec, f.rows, f.length, f.b)
        + (f.rows * f.length * f.length if f.padding_mask else 0)
        + vision
        + vision_outside_bytes(spec, f.patches, f.b)
    )


def recompute_bytes(spec: ModelSpec, f: Forward) -> int:
    """Backward's transient on top of the saved activations: with checkpointing one decoder layer
    recomputed with gradient, plus its gradient temporaries (the gradient of the layer's widest tensors,
    taken as one [tokens, intermediate] pair and one [tokens, hidden] pair; an estimate, not a count)."""
    tokens = f.rows * f.length
    grads = tokens * (2 * spec.intermediate + 2 * spec.hidden) * f.b
    layer = lm_layer_bytes(spec, tokens, f.b, f.gqa_kv) if f.checkpointing else 0
    vision = vision_block_bytes(spec, f.patches, f.b) if f.checkpointing else 0
    return max(layer, vision) + grads


def no_grad_peak_bytes(spec: ModelSpec, rows: int, length: int, patches: int, b: int) -> int:
    """A forward without gradient (teacher replay, old log-probs, the rollout prefill): the hidden states
    of two consecutive layers plus one layer's widest intermediates (gate, up and their product)."""
    tokens = rows * length
    lm = tokens * (2 * spec.hidden + 3 * spec.intermediate) * b
    vision = patches * (2 * spec.v_hidden + 3 * spec.v_intermediate) * b
    return max(lm, vision) + tokens * spec.hidden * b  # + the final hidden states kept for the output layer


def kv_cache_bytes(spec: ModelSpec, rows: int, length: int, b: int) -> int:
    """HF generate's DynamicCache: keys and values of every layer for `rows` x `length` positions."""
    return rows * length * spec.layers * 2 * spec.kv_dim * b


def logits_chunk_bytes(spec: ModelSpec, student_chunk: int, teacher_chunk: int, b: int) -> int:
    """The output layer's transient, one chunk at a time (objectives/chunked_logprobs.py, credit/lean.py):
    the student's chunk keeps its logits (b) and, in backward, a float32 gradient and its copy in b
    (4 + 4 + b per value; the no-grad extras, log-softmax and entropy, take 4 + 4 + b too); the teacher's
    chunk: its logits, the float32 upcast for the top-K and log-sum-exp (b + 4 + 4)."""
    return max(student_chunk * spec.vocab * (8 + b), teacher_chunk * spec.vocab * (8 + b))
