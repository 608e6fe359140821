"""The per-GPU peak: what each phase of a step adds to the memory a rank always holds (planning/memory.py).

Phases: start (ZeRO-3: the student and teacher built partitioned inside zero.Init and loaded one module at
a time, models/partitioned.py), rollout (HF generate with ZeRO-3 gathers, or a woken vLLM engine), weight
push to vLLM, the update micro-batch (the student's forward and backward with the teacher's terms), and the
optimizer step. Transient sizes come from planning/activations.py; each line says what it counts.
"""

from __future__ import annotations

from visd_exp.planning import activations as act
from visd_exp.planning.assumptions import Assumptions
from visd_exp.planning.memory import Setting, all_sub_groups, decay_groups, persistent_items
from visd_exp.planning.models import ModelSpec
from visd_exp.planning.shapes import Shapes

GIB = 2**30
STUDENT_CHUNK = 256  # objectives/chunked_logprobs.py LOGPROB_CHUNK_SIZE


def rollout_engine(cfg) -> tuple[str, str]:
    """(engine, ZeRO-3 gather mode of the HF engine): rollout.engine, rollout.hf.zero3_gather."""
    rollout = cfg.get("rollout") or {}
    engine = str(rollout.get("engine", "hf"))
    gather = str((rollout.get("hf") or {}).get("zero3_gather", "per_layer"))
    if engine not in ("hf", "vllm") or gather not in ("per_layer", "once"):
        raise ValueError(
            f"rollout.engine={engine} / rollout.hf.zero3_gather={gather}: expected hf|vllm, per_layer|once"
        )
    return engine, gather


def _gathered(spec: ModelSpec, st: Setting, elements: int) -> int:
    return min(elements, spec.numel) * st.weight_bytes if st.stage == 3 else 0


def rollout_items(cfg, spec, shapes: Shapes, st: Setting, assume: Assumptions, engine: str, gather: str):
    b = st.weight_bytes
    prefetch = int(st.zero.get("stage3_prefetch_bucket_size", 0))
    patches = shapes.prompts * shapes.frames * shapes.patches_per_frame
    if engine == "vllm":
        util = float(cfg.rollout.vllm.get("gpu_memory_utilization", 0.3))
        share = int(util * assume.gpu_memory_gb * GIB)
        room = share - spec.numel * 2  # what its bf16 weights leave for the KV cache and activations
        need = act.kv_cache_bytes(spec, shapes.rows, shapes.student_len, 2)
        verdict = "enough" if room >= need else "TOO SMALL: raise rollout.vllm.gpu_memory_utilization"
        note = f"gpu_memory_utilization {util} x GPU; {gib(room)} GiB beside its weights, KV needs {gib(need)}: {verdict}"
        return [("vLLM engine awake", share, note)]
    items = []
    if st.stage == 3 and gather == "once":
        items.append(("gathered student (once per generate)", spec.numel * b, "the whole model, bf16"))
    elif st.stage == 3:
        items.append(
            (
                "gathered modules (per layer)",
                _gathered(spec, st, spec.largest_module + prefetch),
                "largest module + prefetch bucket",
            )
        )
    items += [
        (
            "KV cache",
            act.kv_cache_bytes(spec, shapes.rows, shapes.student_len, b),
            f"{shapes.rows} rows x {shapes.student_len}",
        ),
        (
            "prefill",
            act.no_grad_peak_bytes(spec, shapes.rows, shapes.prompt, patches, b),
            "one layer, no grad",
        ),
    ]
    return items


def batch_tensors(shapes: Shapes) -> int:
    """The rollout batch: every row's fp32 pixel values (the G rows of a prompt carry copies) and ids."""
    pixels = shapes.rows * shapes.frames * shapes.patches_per_frame * act.PIXEL_VALUES * 4
    return pixels + shapes.rows * shapes.teacher_len * 8 * 4


def update_items(cfg, spec, shapes: Shapes, st: Setting, checkpointing: bool):
    b = st.weight_bytes if st.stage == 3 else (2 if shapes.half else 4)
    patches = shapes.micro_prompts * shapes.frames * shapes.patches_per_frame
    flash = str(cfg.model.get("attn_implementation", "sdpa")).startswith("flash")
    # sdpa: rows are padded (completions end at different lengths), so it gets a mask and repeats k, v
    forward = act.Forward(
        shapes.micro_rows, shapes.student_len, patches, b, checkpointing, gqa_kv=flash, padding_mask=not flash
    )
    live = int(st.zero.get("stage3_max_live_parameters", 0)) + int(
        st.zero.get("stage3_prefetch_bucket_size", 0)
    )
    teacher_chunk = int((cfg.get("credit") or {}).get("chunk_size", 1024))
    items = [
        (
            "activations",
            act.saved_bytes(spec, forward),
            f"{shapes.micro_rows} rows x {shapes.student_len}, "
            + ("checkpointed" if checkpointing else "no checkpointing"),
        ),
        ("backward recompute", act.recompute_bytes(spec, forward), "one layer again, with its gradients"),
        (
            "logits chunk",
            act.logits_chunk_bytes(spec, STUDENT_CHUNK, teacher_chunk, b),
            f"{STUDENT_CHUNK} / {teacher_chunk} positions x V",
        ),
        (
            "teacher terms",
            shapes.micro_rows * shapes.completion * spec.hidden * b,
            "teacher's last hidden states [n, C, H]",
        ),
        ("rollout batch", batch_tensors(shapes), "pixel values (fp32, per row), ids"),
    ]
    if st.stage == 3:
        items.insert(
            0, ("gathered parameters", _gathered(spec, st, live), "stage3_max_live_parameters + prefetch")
        )
    return items


def step_items(spec, st: Setting):
    if st.stage == 3:
        largest = max(all_sub_groups(spec, st))
        return [
            ("fp32 gradient of a sub-group", 4 * largest, "flattened and upcast for the step"),
            ("its flattened copy", st.grad_bytes * largest, "before the upcast"),
            ("Adam temporaries", 4 * largest, "sqrt(v) + eps of the sub-group"),
        ]
    largest = max(sum(p.numel for p in group) for group in decay_groups(spec))
    return [("Adam temporaries", 4 * largest, "sqrt(v) + eps of the larger parameter group")]


def plan_peak(
    cfg, spec: ModelSpec, shapes: Shapes, st: Setting, assume: Assumptions, engine=None, gather=None
) -> dict:
    """Persistent items, the phases with their transients, and the per-GPU peak (bytes); engine / gather:
    instead of the config's rollout.engine / rollout.hf.zero3_gather."""
    configured = rollout_engine(cfg)
    engine, gather = engine or configured[0], gather or configured[1]
    checkpointing = bool(cfg.model.get("gradient_checkpointing", False))
    persistent = persistent_items(spec, st)
    base = sum(b for _, b, _ in persistent) + int(assume.cuda_overhead_gb * GIB)
    asleep = int(assume.vllm_sleep_residual_gb * GIB) if engine == "vllm" else 0
    phases = {
        "rollout": rollout_items(cfg, spec, shapes, st, assume, engine, gather),
        "update": update_items(cfg, spec, shapes, st, checkpointing)
        + ([("vLLM asleep", asleep, "")] if asleep else []),
        "optimizer step": step_items(spec, st) + ([("vLLM asleep", asleep, "")] if asleep else []),
    }
    if engine == "vllm":
        phases["weight push"] = [
            ("vLLM weights (woken for the push)", spec.numel * 2, "bf16, whole model"),
            ("one gathered module", _gathered(spec, st, spec.largest_module), ""),
        ]
    totals = {name: base + sum(b for _, b, _ in items) for name, items in phases.items()}
    if st.stage == 3:  # zero.Init: partitions as they are created, one module gathered at a time to load it
        shards = persistent[0][1] + persistent[1][1]
        phases["start"] = [
            ("student and teacher partitions", shards, "built inside zero.Init (models/partitioned.py)"),
            ("one gathered module", _gathered(spec, st, spec.largest_module), "while its weights are read"),
        ]
        totals["start"] = int(assume.cuda_overhead_gb * GIB) + sum(b for _, b, _ in phases["start"])
    peak_phase = max(totals, key=totals.get)
    return {
        "engine": engine,
        "zero3_gather": gather,
        "persistent": persistent,
        "cuda_overhead": int(assume.cuda_overhead_gb * GIB),
        "phases": phases,
        "totals": totals,
        "peak_phase": peak_phase,
        "peak": totals[peak_phase],
        "fits": totals[peak_phase] <= assume.gpu_memory_gb * GIB,
    }


def gib(nbytes: float) -> float:
    return round(nbytes / GIB, 2)
