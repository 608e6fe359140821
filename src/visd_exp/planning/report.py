"""The plan as one dict (the --json file) and as text."""

from __future__ import annotations

from visd_exp.planning.assumptions import Assumptions
from visd_exp.planning.footprint import checkpoint_plan, host_ram
from visd_exp.planning.memory import Setting, rank_items
from visd_exp.planning.models import ModelSpec
from visd_exp.planning.peak import GIB, gib, plan_peak
from visd_exp.planning.shapes import Shapes
from visd_exp.planning.timing import all_engines, step_seconds


def build_plan(
    cfg, spec: ModelSpec, shapes: Shapes, st: Setting, assume: Assumptions, overrides: list[str]
) -> dict:
    peak = plan_peak(cfg, spec, shapes, st, assume)
    by_engine = {
        name: gib(plan_peak(cfg, spec, shapes, st, assume, engine, gather)["peak"])
        for name, engine, gather in (
            ("hf/per_layer", "hf", "per_layer"),
            ("hf/once", "hf", "once"),
            ("vllm", "vllm", "once"),
        )
    }
    checkpoint = checkpoint_plan(cfg, spec, st)
    configured = step_seconds(cfg, spec, shapes, st, assume, peak["engine"], peak["zero3_gather"])
    return {
        "overrides": overrides,
        "units": "memory in GiB (2**30 bytes) unless a key ends in _bytes; time in seconds",
        "model": {
            "source": spec.source,
            "parameters": spec.numel,
            "vision_parameters": spec.vision_numel,
            "language_parameters": spec.numel - spec.vision_numel,
            "parameter_tensors": len(spec.params),
        },
        "layout": {
            "world": shapes.world,
            "devices": shapes.devices,
            "nodes": shapes.nodes,
            "zero_stage": st.stage,
            "precision": shapes.precision,
            "teacher": st.teacher,
        },
        "shapes": shapes.describe(),
        "assumptions": assume.describe(),
        "zero": st.zero,
        "per_rank_bytes": {phase: rank_items(spec, st, phase) for phase in ("start", "after_step")},
        "persistent": [{"item": n, "gb": gib(b), "note": w} for n, b, w in peak["persistent"]],
        "phases": {
            name: {
                "total_gb": gib(peak["totals"][name]),
                "items": [{"item": n, "gb": gib(b), "note": w} for n, b, w in items],
            }
            for name, items in peak["phases"].items()
        },
        "cuda_overhead_gb": gib(peak["cuda_overhead"]),
        "engine": peak["engine"],
        "zero3_gather": peak["zero3_gather"],
        "per_gpu_peak_gb": gib(peak["peak"]),
        "peak_phase": peak["peak_phase"],
        "gpu_memory_gb": assume.gpu_memory_gb,
        "fits": peak["fits"],
        "per_gpu_peak_gb_by_engine": by_engine,
        "host_ram_gb": {
            k: (gib(v) if k != "processes_per_node" else v)
            for k, v in host_ram(cfg, spec, shapes, st, assume, peak["engine"]).items()
        },
        "checkpoint_gb": gib(checkpoint["total"]),
        "checkpoint_bytes": {"per_rank": checkpoint["per_rank"], "total": checkpoint["total"]},
        "checkpoint": {
            k: (gib(v) if k in ("per_rank", "total", "run_total", "per_1000_steps") else v)
            for k, v in checkpoint.items()
        },
        "step_time": configured,
        "step_time_by_engine": all_engines(cfg, spec, shapes, st, assume),
    }


def _row(name: str, gb: float, note: str = "") -> str:
    return f"  {name:<38} {gb:>9.2f} GiB  {note}"


def render(plan: dict) -> str:
    lay, sh, m = plan["layout"], plan["shapes"], plan["model"]
    lines = [
        f"Plan: {' '.join(plan['overrides']) or '(defaults)'}",
        f"model: {m['source']}: {m['parameters']:,} parameters ({m['language_parameters']:,} language, "
        f"{m['vision_parameters']:,} vision)",
        f"layout: {lay['world']} ranks ({lay['devices']} per node x {lay['nodes']}), ZeRO stage {lay['zero_stage']}, "
        f"{lay['precision']}, teacher={lay['teacher']}, rollouts: {plan['engine']}"
        + (f" (zero3_gather={plan['zero3_gather']})" if plan["engine"] == "hf" else ""),
        f"shapes per rank: {sh['prompts']} prompts x G={sh['generations']} = {sh['rows']} rows "
        f"(micro-batch {sh['micro_rows']}), {sh['frames']} frames x {sh['tokens_per_frame']} tokens, "
        f"student row {sh['student_len']} (prompt {sh['prompt']} + completion {sh['completion']}), "
        f"teacher row {sh['teacher_len']}",
        "",
        "Per GPU, always held:",
    ]
    lines += [_row(i["item"], i["gb"], i["note"]) for i in plan["persistent"]]
    lines.append(
        _row("CUDA context, NCCL, allocator", plan["cuda_overhead_gb"], "assumption cuda_overhead_gb")
    )
    lines.append("Per GPU, by phase (always-held items included in each total):")
    for name, phase in plan["phases"].items():
        lines.append(_row(f"[{name}] total", phase["total_gb"]))
        lines += ["  " + _row(i["item"], i["gb"], i["note"]) for i in phase["items"]]
    fits = "fits" if plan["fits"] else "DOES NOT FIT"
    lines += [
        f"per_gpu_peak_gb: {plan['per_gpu_peak_gb']:.2f} GiB ({plan['peak_phase']}), {fits} in "
        f"{plan['gpu_memory_gb']:.0f} GiB; by engine: "
        + ", ".join(f"{k} {v:.2f}" for k, v in plan["per_gpu_peak_gb_by_engine"].items()),
        "host RAM per node at start: {per_node_at_start:.1f} GiB ({processes_per_node} processes x "
        "{per_process_at_start:.1f}); while training: {per_node_training:.1f} GiB".format(
            **plan["host_ram_gb"]
        ),
        f"checkpoint_gb: {plan['checkpoint_gb']:.2f} GiB per checkpoint ({plan['checkpoint']['per_rank']:.2f} per rank)"
        + (
            f", {plan['checkpoint']['kept']} kept: {plan['checkpoint']['run_total']:.1f} GiB"
            if "kept" in plan["checkpoint"]
            else ""
        )
        + (
            f", {plan['checkpoint']['per_1000_steps']:.1f} GiB per 1,000 steps"
            if "per_1000_steps" in plan["checkpoint"]
            else ""
        ),
        "",
        "Step time per optimizer step (estimates from the assumptions below):",
    ]
    for t in plan["step_time_by_engine"]:
        mark = " <- configured" if t["engine"] == plan["step_time"]["engine"] else ""
        lines.append(
            f"  {t['engine']:<14} {t['step_s']:8.1f} s  (rollouts {t['rollout_s']:.1f} s at "
            f"{t['decode_per_token_s'] * 1e3:.1f} ms/token, training {t['training_s']:.1f} s "
            f"[compute {t['training_compute_s']:.1f}, ZeRO-3 comm {t['training_comm_s']:.1f}], "
            f"extras {t['engine_extras_s']:.1f} s; {t['tokens_per_s_per_gpu']:.0f} tokens/s/GPU){mark}"
        )
    lines += ["", "Assumptions (override with --assume key=value or +plan.key=value):"]
    lines += [f"  {k} = {v}" for k, v in plan["assumptions"].items()]
    return "\n".join(lines)


__all__ = ["GIB", "build_plan", "render"]
