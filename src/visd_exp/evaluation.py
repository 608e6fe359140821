"""Scoring predictions for evaluation: answer accuracy, temporal IoU with R1@{0.3,0.5,0.7}, spatial IoU,
and V-STAR mAM / mLGM over the two chains (what-when-where, what-where-when; VISD Eq. 18)."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Iterator, Mapping, Sequence

import torch
from omegaconf import OmegaConf

from visd_exp.metrics import recall_at_iou, temporal_iou, vstar_summary
from visd_exp.rewards import canonical_task, parse_completion, score, task_spec

CHAIN_TASKS = {"vstar_what_when_where": 1, "vstar_what_where_when": 2}
_WORDS = re.compile(r"[a-z0-9]+")


def normalise(text: str) -> str:
    return " ".join(_WORDS.findall(text.lower()))


def answer_correct(prediction: str | None, sample: Mapping) -> bool:
    """Exact match: the option letter for multiple choice, normalised text for free form."""
    if prediction is None:
        return False
    if sample["task"] == "multiple_choice":
        return parse_completion(f"<answer>{prediction}</answer>").answer_choice == sample["answer"].strip()
    return normalise(prediction) == normalise(sample["answer"])


def chain_scores(answer: str | None, sample: Mapping) -> dict[str, float]:
    """acc, tIoU and vIoU of a chained answer 'part; part; part' in the chain's order (missing part = 0)."""
    parts = [p.strip() for p in (answer or "").split(";")]
    parts += [""] * (3 - len(parts))
    by_name = dict(zip(sample["chain"], parts))
    segment = parse_completion(f"<answer>{by_name['when']}</answer>").answer_segment
    where = score(f"<answer>{by_name['where']}</answer>", {**sample, "task": "spatio_temporal_grounding"})
    return {
        "acc": float(normalise(by_name["what"]) == normalise(sample["what"])),
        "tiou": temporal_iou(segment, sample["segment"]) if segment else 0.0,
        "viou": where["ans_spa"] or 0.0,
    }


def score_prediction(completion: str, sample: Mapping) -> dict:
    """Per-sample record of the prediction and its scores (`task` is the project's name for the task)."""
    parsed = parse_completion(completion)
    chain = sample["task"] in CHAIN_TASKS
    row = {
        "id": sample.get("id"),
        "task": sample["task"] if chain else canonical_task(sample["task"]),
        "answer": sample["answer"],
        "prediction": completion,
        "parsed_answer": parsed.answer,
    }
    if chain:
        row.update(chain_scores(parsed.answer, sample))
        return row
    components = score(completion, sample, progress=1.0)
    row.update({f"reward/{k}": v for k, v in components.items()})
    spec = task_spec(sample["task"])
    if spec.answer in ("choice", "choice_keyed", "number"):
        row["correct"] = float(components["ans"] == 1.0)  # the verifier's exact rule
    elif spec.answer is not None:
        row["correct"] = float(answer_correct(parsed.answer, sample))  # normalised exact text
    if spec.ans_tmp:
        row["tiou"] = components["ans_tmp"] or 0.0
    if spec.ans_spa is not None:
        row["viou"] = components["ans_spa"] or 0.0
    return row


@torch.no_grad()
def predict(
    model,
    processor,
    batches: Iterable[dict],
    max_completion_length: int,
    sampling: Mapping | None = None,
    engine=None,
) -> Iterator[dict]:
    """Greedy (deterministic) completion of each prompt, scored: one row per sample.

    `sampling` ({num_generations, temperature, top_p, top_k}) samples num_generations completions per
    prompt instead, as the rollouts do: num_generations rows per sample, in the prompt's order. The
    caller owns the RNG (seed it for numbers that repeat). engine: the rollout engine (rollout/engine.py;
    None: HF generate on `model`)."""
    from visd_exp.models import vision_token_ids
    from visd_exp.rollout.engine import HFEngine

    engine = engine or HFEngine()

    if sampling is None:
        how = {"num_generations": 1, "do_sample": False}
    else:
        how = {"do_sample": True, "top_p": 1.0, "top_k": 0, **sampling}
    how = OmegaConf.create({**how, "max_completion_length": int(max_completion_length)})
    suppress = vision_token_ids(processor.tokenizer)
    for batch in batches:
        rollouts = engine.generate(model, processor, batch, how, suppress)
        samples = [s for s in batch["samples"] for _ in range(how.num_generations)]  # Eq. 14's row layout
        for text, sample in zip(rollouts.texts, samples, strict=True):
            yield score_prediction(text, sample)


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else math.nan


def summarize_predictions(rows: Sequence[Mapping]) -> dict:
    """The report's metrics over per-sample rows."""
    plain = [r for r in rows if r["task"] not in CHAIN_TASKS]
    tious = [r["tiou"] for r in plain if "tiou" in r]
    report = {
        "num_samples": len(rows),
        "tasks": {t: sum(r["task"] == t for r in rows) for t in sorted({r["task"] for r in rows})},
        "accuracy": _mean([r["correct"] for r in plain if "correct" in r]),
        "accuracy_multiple_choice": _mean([r["correct"] for r in plain if r["task"] == "multiple_choice"]),
        "accuracy_free_form": _mean([r["correct"] for r in plain if r["task"] == "free_form"]),
        "temporal": {"mIoU": _mean(tious), **{f"R1@{t}": v for t, v in recall_at_iou(tious).items()}}
        if tious
        else {"mIoU": math.nan},
        "spatial": {"mIoU": _mean([r["viou"] for r in plain if "viou" in r])},
        "reward": {
            k: _mean([r[f"reward/{k}"] for r in plain if r.get(f"reward/{k}") is not None])
            for k in ("total", "ans", "fmt", "ans_tmp", "ans_spa", "thk_tmp", "thk_spa")
        },
    }
    chains = {}
    for task, number in CHAIN_TASKS.items():
        chain_rows = [r for r in rows if r["task"] == task]
        if chain_rows:
            chains[number] = {
                "acc": _mean([r["acc"] for r in chain_rows]),
                "m_tiou": _mean([r["tiou"] for r in chain_rows]),
                "m_viou": _mean([r["viou"] for r in chain_rows]),
            }
    if len(chains) == 2:
        report["vstar"] = {"chain1": chains[1], "chain2": chains[2], **vstar_summary(chains[1], chains[2])}
    return report


def markdown_report(report: Mapping, title: str) -> str:
    def f(x):
        return (
            "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x + 0.0:.3f}"
        )  # no "-0.000"

    t = report["temporal"]
    lines = [
        f"# {title}",
        "",
        f"{report['num_samples']} samples: " + ", ".join(f"{k} {v}" for k, v in report["tasks"].items()),
        "",
        "| Acc | Acc (MC) | Acc (free form) | tIoU | R1@0.3 | R1@0.5 | R1@0.7 | sIoU | reward |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {f(report['accuracy'])} | {f(report['accuracy_multiple_choice'])} | {f(report['accuracy_free_form'])} "
        f"| {f(t['mIoU'])} | {f(t.get('R1@0.3'))} | {f(t.get('R1@0.5'))} | {f(t.get('R1@0.7'))} "
        f"| {f(report['spatial']['mIoU'])} | {f(report['reward']['total'])} |",
    ]
    if "vstar" in report:
        v = report["vstar"]
        lines += [
            "",
            "V-STAR (chain 1: what-when-where, chain 2: what-where-when)",
            "",
            "| chain | Acc | mTIoU | mVIoU | AM | LGM |",
            "|---|---|---|---|---|---|",
        ]
        for i in (1, 2):
            c = v[f"chain{i}"]
            lines.append(
                f"| {i} | {f(c['acc'])} | {f(c['m_tiou'])} | {f(c['m_viou'])} | {f(v[f'am_chain{i}'])} "
                f"| {f(v[f'lgm_chain{i}'])} |"
            )
        lines += ["", f"mAM {f(v['mAM'])}, mLGM {f(v['mLGM'])}"]
    return "\n".join(lines) + "\n"
