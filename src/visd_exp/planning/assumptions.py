"""Every number the planner assumes rather than reads from the config, each overridable:

    python -m visd_exp.plan ... --assume gpu=h100 mfu=0.2 nvlink_gbps=300
    python -m visd_exp.plan ... +plan.mfu=0.2          (a `plan:` node in the composed config)

Order: the defaults below < the chosen GPU's figures < the config's `plan:` node < `--assume`.
Units: GiB (2**30 bytes) for memory, GB/s (1e9 bytes/s) for bandwidths, TFLOP/s (1e12) for compute.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import yaml

# Vendor datasheet figures (NVIDIA A100 / H100 SXM / H200 datasheets): memory, HBM bandwidth, dense bf16.
# nvlink_gbps: the NCCL bus bandwidth of an 8-GPU NVLink all-gather for large messages; nccl-tests
# report ~230 GB/s on DGX A100 and ~350-480 on DGX H100, so the defaults sit at the lower end.
GPUS = {
    "a100": {"gpu_memory_gb": 80.0, "hbm_gbps": 2039.0, "bf16_tflops": 312.0, "nvlink_gbps": 200.0},
    "h100": {"gpu_memory_gb": 80.0, "hbm_gbps": 3350.0, "bf16_tflops": 989.0, "nvlink_gbps": 350.0},
    "h200": {"gpu_memory_gb": 131.3, "hbm_gbps": 4800.0, "bf16_tflops": 989.0, "nvlink_gbps": 350.0},
}


@dataclass(frozen=True)
class Assumptions:
    gpu: str = "a100"  # C.2: the paper trained on A100s (2 nodes x 8); a100 | h100 | h200
    gpu_memory_gb: float = 80.0
    hbm_gbps: float = 2039.0
    bf16_tflops: float = 312.0
    nvlink_gbps: float = 200.0  # NCCL all-gather / reduce-scatter bus bandwidth inside a node
    internode_gbps: float = 25.0  # per GPU across nodes (one 200 Gb/s NIC per GPU, as on DGX A100)
    collective_latency_us: float = 50.0  # per all-gather call (small-message NCCL latency)
    # notes/scale.md: EasyR1's Qwen2.5-VL-7B GRPO on 8 x H100 runs at 16-23% MFU
    mfu: float = 0.2
    hbm_efficiency: float = 0.7  # share of HBM bandwidth a memory-bound decode step reaches
    hf_step_overhead_ms: float = 25.0  # HF generate per decode step: Python and kernel launches (28 layers)
    vllm_step_overhead_ms: float = 8.0  # vLLM per decode step without CUDA graphs (enforce_eager)
    vllm_graph_step_overhead_ms: float = 2.0  # ... with CUDA graphs
    pcie_gbps: float = 25.0  # host <-> GPU (vLLM sleep level 1 moves its weights to host memory and back)
    cuda_overhead_gb: float = 2.0  # CUDA context, NCCL buffers, allocator slack per GPU
    host_runtime_gb: float = 4.0  # per process: Python, torch, CUDA libraries
    vllm_sleep_residual_gb: float = 0.5  # what a sleeping vLLM engine keeps on the GPU
    # Sequence shapes the config does not fix
    chars_per_token: float = 4.0  # English text through a BPE tokenizer
    question_tokens: int = 64  # question + task instruction
    frame_header_tokens: int = 8  # "Frame 12 at 5.5s:" and the line break (digits are single tokens)
    template_tokens: int = 24  # chat-template markers, vision start/end per frame are added on top
    # notes/scale.md: a 7B student row of ~3,100 tokens against a teacher row of ~3,400
    privileged_tokens: int = 300
    completion_fraction: float = 1.0  # mean completion length / max_completion_length (1: worst case)
    frame_pixels: int | None = None  # pixels per frame; None: the data config's per-frame budget

    def describe(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _value(text: str):
    value = yaml.safe_load(text)
    return value


def parse_assume(items: list[str] | None) -> dict[str, object]:
    """`--assume k=v k2=v2` (also `k=v,k2=v2`) into a dict; unknown keys and bad pairs raise, naming them."""
    out: dict[str, object] = {}
    names = {f.name for f in fields(Assumptions)}
    for item in items or []:
        for pair in filter(None, item.split(",")):
            if "=" not in pair:
                raise ValueError(f"--assume {pair!r}: expected key=value")
            key, text = pair.split("=", 1)
            key = key.strip()
            if key not in names:
                raise ValueError(f"--assume {key}: unknown assumption; known: {', '.join(sorted(names))}")
            out[key] = _value(text.strip())
    return out


def build_assumptions(plan_node: dict | None = None, assume: dict | None = None) -> Assumptions:
    """Defaults < GPU figures < the config's `plan:` node < --assume (module docstring)."""
    names = {f.name for f in fields(Assumptions)}
    layers = [dict(plan_node or {}), dict(assume or {})]
    for layer in layers:
        unknown = set(layer) - names
        if unknown:
            raise ValueError(
                f"plan assumptions: unknown keys {sorted(unknown)}; known: {', '.join(sorted(names))}"
            )
    gpu = str(next((layer["gpu"] for layer in reversed(layers) if "gpu" in layer), Assumptions.gpu)).lower()
    if gpu not in GPUS:
        raise ValueError(f"plan assumption gpu={gpu}: known GPUs are {', '.join(GPUS)}")
    merged = {**GPUS[gpu], "gpu": gpu}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if k != "gpu"})
    base = Assumptions()
    typed = {}
    for f in fields(Assumptions):
        if f.name in merged:
            value = merged[f.name]
            default = getattr(base, f.name)
            typed[f.name] = value if value is None or default is None else type(default)(value)
    return replace(base, **typed)
