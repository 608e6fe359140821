"""V-STaR scored as the official scripts score it: where-answers in the official JSON form, and empty
what-answers skipped as eval.py skips them.

Rows are invented; every expected value is worked out by hand from the official scripts' rules."""

from __future__ import annotations

import pytest

from visd_exp.benchmarks import run_benchmarks
from visd_exp.benchmarks.vstar import score_vstar
from visd_exp.benchmarks.vstar_answers import json_boxes, predicted_boxes, predicted_segment

# ----------------------------------------------------------------------------- official JSON where-answers


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"3": [100, 100, 200, 200]}', {"3": [100, 100, 200, 200]}),
        # Open-o3-Video: the <answer> text first (the think part's brackets are not read)
        ('<think>box [1, 2]</think><answer>{"3": [1, 2, 3, 4]}</answer>', {"3": [1, 2, 3, 4]}),
        ("Here:\n```json\n{'3': [1, 2, 3, 4]}\n```", {"3": [1, 2, 3, 4]}),  # fenced; quotes made double
        (
            "[[3, [1, 2, 3, 4]], [4, [5, 6, 7, 8]]]",
            {"3": [1, 2, 3, 4], "4": [5, 6, 7, 8]},
        ),  # [sec, box] pairs
        ('[{"3": [1, 2, 3, 4]}, {"4": [5, 6, 7, 8]}]', {"3": [1, 2, 3, 4], "4": [5, 6, 7, 8]}),  # merged
        ('{"3": [1, 2, 3, 4]', [1, 2, 3, 4]),  # no closing brace: the box alone, balanced -> a list
        ("I cannot see it.", None),
    ],
)
def test_json_where_answers_read_as_the_official_script(reply, expected):
    assert json_boxes(reply) == expected


GT = {
    "image_size": [640, 360],
    "frame_size": [320, 180],  # the model saw half the size: claims are rescaled, JSON boxes are not
    "duration": 10.0,
    "question": "What is the person holding?",
    "answer": "a red cup",
    "segment": [2.0, 8.0],
    "key_frames": [{"idx": 90, "time": 3}],
    "key_items": {"90": {"cup": [[100, 100, 200, 200]]}},
}


def _row(index: int, query: str, chain: int, prediction: str, prompts: str = "official") -> dict:
    return {
        **GT,
        "id": f"v{index}#{index}/{query}{chain or ''}",
        "source": "vstar",
        "prediction": prediction,
        "vstar": {"vid": f"v{index}", "index": index, "query": query, "chain": chain, "prompts": prompts},
    }


class Ratings:
    description = "fixed (test)"

    def __init__(self, ratings):
        self.ratings, self.seen, self.stats = ratings, [], {"failed": 0}

    def rate(self, items):
        self.seen.extend(it.candidate for it in items)
        return [self.ratings[it.candidate] for it in items]


def test_json_of_the_ground_truth_scores_iou_one():
    rows = [
        _row(0, "what", 0, "A red cup."),
        _row(0, "where", 1, '{"3": [100, 100, 200, 200]}'),  # the ground truth's official JSON form
        _row(0, "where", 2, '```json\n{"3": [100, 100, 200, 200]}\n```'),
    ]
    report, items = score_vstar(rows, Ratings({"A red cup.": 3}))
    assert report["chain1"]["spatial"]["mIoU"] == 1.0 and report["chain2"]["spatial"]["mIoU"] == 1.0
    assert items[0]["answer_spatial"] == {"3": [100, 100, 200, 200]}  # exported as written
    # the same boxes as claims are in the pixels of the frame the model saw: [50,50,100,100] x 2
    claims = _row(0, "where", 1, "<answer><obj>cup</obj><box>[50,50,100,100]</box>at<t>3.2</t>s</answer>")
    assert predicted_boxes(claims) == {"3": [100.0, 100.0, 200.0, 200.0]}
    # a key written "3.0" is not the ground truth's str(3)
    shifted = [rows[0], _row(0, "where", 1, '{"3.0": [100, 100, 200, 200]}')]
    assert score_vstar(shifted, Ratings({"A red cup.": 3}))[0]["chain1"]["spatial"]["mIoU"] == 0.0


def test_json_where_answers_through_run_benchmarks(tmp_path):
    rows = [_row(0, "what", 0, "A red cup."), _row(0, "where", 1, '{"3": [100, 100, 200, 200]}')]
    report = run_benchmarks(rows, Ratings({"A red cup.": 2}), tmp_path, vstar_file=None)["vstar"]
    assert report["chain1"]["spatial"] == {
        "mIoU": 1.0, "AP@0.1": 1.0, "AP@0.3": 1.0, "AP@0.5": 1.0, "AP@0.7": 1.0, "AP@0.9": 1.0
    }  # fmt: skip
    assert report["table"]["Where sIoU Chain1"] == 100.0


def test_empty_what_answers_are_skipped_as_eval_py_skips_them():
    rows = [
        # record 0: rated 3; when1 exact (1.0), when2 [4, 10] vs [2, 8] = 4 / 8; where1 exact, where2 none (0)
        _row(0, "what", 0, "<answer>A red cup.</answer>"),
        _row(0, "when", 1, "<answer>From <t>2.0</t>s to <t>8.0</t>s</answer>"),
        _row(0, "when", 2, "<answer>From <t>4.0</t>s to <t>10.0</t>s</answer>"),
        _row(0, "where", 1, '<answer>{"3": [100, 100, 200, 200]}</answer>'),
        _row(0, "where", 2, "<answer>not visible</answer>"),
        # record 1: an empty answer: not judged, its perfect when/where answers not counted either
        _row(1, "what", 0, "<think>hmm</think><answer> </answer>"),
        _row(1, "when", 1, "<answer>From <t>2.0</t>s to <t>8.0</t>s</answer>"),
        _row(1, "where", 1, '{"3": [100, 100, 200, 200]}'),
        # record 2: rated 1 (wrong); when1 [0, 1] vs [2, 8] -> 0, when2 [2, 4] -> 2 / 6; where1 half the box
        _row(2, "what", 0, "green"),
        _row(2, "when", 1, "<answer>From <t>0.0</t>s to <t>1.0</t>s</answer>"),
        _row(2, "when", 2, "<answer>From <t>2.0</t>s to <t>4.0</t>s</answer>"),
        _row(2, "where", 1, '{"3": [100, 100, 200, 150]}'),
        _row(2, "where", 2, '{"3": [100, 100, 200, 200]}'),
    ]
    judge = Ratings({"A red cup.": 3, "green": 1})
    report, _ = score_vstar(rows, judge)
    assert judge.seen == ["A red cup.", "green"]
    answer = report["answer"]
    assert (answer["skipped_empty"], answer["correct"], answer["unparseable"]) == (1, 1, 0)
    assert answer["accuracy"] == pytest.approx(1 / 3)  # print_stats: correct_num / len(data)
    assert answer["mean_rating"] == 2.0  # (3 + 1) / 2: the skipped record is not in all_rating
    assert report["chain1"]["temporal"]["mIoU"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2
    assert report["chain2"]["temporal"]["mIoU"] == pytest.approx((0.5 + 2 / 6) / 2)
    assert report["chain1"]["spatial"]["mIoU"] == pytest.approx(0.75)  # (1.0 + 0.5) / 2
    assert report["chain2"]["spatial"]["mIoU"] == pytest.approx(0.5)  # (0.0 + 1.0) / 2
    assert report["chain1"]["AM"] == pytest.approx((1 / 3 + 0.5 + 0.75) / 3)
    from visd_exp.benchmarks.tables import benchmark_tables

    assert "## V-STaR (3 records, 1 skipped for an empty answer" in benchmark_tables({"vstar": report})


def test_open_o3_minutes_read_as_seconds():
    row = _row(0, "when", 1, "<answer>From 0:05 to 1:10</answer>", prompts="open_o3")
    assert predicted_segment(row) == [5.0, 70.0]
    # V-STaR's own reader has no such rule: four numbers, no interval
    assert predicted_segment({**row, "vstar": {**row["vstar"], "prompts": "official"}}) is None
