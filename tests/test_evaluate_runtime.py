"""Evaluation where the model is: the device switch observed (no GPU here), dtype/attention rules, the
Qwen2.5-VL-only check, and data-parallel evaluation (2 CPU processes give the 1-process report)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT
from visd_exp import evaluate_runtime as rt

TINY = ["model.warm_start=null", "data.synthetic.num_videos=12", "max_completion_length=4", "batch_size=2"]


def fake_gpu(monkeypatch, count: int = 1, flash: bool = False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(rt, "flash_attn_available", lambda: flash)


def test_device_rules(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rt.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="device=cuda: CUDA is not available"):
        rt.resolve_device("cuda")
    with pytest.raises(ValueError, match="one of auto, cpu, cuda"):
        rt.resolve_device("tpu")
    fake_gpu(monkeypatch, count=2)
    assert rt.resolve_device("auto") == torch.device("cuda", 0)
    assert rt.resolve_device("cpu") == torch.device("cpu")
    assert rt.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(RuntimeError, match="has 2 CUDA device"):
        rt.resolve_device("cuda:2")
    # data-parallel: each rank its local GPU
    assert rt.resolve_device("auto", world_size=2, local_rank=1) == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="every rank takes cuda:<local_rank>"):
        rt.resolve_device("cuda:0", world_size=2, local_rank=1)


def test_dtype_and_attention_rules(monkeypatch, tmp_path):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    monkeypatch.setattr(rt, "flash_attn_available", lambda: False)
    assert rt.resolve_precision("auto", "auto", cpu, "bfloat16")[:2] == ("float32", "sdpa")
    dtype, attn, why = rt.resolve_precision("auto", "auto", gpu, None)
    assert (dtype, attn) == ("bfloat16", "sdpa") and "flash_attn is not installed" in why
    assert rt.resolve_precision("auto", "auto", gpu, "float16")[0] == "float16"  # the checkpoint's
    assert rt.resolve_precision("auto", "auto", gpu, "float32")[0] == "bfloat16"
    monkeypatch.setattr(rt, "flash_attn_available", lambda: True)
    assert rt.resolve_precision("auto", "auto", gpu, None)[:2] == ("bfloat16", "flash_attention_2")
    assert rt.resolve_precision("float32", "auto", gpu, None)[:2] == ("float32", "sdpa")  # flash needs half
    assert rt.resolve_precision("bf16", "eager", cpu, None)[:2] == ("bfloat16", "eager")  # given: wins
    with pytest.raises(ValueError, match="flash_attention_2 needs a CUDA device"):
        rt.resolve_precision("auto", "flash_attention_2", cpu, None)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl", "torch_dtype": "bfloat16"}))
    assert rt.checkpoint_dtype(tmp_path) == "bfloat16"


def test_only_qwen2_5_vl_checkpoints_load(tmp_path):
    from visd_exp.evaluate import load_for_eval
    from visd_exp.models.loading import NotQwen2_5VLError

    other = tmp_path / "llava"
    other.mkdir()
    (other / "config.json").write_text(
        json.dumps({"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"]})
    )  # no weights: the check comes first
    cfg = OmegaConf.create({"model_dir": str(other), "device": "cpu", "dtype": "auto", "model": {}})
    with pytest.raises(NotQwen2_5VLError) as raised:
        load_for_eval(cfg, torch.device("cpu"))
    message = str(raised.value)
    for part in (f"model_dir={other}", "'llava'", "only Qwen2.5-VL", "Open-o3-Video", "Video-R1", "VideoRFT"):
        assert part in message


class DeviceSpy:
    """Tensor.to / Module.to with a CUDA target recorded and kept on the CPU; moved tensors are tagged."""

    def __init__(self, monkeypatch):
        self.model_moves: list[str] = []
        self.checked_batches = 0
        tensor_to, module_to = torch.Tensor.to, torch.nn.Module.to

        def target(args, kwargs):
            for value in (*args, kwargs.get("device")):
                if isinstance(value, (str, torch.device)) and str(value).startswith("cuda"):
                    return str(value)
            return None

        def fake_tensor_to(tensor, *args, **kwargs):
            where = target(args, kwargs)
            if where is None:
                return tensor_to(tensor, *args, **kwargs)
            kwargs.pop("device", None)
            args = [a for a in args if not (isinstance(a, (str, torch.device)) and str(a).startswith("cuda"))]
            moved = tensor_to(tensor, *args, **kwargs).clone()
            moved.spy_device = where
            return moved

        def fake_module_to(module, *args, **kwargs):
            where = target(args, kwargs)
            if where is None:
                return module_to(module, *args, **kwargs)
            self.model_moves.append(where)
            return module

        monkeypatch.setattr(torch.Tensor, "to", fake_tensor_to)
        monkeypatch.setattr(torch.nn.Module, "to", fake_module_to)

    def tensors_of(self, batch):
        for key, value in batch.items():
            if key == "frames":
                continue
            for t in value if isinstance(value, list) else [value]:
                if isinstance(t, torch.Tensor):
                    yield key, t


def compose_evaluate(cache_dir, out, *overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="evaluate",
            overrides=[
                f"paths.output_dir={out}",
                f"paths.cache_dir={cache_dir}",
                f"paths.data_dir={cache_dir / 'data'}",
                *TINY,
                *overrides,
            ],
        )


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_evaluate_sends_the_model_and_every_batch_input_to_the_device(
    cache_dir, tmp_path, monkeypatch, device
):
    """device=auto with a GPU (faked): the model and every model input of every batch reach the engine on
    cuda:0 (and report.json says so); device=cpu: nothing is sent to a GPU."""
    from visd_exp.evaluate import evaluate
    from visd_exp.rollout import generation

    cfg = compose_evaluate(cache_dir, tmp_path / device, f"device={device}")
    fake_gpu(monkeypatch)
    spy = DeviceSpy(monkeypatch)
    real = generation.generate_rollouts
    seen: list[tuple[str, str | None]] = []

    def checked(model, processor, batch, how, suppress):
        seen.extend((key, getattr(t, "spy_device", None)) for key, t in spy.tensors_of(batch))
        spy.checked_batches += 1
        return real(model, processor, batch, how, suppress)

    monkeypatch.setattr(generation, "generate_rollouts", checked)
    report = evaluate(cfg)
    assert spy.checked_batches == 3  # 6 samples, batch_size 2
    keys = {key for key, _ in seen}
    assert {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw"} <= keys
    want = "cuda:0" if device == "auto" else None
    assert {where for _, where in seen} == {want}, seen
    assert spy.model_moves == ([want] if want else [])
    runtime = json.loads((tmp_path / device / "report.json").read_text())["runtime"]
    assert runtime["device"] == (want or "cpu") and runtime == report["runtime"]
    assert (runtime["dtype"], runtime["attn_implementation"]) == ("float32", "sdpa")  # the tiny group's


def test_a_checkpoint_on_a_gpu_is_loaded_in_bf16(cache_dir, tmp_path, monkeypatch):
    """model_dir on a (faked) GPU without flash_attn: bfloat16 and sdpa, logged in report.json."""
    from visd_exp.evaluate import load_for_eval

    tiny = compose_evaluate(cache_dir, tmp_path)
    from visd_exp.models.loading import resolve_model_path

    path = resolve_model_path(tiny.model)
    fake_gpu(monkeypatch)
    DeviceSpy(monkeypatch)
    cfg = OmegaConf.merge(tiny, {"model_dir": path})
    model, _, _, runtime = load_for_eval(cfg, rt.resolve_device("auto"))
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"
    assert (runtime["device"], runtime["dtype"], runtime["attn_implementation"]) == (
        "cuda:0",
        "bfloat16",
        "sdpa",
    )
    assert "flash_attn is not installed" in runtime["why"]


def test_the_merge_is_loud_about_a_missing_batch(tmp_path, monkeypatch):
    import torch.distributed as dist

    from visd_exp import evaluate_parallel as parallel

    ranks = parallel.Ranks(0, 2, 0)
    writer = parallel.ShardWriter(tmp_path, ranks, [0, 2])
    list(writer.tap([{"samples": [{}]}, {"samples": [{}]}]))
    writer.add({"id": "a"})
    writer.add({"id": "c"})

    def rank1_produced_nothing(payload, gathered, dst):
        gathered[0], gathered[1] = payload, {"rank": 1, "batches": [], "rows": []}

    monkeypatch.setattr(dist, "gather_object", rank1_produced_nothing)
    with pytest.raises(RuntimeError, match=r"batches \[1\] missing.*no merged report"):
        parallel.merge(writer, total_batches=3)
    # what rank 0 decoded is on disk
    assert [json.loads(x)["id"] for x in writer.path.read_text().splitlines()] == ["a", "c"]


def strip(report: dict) -> dict:
    report = dict(report)
    report.pop("runtime")
    return report


@pytest.mark.slow
def test_two_cpu_processes_give_the_one_process_report(cache_dir, tmp_path):
    """torchrun --nproc_per_node 2 (gloo, one thread each), and num_processes=2: one predictions.jsonl,
    report.json and report.md, equal to the 1-process run's (batches 0 and 2 on rank 0, 1 on rank 1)."""
    import subprocess
    import sys

    from test_train_e2e import run_module

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    common = [*TINY, f"paths.cache_dir={cache_dir}", f"paths.data_dir={cache_dir / 'data'}"]
    run_module("evaluate", *common, f"paths.output_dir={tmp_path / 'one'}", env=env)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*torchrun, "-m", "visd_exp.evaluate", *common, f"paths.output_dir={tmp_path / 'torchrun'}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_module("evaluate", *common, "num_processes=2", f"paths.output_dir={tmp_path / 'spawned'}", env=env)
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    predictions = (tmp_path / "one" / "predictions.jsonl").read_text()
    assert one["num_samples"] == 6 and one["runtime"]["world_size"] == 1
    for name in ("torchrun", "spawned"):
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert report["runtime"]["world_size"] == 2
        assert strip(report) == strip(one)
        assert (tmp_path / name / "predictions.jsonl").read_text() == predictions
        assert (tmp_path / name / "report.md").read_text() == (tmp_path / "one" / "report.md").read_text()
        shards = [tmp_path / name / "shards" / f"predictions.rank{r}.jsonl" for r in (0, 1)]
        batches = [{json.loads(x)["batch"] for x in s.read_text().splitlines()} for s in shards]
        assert batches == [{0, 2}, {1}]


CRASHING_RANK = """
import os, runpy
from visd_exp import evaluate_parallel as parallel
add = parallel.ShardWriter.add
def failing(self, row):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("rank 1 fails on purpose")
    add(self, row)
parallel.ShardWriter.add = failing
runpy.run_module("visd_exp.evaluate", run_name="__main__")
"""


@pytest.mark.slow
def test_a_failing_rank_stops_the_run_with_no_merged_report(cache_dir, tmp_path):
    """Rank 1 raises on its first row: the run fails with that error, no predictions.jsonl or report is
    written; what rank 0 decoded stays in its shard."""
    import subprocess
    import sys

    script = tmp_path / "crashing_rank.py"
    script.write_text(CRASHING_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    out = tmp_path / "out"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    common = [*TINY, f"paths.cache_dir={cache_dir}", f"paths.data_dir={cache_dir / 'data'}"]
    result = subprocess.run(
        [*torchrun, str(script), *common, f"paths.output_dir={out}"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0 and "rank 1 fails on purpose" in result.stderr
    assert not (out / "predictions.jsonl").exists() and not (out / "report.json").exists()
    assert not (out / "report.md").exists()
    shard = out / "shards" / "predictions.rank0.jsonl"  # what rank 0 decoded before it was stopped
    if shard.exists():
        assert {json.loads(x)["batch"] for x in shard.read_text().splitlines()} <= {0, 2}
