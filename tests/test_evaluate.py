"""Evaluation: metrics against hand-computed values, and the command line on a real checkpoint."""

from __future__ import annotations

import json
import math

import pytest

from visd_exp.evaluation import score_prediction, summarize_predictions

SEG = {
    "segment": [2.0, 6.0],
    "image_size": [56, 56],
    "frame_size": [56, 56],
    "duration": 8.0,
    "key_frames": [{"idx": 8, "time": 2.0}, {"idx": 24, "time": 6.0}],
    "key_items": {"8": {"red square": [[0, 0, 20, 20]]}, "24": {"red square": [[10, 10, 30, 30]]}},
}
GOOD_WHERE = (
    "<obj>red square</obj><box>[0,0,20,20]</box>at<t>2.0</t>s "
    "<obj>red square</obj><box>[10,10,30,30]</box>at<t>6.0</t>s"
)


def rec(task, answer, **extra):
    return {"id": task, "task": task, "question": "q", "answer": answer, **SEG, **extra}


def answer(text):
    return f"<think>ok</think><answer>{text}</answer>"


def test_per_task_scores_by_hand():
    tg = score_prediction(
        answer("From <t>4.0</t>s to <t>8.0</t>s"),
        rec("temporal_grounding", "From <t>2.0</t>s to <t>6.0</t>s"),
    )
    assert tg["tiou"] == pytest.approx(2 / 6)  # overlap [4,6] = 2, union [2,8] = 6
    mc = score_prediction(answer("(B)"), rec("multiple_choice", "B", options=["A. x", "B. y"]))
    assert mc["correct"] == 1.0
    ff = score_prediction(answer("Red."), rec("free_form", "red"))
    assert ff["correct"] == 1.0
    st = score_prediction(
        answer("<obj>red square</obj><box>[0,0,20,10]</box>at<t>2.0</t>s"),
        rec("spatio_temporal_grounding", GOOD_WHERE),
    )
    assert st["viou"] == pytest.approx((0.5 + 0.0) / 2)  # half the first box, the second key frame unclaimed


def test_chains_and_vstar_by_hand():
    chain1 = {"chain": ["what", "when", "where"], "what": "red"}
    chain2 = {"chain": ["what", "where", "when"], "what": "red"}
    perfect1 = score_prediction(
        answer(f"red; From <t>2.0</t>s to <t>6.0</t>s; {GOOD_WHERE}"),
        rec("vstar_what_when_where", "", **chain1),
    )
    assert (perfect1["acc"], perfect1["tiou"], perfect1["viou"]) == (1.0, 1.0, 1.0)
    # chain 2 answered in the wrong order: 'where' holds a span, 'when' holds boxes -> both 0; colour wrong
    wrong2 = score_prediction(
        answer(f"blue; From <t>2.0</t>s to <t>6.0</t>s; {GOOD_WHERE}"),
        rec("vstar_what_where_when", "", **chain2),
    )
    assert (wrong2["acc"], wrong2["tiou"], wrong2["viou"]) == (0.0, 0.0, 0.0)
    truncated = score_prediction("<think>never finished", rec("vstar_what_when_where", "", **chain1))
    assert (truncated["acc"], truncated["tiou"], truncated["viou"]) == (0.0, 0.0, 0.0)
    report = summarize_predictions([perfect1, wrong2])
    v = report["vstar"]
    assert v["am_chain1"] == pytest.approx(1.0) and v["am_chain2"] == pytest.approx(0.0)
    assert v["mAM"] == pytest.approx(0.5)
    # LGM with clamping at 1 - 1e-6: chain 1 -> -ln(1e-6) = 13.8155, chain 2 -> 0
    assert v["mLGM"] == pytest.approx(-math.log(1e-6) / 2, rel=1e-4)


def test_summary_recall_at_iou_by_hand():
    rows = [{"task": "temporal_grounding", "tiou": t} for t in (0.2, 0.4, 0.6, 0.8)]
    t = summarize_predictions(rows)["temporal"]
    assert t["mIoU"] == pytest.approx(0.5)
    assert (t["R1@0.3"], t["R1@0.5"], t["R1@0.7"]) == (0.75, 0.5, 0.25)


def test_evaluate_command_on_a_training_checkpoint(cache_dir, tmp_path):
    from test_train_e2e import fast, run_module, shared_paths

    paths = shared_paths(cache_dir, tmp_path)
    run_module("train", "trainer.max_steps=2", "logger=csv", *fast("trainer.max_steps"), *paths)
    (run,) = list((tmp_path / "logs" / "train" / "runs").iterdir())
    evaluate = ["max_completion_length=48", "data.synthetic.num_videos=12", *paths]
    run_module("evaluate", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", *evaluate)
    (out,) = list((tmp_path / "logs" / "evaluate" / "runs").iterdir())
    report = json.loads((out / "report.json").read_text())
    for key in ("accuracy", "temporal", "spatial", "reward"):
        assert key in report
    assert set(report["temporal"]) == {"mIoU", "R1@0.3", "R1@0.5", "R1@0.7"}
    assert {"mAM", "mLGM", "am_chain1", "am_chain2"} <= set(report["vstar"])
    predictions = (out / "predictions.jsonl").read_text()
    assert len(predictions.splitlines()) == report["num_samples"] == 6  # 1 test video
    assert "| Acc |" in (out / "report.md").read_text()

    # the same student saved in Hugging Face format: identical greedy predictions
    run_module("evaluate", f"model_dir={run / 'hf_model'}", *evaluate, f"hydra.run.dir={tmp_path / 'hf'}")
    assert (tmp_path / "hf" / "predictions.jsonl").read_text() == predictions
