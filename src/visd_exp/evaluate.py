"""Evaluation entry point: deterministic greedy decoding on a split or any JSONL, with a report.

    python -m visd_exp.evaluate ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt
    python -m visd_exp.evaluate model_dir=logs/train/runs/<time>/hf_model data_file=/data/test.jsonl
    python -m visd_exp.evaluate                       # the tiny default model as configured

Writes report.json, report.md and predictions.jsonl into logs/evaluate/runs/<time>/. `control=swap_frames`,
`shuffle_frames` or `all` also runs the video-dependence controls (controls.py) and reports them next to the
normal run (predictions_<control>.jsonl, report["controls"]). Rows of a benchmark
(source vstar, charades_sta, tvgbench) are also scored by its protocol (visd_exp.benchmarks):
report["benchmarks"][name], its table in report.md, and for V-STaR vstar_results.json, the official
results file (the published file is vstar_file, else the evaluated data file).
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from visd_exp.utils.setup import find_project_root

os.environ.setdefault("PROJECT_ROOT", str(find_project_root()))
log = logging.getLogger(__name__)


def load_for_eval(cfg: DictConfig, device: torch.device | None = None):
    """(model, processor, description, runtime) from model_dir, a Lightning checkpoint, or the model group.

    The model is placed on `device` (default cpu) in the dtype and attention of evaluate_runtime's rules;
    runtime: {device, dtype, attn_implementation, why}."""
    from visd_exp.evaluate_runtime import checkpoint_dtype, place_model, resolve_precision
    from visd_exp.models import load_model_and_processor
    from visd_exp.models.loading import check_qwen2_5_vl

    device = device or torch.device("cpu")

    def precision(model_cfg, from_checkpoint):
        dtype, attn, why = resolve_precision(
            cfg.get("dtype"), cfg.get("attn_implementation"), device, from_checkpoint
        )
        return with_settings(model_cfg, dtype=dtype, attn_implementation=attn), why

    if cfg.get("model_dir"):
        check_qwen2_5_vl(cfg.model_dir, "model_dir")  # before any weight is read
        model_cfg, why = precision(
            {"pretrained_model_name_or_path": cfg.model_dir, "tiny": None}, checkpoint_dtype(cfg.model_dir)
        )
        model, processor = load_model_and_processor(model_cfg)
        source = str(cfg.model_dir)
    elif cfg.get("ckpt_path"):
        ckpt_path = Path(cfg.ckpt_path)
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint")
        run_config = ckpt_path.parent.parent / "config_resolved.yaml"
        # The architecture (and tiny build) of the run that wrote the checkpoint, when it is known.
        run_cfg = OmegaConf.load(run_config) if run_config.is_file() else cfg
        model_cfg, why = precision(run_cfg.model, None)
        model, processor = load_model_and_processor(model_cfg, run_cfg.data)
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
        student = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
        model.load_state_dict(student)
        source = str(ckpt_path)
    else:
        model_cfg, why = cfg.model, "the model group's"
        if cfg.model.get("tiny") is None:  # a hub model: a checkpoint like the others
            model_cfg, why = precision(cfg.model, None)
        else:  # the tiny model: its group's settings, unless given
            given = {k: cfg[k] for k in ("dtype", "attn_implementation") if cfg.get(k) not in (None, "auto")}
            model_cfg = with_settings(cfg.model, **given)
            why = "the tiny model group's" + (f", {given} as given" if given else "")
        model, processor = load_model_and_processor(model_cfg, cfg.data)
        source = "model group: " + str(cfg.model.get("pretrained_model_name_or_path") or "tiny")
    model = place_model(model, device)
    runtime = {
        "device": str(device),
        "dtype": str(model_cfg.get("dtype")),
        "attn_implementation": str(model_cfg.get("attn_implementation")),
        "why": why,
    }
    log.info(
        "evaluating on %s in %s with %s attention (%s)",
        device,
        runtime["dtype"],
        runtime["attn_implementation"],
        why,
    )
    return model, processor, source, runtime


def with_settings(model_cfg, **settings) -> DictConfig:
    """A model config node (resolved against its run's config first) with `settings` replaced."""
    if isinstance(model_cfg, DictConfig):
        model_cfg = OmegaConf.to_container(model_cfg, resolve=True)
    return OmegaConf.create({**model_cfg, **settings})


def evaluate(cfg: DictConfig) -> dict:
    from tqdm import tqdm

    from visd_exp import evaluate_parallel as parallel
    from visd_exp.benchmarks import benchmark_fields, benchmark_tables, build_answer_judge, run_benchmarks
    from visd_exp.data.datamodule import VideoQADataModule
    from visd_exp.evaluate_runtime import batches_to
    from visd_exp.evaluation import markdown_report, predict, summarize_predictions
    from visd_exp.utils.setup import quiet_known_warnings

    quiet_known_warnings()
    if int(cfg.get("num_processes") or 1) > 1:  # num_processes=N: N ranks spawned here, rank 0's report
        return parallel.spawn(cfg, int(cfg.num_processes))
    benchmark = benchmark_name(cfg)  # benchmark=NAME: needs the published file (data_file)
    # The V-STaR answer judge first: a judge that cannot work (no API key) stops before any model loads.
    answer_judge = build_answer_judge(cfg.get("answer_judge"))
    torch.manual_seed(cfg.seed)
    ranks = parallel.start(cfg.get("device", "auto"))  # torchrun's ranks, or one process
    out_dir = parallel.shared_output_dir(ranks, Path(cfg.paths.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    # rank 0 first: a cache it builds (the tiny model) is never written by two ranks at once
    model, processor, source, runtime = parallel.rank0_first(ranks, lambda: load_for_eval(cfg, ranks.device))
    runtime["world_size"] = ranks.world_size
    model.eval()

    data_cfg = cfg.data.copy()
    split = cfg.split
    if cfg.get("data_file"):
        data_cfg.test_file, split = cfg.data_file, "test"
    for other in ("train", "val", "test"):
        if other != split:
            data_cfg[f"{other}_file"] = None
    data_cfg.batch_size = cfg.batch_size
    datamodule = VideoQADataModule(data_cfg, processor)
    parallel.rank0_first(ranks, datamodule.prepare_data)  # synthetic videos written by rank 0 alone
    dataset = datamodule.build_split(split)
    if cfg.get("max_samples"):
        dataset.records, dataset.plans = dataset.records[: cfg.max_samples], dataset.plans[: cfg.max_samples]
    datamodule.datasets[split] = dataset
    if benchmark:
        check_benchmark_rows(benchmark, dataset.records, data_cfg)
    controls = control_names(cfg.get("control"))
    if ranks.parallel:  # each rank its whole batches of the 1-process run (evaluate_parallel.py)
        if controls:
            raise NotImplementedError("control= swaps frames across the whole split: run it on one process")
        total_batches = math.ceil(len(dataset.records) / int(cfg.batch_size))
        writer = parallel.ShardWriter(out_dir, ranks, parallel.shard(dataset, int(cfg.batch_size), ranks))
    engine = eval_engine(cfg, model, processor)
    batches = tqdm(datamodule.loader(split, shuffle=False), desc=f"evaluate {split}", unit="batch")
    if ranks.parallel:
        batches = writer.tap(batches)
    samples: list[dict] = []  # the samples in the order predict() scores them (one row each)

    def tap(batches):
        for batch in batches:
            samples.extend(batch["samples"])
            yield batch

    rows = []
    handle = None if ranks.parallel else open(out_dir / "predictions.jsonl", "w")
    try:
        on_device = batches_to(tap(batches), ranks.device)  # every model input where the model is
        for i, row in enumerate(
            predict(model, processor, on_device, cfg.max_completion_length, engine=engine)
        ):
            row = {**row, **benchmark_fields(samples[i])}  # what the benchmark protocols read; {} otherwise
            rows.append(row)
            writer.add(row) if ranks.parallel else handle.write(json.dumps(row) + "\n")
    finally:
        if handle is not None:
            handle.close()
    if ranks.parallel:  # rank 0 merges in the file's order and reports once; the others stop here
        rows = parallel.merge(writer, total_batches)
        if not ranks.main:
            engine.close()
            answer_judge.close()
            parallel.finish(ranks)
            return {}
        with open(out_dir / "predictions.jsonl", "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    report = {
        "model": source,
        "split": split,
        "data_file": data_cfg.get(f"{split}_file"),
        "runtime": runtime,
        **summarize_predictions(rows),
    }
    title = f"Evaluation of {source} on {split}"
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown_report(report, title))
    # Benchmark protocols (may call the answer judge); the generic report above stands if they fail.
    try:
        vstar_file = cfg.get("vstar_file") or report["data_file"]
        benchmarks = run_benchmarks(rows, answer_judge, out_dir, vstar_file=vstar_file)
    finally:
        answer_judge.close()
    if benchmarks:
        report["benchmarks"] = benchmarks
    if benchmark:  # the paper's columns of the benchmark asked for, and the settings it ran with
        report["benchmark"] = benchmark
        report["table"] = benchmarks[benchmark]["table"]
        report["settings"] = benchmark_settings(cfg, data_cfg)
    if benchmarks:
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        (out_dir / "report.md").write_text(
            markdown_report(report, title) + "\n" + benchmark_tables(benchmarks)
        )
    if controls:
        report["controls"] = {"normal": control_summary(report)}
        for control in controls:
            from visd_exp.controls import ControlDataset

            datamodule.datasets[split] = ControlDataset(dataset, control, seed=int(cfg.seed))
            batches = tqdm(datamodule.loader(split, shuffle=False), desc=f"evaluate {control}", unit="batch")
            with open(out_dir / f"predictions_{control}.jsonl", "w") as handle:
                control_rows = []
                for row in predict(model, processor, batches, cfg.max_completion_length, engine=engine):
                    control_rows.append(row)
                    handle.write(json.dumps(row) + "\n")
            report["controls"][control] = control_summary(summarize_predictions(control_rows))
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))
        with open(out_dir / "report.md", "a") as handle:
            handle.write("\n" + controls_table(report["controls"]))
    engine.close()
    parallel.finish(ranks)
    log.info("report: %s", out_dir / "report.md")
    print((out_dir / "report.md").read_text())
    return report


def benchmark_name(cfg: DictConfig) -> str | None:
    """The benchmark of `benchmark=NAME` (conf/benchmark/NAME.yaml), or None; it needs data_file."""
    node = cfg.get("benchmark")
    if not node:
        return None
    name = node.get("name")
    if node.get("subtitles"):
        raise NotImplementedError(
            f"benchmark={name}: benchmark.subtitles=true, but no reader here reads subtitles"
        )
    if not cfg.get("data_file"):
        raise ValueError(
            f"benchmark={name}: give the published file or folder as data_file=<path> "
            "(and data.video_root=<its videos>); the data group's own split is not that benchmark"
        )
    return name


def check_benchmark_rows(name: str, records, data_cfg) -> None:
    """Loud before any decoding: the file read must hold records of the benchmark asked for."""
    found = sorted({str(r.get("source")) for r in records})
    if not any(r.get("source") == name for r in records):
        raise ValueError(
            f"benchmark={name}: {data_cfg.get('test_file')} (read as data.format="
            f"{data_cfg.get('format') or 'detected'}) holds no {name} record; its sources: {found}"
        )
    if len(found) > 1:
        log.warning("benchmark=%s: the file also holds records of %s (scored separately)", name, found)


def benchmark_settings(cfg: DictConfig, data_cfg) -> dict:
    """What a benchmark's numbers depend on, listed in report.json beside its table."""
    keys = ("format", "fps", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels")
    return {
        **{k: data_cfg.get(k) for k in keys},
        "vstar_prompts": data_cfg.get("vstar_prompts"),
        "max_completion_length": int(cfg.max_completion_length),
        "subtitles": bool(cfg.benchmark.get("subtitles", False)),
        "engine": cfg.rollout.get("engine", "hf"),
        "answer_judge": cfg.answer_judge.get("kind") if cfg.get("answer_judge") else None,
    }


def eval_engine(cfg: DictConfig, model, processor):
    """The rollout engine `rollout.engine` names (rollout/engine.py), holding the model's weights."""
    from visd_exp.rollout.engine import build_engine

    dtype = getattr(model, "dtype", torch.float32)  # (test doubles have no parameters)
    limits = {
        "max_images": int(cfg.data.get("max_frames") or 16),
        "max_model_len": int(cfg.data.get("max_prompt_length") or 16384) + int(cfg.max_completion_length),
        "max_num_seqs": int(cfg.batch_size),
    }
    precision = "32-true" if dtype == torch.float32 else "bf16-mixed"
    engine = build_engine(cfg.get("rollout"), model, processor, precision=precision, limits=limits)
    engine.sync(model, 0)
    return engine


def control_names(value) -> list[str]:
    """`control`: null (none), one of controls.CONTROLS, or `all`."""
    from visd_exp.controls import CONTROLS

    if value in (None, "none", ""):
        return []
    if value == "all":
        return list(CONTROLS)
    if value not in CONTROLS:
        raise ValueError(f"control={value!r}: one of {', '.join(CONTROLS)}, all, or null")
    return [value]


def control_summary(summary: dict) -> dict:
    """The numbers a control is compared on: accuracy, temporal IoU and R1@0.5, spatial IoU, reward."""
    temporal = summary["temporal"]
    return {
        "accuracy": summary["accuracy"],
        "tIoU": temporal["mIoU"],
        "R1@0.5": temporal.get("R1@0.5", math.nan),
        "sIoU": summary["spatial"]["mIoU"],
        "reward": summary["reward"]["total"],
    }


def controls_table(controls: dict) -> str:
    """Markdown: the normal run and each control side by side."""

    def f(x):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x + 0.0:.3f}"

    lines = [
        "Video-dependence controls (a model that ignores the video scores the same on every row)",
        "",
        "| run | Acc | tIoU | R1@0.5 | sIoU | reward |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in controls.items():
        lines.append(
            f"| {name} | {f(c['accuracy'])} | {f(c['tIoU'])} | {f(c['R1@0.5'])} | {f(c['sIoU'])} | {f(c['reward'])} |"
        )
    return "\n".join(lines) + "\n"


@hydra.main(version_base="1.3", config_path="../../conf", config_name="evaluate.yaml")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
