"""V-STaR, Charades-STA and TVGBench through their conf/benchmark files: rescoring saved V-STaR predictions
whose where-answers are in the official JSON form (values worked out by hand from eval.py's rules), and
(slow) `evaluate benchmark=NAME` on the tiny model over invented files in the published shapes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

RECORD = {
    "vid": "vs_syn01",
    "domain": "Indoor",
    "fps": 4,
    "width": 56,
    "height": 56,
    "frame_count": 32,
    "question": "What is the person holding?",
    "answer": "A red cup.",
    "temporal_question": "When does the person lift the cup?",
    "timestamps": [2.0, 8.0],
    "spatial_question": "Where is the cup while it is lifted?",
    "spatial_question_2": "Where is the cup?",
    "object": "cup",
    "bboxes": [
        {"timestamp": 3, "frame_index": 12, "xmin": 8, "ymin": 8, "xmax": 32, "ymax": 32},
        {"timestamp": 5, "frame_index": 20, "xmin": 20, "ymin": 8, "xmax": 44, "ymax": 36},
    ],
}
REPLIES = {
    "what": "<think>a cup?</think><answer>green</answer>",  # the rule judge: nothing shared, 0
    "when1": "<answer>From <t>2.0</t>s to <t>7.0</t>s</answer>",  # [2, 7] vs [2, 8]: 5 / 6
    "when2": "<answer>From <t>5.0</t>s to <t>8.0</t>s</answer>",  # 3 / 6
    # second 3 exact (1.0); second 5 the upper half of [20, 8, 44, 36]: 24 x 14 / (24 x 28) = 0.5
    "where1": '<answer>{"3": [8, 8, 32, 32], "5": [20, 8, 44, 22]}</answer>',
    "where2": '<answer>```json\n{"3": [8, 8, 32, 32]}\n```</answer>',  # second 5 missing: (1 + 0) / 2
}


def _vstar_file(root: Path) -> Path:
    from conftest import write_square_video

    write_square_video(root / "videos" / "vs_syn01.mp4")
    path = root / "V_STaR_test.json"
    path.write_text(json.dumps([RECORD], indent=4))
    return path


def test_rescore_vstar_json_where_answers(tmp_path):
    from visd_exp.benchmarks.rescore import rescore

    data = _vstar_file(tmp_path)
    preds = tmp_path / "predictions.jsonl"
    preds.write_text(
        "".join(json.dumps({"id": f"vs_syn01#0/{k}", "prediction": v}) + "\n" for k, v in REPLIES.items())
    )
    report = rescore("vstar", data, preds, tmp_path / "out")
    t1, t2, s1, s2 = 5 / 6, 0.5, 0.75, 0.5
    am1, am2 = (0 + t1 + s1) / 3, (0 + t2 + s2) / 3
    lgm1 = -(math.log(1 - t1) + math.log(1 - s1)) / 3
    lgm2 = -(math.log(1 - t2) + math.log(1 - s2)) / 3
    assert report["table"] == pytest.approx(
        {
            "What Acc": 0.0,
            "When tIoU Chain1": 100 * t1,
            "When tIoU Chain2": 100 * t2,
            "Where sIoU Chain1": 100 * s1,
            "Where sIoU Chain2": 100 * s2,
            "mAM": 100 * (am1 + am2) / 2,
            "mLGM": 100 * (lgm1 + lgm2) / 2,
        }
    )
    vstar = report["benchmarks"]["vstar"]
    assert vstar["answer"]["skipped_empty"] == 0 and vstar["chain1"]["spatial"]["AP@0.5"] == 1.0
    results = json.loads((tmp_path / "out" / "vstar_results.json").read_text())
    assert results[0]["answer_spatial"] == {"3": [8, 8, 32, 32], "5": [20, 8, 44, 22]}
    assert results[0]["answer_vqa"] == "green"


def _charades_file(root: Path) -> Path:
    from conftest import write_square_video

    write_square_video(root / "videos" / "vc_syn1.mp4")
    path = root / "charades_sta_test.txt"
    path.write_text("vc_syn1 2.0 5.0##person holds a red square.\nvc_syn1 0.0 1.5##the screen is dark.\n")
    return path


def _tvgbench_file(root: Path) -> Path:
    from conftest import write_square_video

    write_square_video(root / "videos" / "tvg" / "syn_tvg1.mp4")
    path = root / "tvgbench.json"
    record = {"path": "./videos/tvg/syn_tvg1.mp4", "question": "When is the red square visible?",
              "answer": "2.0-5.0", "duration": 8.0, "question_type": "human", "source": "syn"}  # fmt: skip
    path.write_text(json.dumps([record], indent=4))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "writer", "rows", "columns"),
    [
        ("vstar", _vstar_file, 5, ["What Acc", "When tIoU Chain1", "When tIoU Chain2", "Where sIoU Chain1",
                                   "Where sIoU Chain2", "mAM", "mLGM"]),
        ("charades_sta", _charades_file, 2, ["R@0.3", "R@0.5", "R@0.7", "mIoU"]),
        ("tvgbench", _tvgbench_file, 1, ["mIoU", "R@0.3", "R@0.5", "R@0.7"]),
    ],
)  # fmt: skip
def test_evaluate_end_to_end(name, writer, rows, columns, tmp_path, cache_dir):
    """`python -m visd_exp.evaluate benchmark=NAME data_file=<the published file>` on the tiny model: the file
    read unchanged, report.json's `table` in the paper's columns, the benchmark file's settings applied."""
    from test_train_e2e import run_module

    data = writer(tmp_path / "data")
    root = tmp_path / "data" if name == "tvgbench" else tmp_path / "data" / "videos"
    out = tmp_path / "run"
    args = [
        f"benchmark={name}",
        f"data_file={data}",
        f"data.video_root={root}",
        "data.max_frames=4",  # cut for the tiny CPU run
        "model.warm_start=null",
        "max_completion_length=4",
        f"paths.cache_dir={cache_dir}",
        f"paths.output_dir={out}",
    ]
    run_module("evaluate", *args, env={**os.environ, "OMP_NUM_THREADS": "1"})
    report = json.loads((out / "report.json").read_text())
    assert report["benchmark"] == name and list(report["table"]) == columns
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == rows
    if name == "vstar":
        assert report["settings"]["vstar_prompts"] == "open_o3"
        assert {p["vstar"]["prompts"] for p in predictions} == {"open_o3"}
        assert (out / "vstar_results.json").is_file()
    else:
        assert (report["settings"]["fps"], report["settings"]["min_pixels"]) == (2.0, 12544)


def _rescore_with(name: str, data: Path, replies: list[str], tmp_path: Path) -> dict:
    """rescore on predictions.jsonl holding `replies` for the file's records in their order."""
    from visd_exp.benchmarks.rescore import benchmark_config, read_benchmark_records, rescore

    ids = list(read_benchmark_records(name, data, None, benchmark_config(name)))
    assert len(ids) == len(replies)
    preds = tmp_path / "predictions.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "prediction": r}) + "\n" for i, r in zip(ids, replies)))
    return rescore(name, data, preds, tmp_path / "out")


def test_rescore_charades_and_tvgbench_by_hand(tmp_path):
    charades = _charades_file(tmp_path / "c")  # ground truth [2, 5] and [0, 1.5]
    report = _rescore_with(
        "charades_sta",
        charades,
        [
            "<answer>From <t>2.0</t>s to <t>5.0</t>s</answer>",  # IoU 1
            "<answer>From <t>0.0</t>s to <t>2.5</t>s</answer>",  # overlap 1.5 / union 2.5 = 0.6
        ],
        tmp_path / "c",
    )
    assert report["table"] == pytest.approx({"R@0.3": 100.0, "R@0.5": 100.0, "R@0.7": 50.0, "mIoU": 80.0})
    tvg = _tvgbench_file(tmp_path / "t")  # ground truth 2.0-5.0
    report = _rescore_with(
        "tvgbench", tvg, ["<answer>From <t>3.0</t>s to <t>5.0</t>s</answer>"], tmp_path / "t"
    )
    # overlap 2 / union 3
    assert list(report["table"]) == ["mIoU", "R@0.3", "R@0.5", "R@0.7"]
    assert report["table"] == pytest.approx({"mIoU": 200 / 3, "R@0.3": 100.0, "R@0.5": 100.0, "R@0.7": 0.0})
