"""Benchmark protocols (V-STaR, Charades-STA, TVGBench) against hand-computed values; no model needed."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from visd_exp.benchmarks import benchmark_fields, benchmark_tables, run_benchmarks
from visd_exp.benchmarks.answer_judge import (
    AnswerItem,
    AnswerJudgeError,
    OpenAIAnswerJudge,
    RuleAnswerJudge,
    build_answer_judge,
    parse_rating,
    rule_rating,
)
from visd_exp.benchmarks.grounding import grounding_report
from visd_exp.benchmarks.tables import CHARADES_COLUMNS, TVGBENCH_COLUMNS, VSTAR_COLUMNS
from visd_exp.benchmarks.vstar import (
    ANSWER_FIELDS,
    current_bboxes,
    export_results,
    read_published,
    score_items,
    score_vstar,
)
from visd_exp.evaluation import score_prediction


def answer(text: str) -> str:
    return f"<think>looking</think><answer>{text}</answer>"


def claim(name: str, box, t: float) -> str:
    boxes = "".join(
        f"<box>[{','.join(str(v) for v in b)}]</box>"
        for b in ([box] if isinstance(box[0], (int, float)) else box)
    )
    return f"<obj>{name}</obj>{boxes}at<t>{t}</t>s"


# Record 0: original video 640x360, the model saw 320x180 (its boxes are x2 in original pixels).
REC0 = {
    "vid": "v0",
    "image_size": [640, 360],
    "frame_size": [320, 180],
    "duration": 20.0,
    "question": "What is the man holding?",
    "answer": "a red cup",
    "segment": [2.0, 8.0],
    "key_frames": [{"idx": 60, "time": 2}, {"idx": 120, "time": 4}],
    "key_items": {"60": {"cup": [[100, 100, 200, 200]]}, "120": {"cup": [[200, 100, 300, 200]]}},
}
REC1 = {
    "vid": "v1",
    "image_size": [100, 100],
    "frame_size": [100, 100],
    "duration": 10.0,
    "question": "What colour is the dog's collar?",
    "answer": "blue",
    "segment": [0.0, 4.0],
    "key_frames": [{"idx": 10, "time": 1}],
    "key_items": {"10": {"dog": [[0, 0, 50, 50]]}},
}
COMPLETIONS = {
    0: {
        ("what", 0): answer("A red cup."),
        ("when", 1): answer("From <t>4.0</t>s to <t>10.0</t>s"),  # [4,10] vs [2,8]: 4 / 8 = 0.5
        ("when", 2): answer("From <t>2.0</t>s to <t>8.0</t>s"),  # exact: 1.0
        # t=2: [50,50,100,100] x2 = GT box -> 1.0; t=4.4 -> key "4": [200,100,250,200] vs [200,100,300,200] -> 0.5
        ("where", 1): answer(
            claim("cup", [50, 50, 100, 100], 2.0) + " " + claim("cup", [100, 50, 125, 100], 4.4)
        ),
        ("where", 2): answer(claim("cup", [50, 50, 100, 100], 2.0)),  # key "4" missing -> 0
    },
    1: {
        ("what", 0): answer("green"),
        ("when", 1): answer("From <t>5.0</t>s to <t>6.0</t>s"),  # disjoint: 0
        ("when", 2): answer("From <t>1.0</t>s to <t>3.0</t>s"),  # [1,3] vs [0,4]: 2 / 4 = 0.5
        # two boxes at t=1: IoU 0 and 0.5 (half of [0,0,50,100]) -> the best, 0.5
        ("where", 1): answer(claim("dog", [[60, 60, 100, 100], [0, 0, 50, 100]], 1.0)),
        ("where", 2): answer("I cannot tell."),  # no claims: an empty prediction -> 0 for all
    },
}
TASKS = {"what": "free_form", "when": "temporal_grounding", "where": "spatio_temporal_grounding"}


def vstar_sample(index: int, record: dict, query: str, chain: int) -> dict:
    sample = {
        "id": f"{record['vid']}-{query}{chain}",
        "source": "vstar",
        "task": TASKS[query],
        "video_path": f"/videos/{record['vid']}.mp4",
        "frame_times": [0.0, 1.0],
        "vstar": {"vid": record["vid"], "index": index, "query": query, "chain": chain},
        **{k: record[k] for k in ("image_size", "frame_size", "duration")},
    }
    if query == "what":
        sample.update(question=record["question"], answer=record["answer"])
    elif query == "when":
        s, e = record["segment"]
        sample.update(question="When?", answer=f"From <t>{s}</t>s to <t>{e}</t>s", segment=record["segment"])
    else:
        truth = " ".join(
            claim(name, boxes[0], frame["time"])
            for frame in record["key_frames"]
            for name, boxes in record["key_items"][str(frame["idx"])].items()
        )
        sample.update(
            question="Where?", answer=truth, key_frames=record["key_frames"], key_items=record["key_items"]
        )
    return sample


def vstar_rows() -> list[dict]:
    """The rows evaluate writes: score_prediction's row plus the benchmark fields of the sample."""
    rows = []
    for index, record in enumerate((REC0, REC1)):
        for (query, chain), completion in COMPLETIONS[index].items():
            sample = vstar_sample(index, record, query, chain)
            rows.append({**score_prediction(completion, sample), **benchmark_fields(sample)})
    return rows


class FixedJudge:
    """A grader with fixed ratings per candidate (None = an unparseable reply)."""

    description = "fixed (test)"

    def __init__(self, ratings: dict):
        self.ratings, self.seen = ratings, []
        self.stats = {"failed": 0}

    def rate(self, items):
        self.seen.extend(items)
        return [self.ratings[it.candidate] for it in items]

    def close(self):
        pass


ACC = 0.5  # ratings 2 (correct) and unparseable (0, not correct)
T1, T2 = (0.5 + 0.0) / 2, (1.0 + 0.5) / 2
S1, S2 = (0.75 + 0.5) / 2, (0.5 + 0.0) / 2


def test_vstar_scores_by_hand():
    judge = FixedJudge({"A red cup.": 2, "green": None})
    report, items = score_vstar(vstar_rows(), judge)
    assert [it.question for it in judge.seen] == [REC0["question"], REC1["question"]]
    assert [it.groundtruth for it in judge.seen] == ["a red cup", "blue"]
    assert report["num_records"] == 2 and report["grader"] == "fixed (test)"
    a = report["answer"]
    assert (a["accuracy"], a["correct"], a["unparseable"]) == (ACC, 1, 1)
    assert (a["mean_rating"], a["mean_valid_rating"]) == (1.0, 2.0)  # (2 + 0) / 2; 2 / 1

    c1, c2 = report["chain1"], report["chain2"]
    assert c1["temporal"] == pytest.approx({"mIoU": T1, "R1@0.3": 0.5, "R1@0.5": 0.5, "R1@0.7": 0.0})
    assert c2["temporal"] == pytest.approx({"mIoU": T2, "R1@0.3": 1.0, "R1@0.5": 1.0, "R1@0.7": 0.5})
    # record 0 chain 1: IoUs (1.0, 0.5) -> mIoU 0.75, AP@.1/.3/.5 = 1, AP@.7/.9 = 0.5
    # record 1 chain 1: IoU 0.5 -> mIoU 0.5, AP@.1/.3/.5 = 1, AP@.7/.9 = 0
    assert c1["spatial"] == pytest.approx(
        {"mIoU": S1, "AP@0.1": 1.0, "AP@0.3": 1.0, "AP@0.5": 1.0, "AP@0.7": 0.25, "AP@0.9": 0.25}
    )
    # chain 2: record 0 IoUs (1.0, 0 for the missing key "4") -> 0.5 and AP 0.5 everywhere; record 1 empty -> 0
    assert c2["spatial"] == pytest.approx(
        {"mIoU": S2, **{f"AP@{t}": 0.25 for t in ("0.1", "0.3", "0.5", "0.7", "0.9")}}
    )

    am1, am2 = (ACC + T1 + S1) / 3, (ACC + T2 + S2) / 3
    lgm1 = -(math.log(1 - ACC) + math.log(1 - T1) + math.log(1 - S1)) / 3
    lgm2 = -(math.log(1 - ACC) + math.log(1 - T2) + math.log(1 - S2)) / 3
    assert (am1, am2) == pytest.approx((1.375 / 3, 0.5))
    assert (c1["AM"], c2["AM"], c1["LGM"], c2["LGM"]) == pytest.approx((am1, am2, lgm1, lgm2))
    assert (report["mAM"], report["mLGM"]) == pytest.approx(((am1 + am2) / 2, (lgm1 + lgm2) / 2))
    assert report["missing_rows"] == {}

    # the exported predictions: boxes rescaled from frame_size (320x180) to image_size (640x360)
    assert items[0]["answer_spatial"] == {
        "2": [100.0, 100.0, 200.0, 200.0],
        "4": [200.0, 100.0, 250.0, 200.0],
    }
    assert items[0]["answer_spatial_2"] == {"2": [100.0, 100.0, 200.0, 200.0]}
    assert items[1]["answer_spatial"] == {"1": [[60.0, 60.0, 100.0, 100.0], [0.0, 0.0, 50.0, 100.0]]}
    assert items[1]["answer_spatial_2"] == {}
    assert (items[0]["answer_temporal"], items[1]["answer_temporal_2"]) == ([4.0, 10.0], [1.0, 3.0])
    assert (items[0]["answer_vqa"], items[1]["answer_vqa"]) == ("A red cup.", "green")


def test_missing_rows_and_keys_score_zero():
    rows = [r for r in vstar_rows() if r["vstar"]["index"] == 0 and r["vstar"]["query"] != "when"]
    report, items = score_vstar(rows, FixedJudge({"A red cup.": 3}))
    assert report["missing_rows"] == {"when1": 1, "when2": 1}
    assert report["chain1"]["temporal"]["mIoU"] == 0.0 and report["answer"]["accuracy"] == 1.0
    assert report["chain2"]["spatial"]["mIoU"] == 0.5  # GT at seconds 2 and 4, predicted at 2 only
    # a prediction keyed "3" (a claim at 3.4 s) does not match the GT box at second 4
    shifted = dict(items[0], answer_spatial={"2": [100, 100, 200, 200], "3": [200, 100, 300, 200]})
    assert score_items([shifted], [3])["chain1"]["spatial"]["mIoU"] == 0.5
    # an empty answer is not sent to the judge (eval.py skips the record)
    silent = dict(items[0], answer_vqa="")
    judge = FixedJudge({})
    from visd_exp.benchmarks.vstar import rate_items

    assert rate_items([silent], judge) == [None] and judge.seen == []


def test_interval_read_like_the_official_script():
    from visd_exp.benchmarks.vstar import predicted_segment

    assert predicted_segment({"prediction": answer("From <t>2.5</t>s to <t>8</t>s")}) == [2.5, 8.0]
    assert predicted_segment({"prediction": answer("[2.0, 8.0]")}) == [2.0, 8.0]  # exactly two numbers
    assert predicted_segment({"prediction": answer("at 2, 3 or 4 seconds")}) is None
    assert predicted_segment({"prediction": "<think>hmm"}) is None


def published(record: dict, legacy: bool) -> dict:
    boxes = [
        (frame["time"], frame["idx"], box)
        for frame in record["key_frames"]
        for boxes in record["key_items"][str(frame["idx"])].values()
        for box in boxes
    ]
    if legacy:
        bboxes = [{f"{t}_{f}": dict(zip(("xmin", "ymin", "xmax", "ymax"), b))} for t, f, b in boxes]
    else:
        bboxes = [
            {"timestamp": t, "frame_index": f, **dict(zip(("xmin", "ymin", "xmax", "ymax"), b))}
            for t, f, b in boxes
        ]
    w, h = record["image_size"]
    return {
        "vid": record["vid"],
        "domain": "test",
        "fps": 30.0,
        "width": w,
        "height": h,
        "frame_count": int(record["duration"] * 30),
        "question": record["question"],
        "answer": record["answer"],
        "temporal_question": "When?",
        "timestamps": record["segment"],
        "spatial_question": "Where?",
        "spatial_question_2": "Where?",
        "bboxes": bboxes,
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_results_file_shape_and_rescore(tmp_path, legacy):
    spare = dict(REC1, vid="v2")  # a third record that was not evaluated
    records = [published(r, legacy) for r in (REC0, REC1, spare)]
    original = tmp_path / ("vstar.jsonl" if legacy else "vstar.json")
    if legacy:
        original.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        original.write_text(json.dumps(records, indent=1))
    judge = FixedJudge({"A red cup.": 2, "green": None})
    reports = run_benchmarks(vstar_rows(), judge, tmp_path, vstar_file=original)
    report = reports["vstar"]
    assert report["results_file"] == str(tmp_path / "vstar_results.json")
    out = json.loads((tmp_path / "vstar_results.json").read_text())
    assert isinstance(out, list) and [r["vid"] for r in out] == ["v0", "v1", "v2"]
    for record in out:
        assert set(ANSWER_FIELDS) <= set(record) and {"question", "answer", "timestamps", "bboxes"} <= set(
            record
        )
        for box in record["bboxes"]:
            assert set(box) == {"timestamp", "frame_index", "xmin", "ymin", "xmax", "ymax"}
            assert isinstance(box["timestamp"], int) and isinstance(box["frame_index"], int)
    assert out[0]["bboxes"][1] == {
        "timestamp": 4,
        "frame_index": 120,
        "xmin": 200,
        "ymin": 100,
        "xmax": 300,
        "ymax": 200,
    }
    assert isinstance(out[0]["answer_vqa"], str)
    assert all(isinstance(out[i][f], list) for i in (0, 1) for f in ("answer_temporal", "answer_temporal_2"))
    assert all(isinstance(out[i][f], dict) for i in (0, 1) for f in ("answer_spatial", "answer_spatial_2"))
    assert out[0]["answer_spatial"]["4"] == [200.0, 100.0, 250.0, 200.0]  # original pixels
    assert all(out[2][f] is None for f in ANSWER_FIELDS)
    # eval.py's rules applied to the exported file give the report's numbers back
    again = score_items(out[:2], [2, None])
    for key in ("chain1", "chain2", "mAM", "mLGM"):
        assert again[key] == report[key]  # the same arithmetic on the same values


def test_results_file_from_another_file_is_refused(tmp_path):
    original = tmp_path / "other.json"
    original.write_text(json.dumps([published(REC1, False), published(REC0, False)]))
    _, items = score_vstar(vstar_rows(), FixedJudge({"A red cup.": 2, "green": 0}))
    with pytest.raises(ValueError, match="record 0 is 'v1'"):
        export_results(original, items, tmp_path / "out.json")
    # through run_benchmarks the report stands and says why there is no file
    report = run_benchmarks(vstar_rows(), FixedJudge({"A red cup.": 2, "green": 0}), tmp_path, original)[
        "vstar"
    ]
    assert (
        "record 0 is 'v1'" in report["results_file_error"] and not (tmp_path / "vstar_results.json").exists()
    )


def test_legacy_bboxes_converted():
    legacy = [
        {"12_360": {"xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4}},
        {"13.5_405": {"xmin": 5, "ymin": 6, "xmax": 7, "ymax": 8}},
    ]
    assert current_bboxes(legacy) == [
        {"timestamp": 12, "frame_index": 360, "xmin": 1, "ymin": 2, "xmax": 3, "ymax": 4},
        {"timestamp": 13.5, "frame_index": 405, "xmin": 5, "ymin": 6, "xmax": 7, "ymax": 8},
    ]


def test_read_published_forms(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"vid": "x"}, {"vid": "y"}]))
    (tmp_path / "b.jsonl").write_text('{"vid": "x"}\n\n{"vid": "y"}\n')
    assert (
        read_published(tmp_path / "a.json")
        == read_published(tmp_path / "b.jsonl")
        == [{"vid": "x"}, {"vid": "y"}]
    )


# ----------------------------------------------------------------------------- answer judges


def test_rule_grader():
    assert rule_rating("a red cup", "A red cup.") == 3
    assert rule_rating("red cup", "a red cup on the table") == 3  # recall 1, F1 0.8
    assert rule_rating("red cup", "The man is holding a red cup in his left hand") == 2
    assert rule_rating("red cup", "a blue cup") == 1  # half the answer
    assert rule_rating("red cup", "a dog") == 0
    assert rule_rating("red cup", "") == 0
    assert rule_rating("3 people", "2 people") == 1  # a number missing caps at 1
    assert rule_rating("a cup", "not a cup") == 1  # negation on one side caps at 1
    long_list = "red cup blue cup green cup yellow bowl white plate black knife"
    assert rule_rating("red cup", long_list) == 1  # a list of guesses is not an answer
    judge = build_answer_judge({"kind": "rule"})
    assert isinstance(judge, RuleAnswerJudge) and judge.description.startswith("rule")
    assert judge.rate([AnswerItem("q", "a red cup", "red cup"), AnswerItem("q", "blue", "green")]) == [3, 0]


def test_parse_rating():
    # eval.py: int(response), -1 when that fails; -1 is the unparseable mark, any other integer counts
    assert [parse_rating(x) for x in ("2", " 3\n", "0", "5", "+2")] == [2, 3, 0, 5, 2]
    assert [parse_rating(x) for x in ("two", "2.", "-1", "", "2 points", None)] == [None] * 6


class _ChatHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, self.headers.get("Authorization"), body))
        status, content = self.server.reply
        payload = (
            {"choices": [{"message": {"role": "assistant", "content": content}}]}
            if status == 200
            else {"error": {"message": f"bad key {self.headers.get('Authorization', '')[7:]}"}}
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatHandler)
    server.requests, server.reply = [], (200, "2")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_openai_judge_over_loopback_http(chat_server, monkeypatch, caplog):
    server, url = chat_server
    monkeypatch.setenv("VISD_TEST_JUDGE_KEY", "sk-test-secret")
    cfg = {
        "kind": "openai",
        "base_url": url,
        "model": "judge-model",
        "api_key_env": "VISD_TEST_JUDGE_KEY",
        "timeout_s": 5,
    }
    judge = build_answer_judge(cfg)
    try:
        assert isinstance(judge, OpenAIAnswerJudge) and "sk-test-secret" not in repr(judge)
        assert judge.rate([AnswerItem("What is held?", "a red cup", "a cup")]) == [2]
        path, auth, body = server.requests[0]
        assert path == "/v1/chat/completions" and auth == "Bearer sk-test-secret"
        assert body["model"] == "judge-model" and body["messages"][0]["role"] == "system"
        user = body["messages"][1]["content"]
        assert "Question: What is held?" in user and "Groundtruth answer: a red cup" in user
        assert "Candidate answer: a cup" in user
        server.reply = (200, "The answer is mostly right.")  # not an integer: unparseable
        assert judge.rate([AnswerItem("q", "a", "b")]) == [None]
        server.reply = (401, None)
        with pytest.raises(AnswerJudgeError, match="HTTP 401") as err:
            judge.rate([AnswerItem("q", "a", "b")])
        assert "sk-test-secret" not in str(err.value) and "***" in str(err.value)
        assert "sk-test-secret" not in caplog.text
    finally:
        judge.close()


def test_openai_judge_needs_its_key(monkeypatch):
    monkeypatch.delenv("VISD_TEST_JUDGE_KEY", raising=False)
    cfg = {
        "kind": "openai",
        "base_url": "https://example.invalid/v1",
        "model": "m",
        "api_key_env": "VISD_TEST_JUDGE_KEY",
    }
    with pytest.raises(AnswerJudgeError, match="VISD_TEST_JUDGE_KEY"):
        build_answer_judge(cfg)
    with pytest.raises(AnswerJudgeError, match="api_key_env"):
        build_answer_judge({**cfg, "api_key_env": None})
    with pytest.raises(AnswerJudgeError, match="kind"):
        build_answer_judge({"kind": "gpt"})


def test_evaluate_stops_on_a_missing_key_before_loading_a_model(monkeypatch, tmp_path):
    from omegaconf import OmegaConf

    import visd_exp.evaluate as ev

    monkeypatch.delenv("VISD_TEST_JUDGE_KEY", raising=False)

    def no_model(cfg):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(ev, "load_for_eval", no_model)
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "paths": {"output_dir": str(tmp_path)},
            "answer_judge": {
                "kind": "openai",
                "base_url": "https://example.invalid/v1",
                "model": "m",
                "api_key_env": "VISD_TEST_JUDGE_KEY",
                "timeout_s": 60,
            },
        }
    )
    with pytest.raises(AnswerJudgeError, match="VISD_TEST_JUDGE_KEY"):
        ev.evaluate(cfg)


# ----------------------------------------------------------------------------- grounding and tables


def grounding_rows(source: str) -> list[dict]:
    rows = [{"source": source, "task": "temporal_grounding", "tiou": t} for t in (0.2, 0.4, 0.6, 0.8)]
    # rows with a completion are scored from it: [0, 10] vs [0, 5] -> 0.5; "[2.0, 4.0]" (two numbers, as
    # V-STaR's reader takes them; the strict reward grammar would give 0) vs [2, 6] -> 0.5
    rows.append(
        {"source": source, "prediction": answer("From <t>0</t>s to <t>10</t>s"), "segment": [0.0, 5.0]}
    )
    rows.append({"source": source, "prediction": answer("[2.0, 4.0]"), "segment": [2.0, 6.0], "tiou": 0.0})
    return rows


def test_charades_and_tvgbench_by_hand():
    rows = (
        grounding_rows("charades_sta") + grounding_rows("tvgbench") + [{"source": "synthetic", "tiou": 1.0}]
    )
    expected = {"num_queries": 6, "mIoU": 3.0 / 6, "R1@0.3": 5 / 6, "R1@0.5": 4 / 6, "R1@0.7": 1 / 6}
    assert grounding_report(rows, "charades_sta") == pytest.approx(expected)
    reports = run_benchmarks(rows)
    assert set(reports) == {"charades_sta", "tvgbench"}
    assert {k: v for k, v in reports["tvgbench"].items() if k != "table"} == pytest.approx(expected)
    # report["table"]: the paper's columns in its order, in percent (Table 4 for Charades-STA)
    assert list(reports["charades_sta"]["table"]) == ["R@0.3", "R@0.5", "R@0.7", "mIoU"]
    assert reports["tvgbench"]["table"] == pytest.approx(
        {"mIoU": 50.0, "R@0.3": 500 / 6, "R@0.5": 400 / 6, "R@0.7": 100 / 6}
    )
    assert run_benchmarks([{"source": "synthetic", "tiou": 1.0}]) == {}


def _header(md: str, first_column: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {first_column} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_tables_column_order_and_percent(tmp_path):
    rows = vstar_rows() + grounding_rows("charades_sta") + grounding_rows("tvgbench")
    reports = run_benchmarks(rows, FixedJudge({"A red cup.": 2, "green": None}))
    md = benchmark_tables(reports)
    assert md.index("## V-STaR") < md.index("## Charades-STA") < md.index("## TVGBench")
    assert (
        _header(md, "What Acc")
        == list(VSTAR_COLUMNS)
        == [
            "What Acc",
            "When tIoU Chain1",
            "When tIoU Chain2",
            "Where sIoU Chain1",
            "Where sIoU Chain2",
            "mAM",
            "mLGM",
        ]
    )
    assert list(CHARADES_COLUMNS) == ["R@0.3", "R@0.5", "R@0.7", "mIoU"]
    assert list(TVGBENCH_COLUMNS) == ["mIoU", "R@0.3", "R@0.5", "R@0.7"]
    lines = md.splitlines()
    v = lines[lines.index("| " + " | ".join(VSTAR_COLUMNS) + " |") + 2]
    lgm = (
        -(math.log(1 - ACC) + math.log(1 - T1) + math.log(1 - S1)) / 3
        - (math.log(1 - ACC) + math.log(1 - T2) + math.log(1 - S2)) / 3
    ) / 2
    assert v == f"| 50.0 | 25.0 | 75.0 | 62.5 | 25.0 | 47.9 | {100 * lgm:.1f} |"
    charades = lines[lines.index("| R@0.3 | R@0.5 | R@0.7 | mIoU |") + 2]
    assert charades == "| 83.3 | 66.7 | 16.7 | 50.0 |"
    tvg = lines[lines.index("| mIoU | R@0.3 | R@0.5 | R@0.7 |") + 2]
    assert tvg == "| 50.0 | 83.3 | 66.7 | 16.7 |"
    assert "graded by fixed (test)" in md
    assert benchmark_tables({}) == ""


def test_evaluate_adds_benchmark_reports(monkeypatch, tmp_path):
    """evaluate() with the model and the data module faked: rows carry the sample fields, the reports,
    tables and the V-STaR results file are written, and the generic report is unchanged."""
    from omegaconf import OmegaConf

    import visd_exp.data.datamodule as dm
    import visd_exp.evaluate as ev
    import visd_exp.evaluation as evaluation

    samples, completions = [], {}
    for index, record in enumerate((REC0, REC1)):
        for (query, chain), completion in COMPLETIONS[index].items():
            samples.append(vstar_sample(index, record, query, chain))
            completions[samples[-1]["id"]] = completion
    charades = {"id": "c0", "source": "charades_sta", "task": "temporal_grounding", "question": "q"}
    charades.update(
        answer="From <t>0.0</t>s to <t>5.0</t>s", segment=[0.0, 5.0], duration=30.0, video_path="x"
    )
    samples.append(charades)
    completions["c0"] = answer("From <t>0.0</t>s to <t>10.0</t>s")  # IoU 0.5
    original = tmp_path / "vstar.json"
    original.write_text(json.dumps([published(r, False) for r in (REC0, REC1)]))

    class FakeData:
        def __init__(self, cfg, processor):
            self.datasets = {}

        def prepare_data(self):
            pass

        def build_split(self, split):
            return type("Split", (), {"records": samples, "plans": [None] * len(samples)})()

        def loader(self, split, shuffle):
            return [{"samples": samples[:4]}, {"samples": samples[4:]}]

    def fake_predict(model, processor, batches, max_completion_length, engine=None):
        for batch in batches:
            for sample in batch["samples"]:
                yield score_prediction(completions[sample["id"]], sample)

    model = type("Model", (), {"eval": lambda self: self})()
    monkeypatch.setattr(ev, "load_for_eval", lambda cfg, device=None: (model, None, "fake model", {}))
    monkeypatch.setattr(dm, "VideoQADataModule", FakeData)
    monkeypatch.setattr(evaluation, "predict", fake_predict)
    cfg = OmegaConf.create(
        {
            "seed": 0,
            "paths": {"output_dir": str(tmp_path / "out")},
            "data": {"train_file": None, "val_file": None, "test_file": str(original), "batch_size": 1},
            "split": "test",
            "data_file": None,
            "max_samples": None,
            "batch_size": 4,
            "max_completion_length": 32,
            "vstar_file": None,
            "answer_judge": {"kind": "rule"},
        }
    )
    report = ev.evaluate(cfg)
    out = tmp_path / "out"
    assert report["num_samples"] == 11 and "accuracy" in report and "temporal" in report
    v = report["benchmarks"]["vstar"]
    assert v["grader"].startswith("rule") and v["answer"]["accuracy"] == 0.5  # "A red cup." 3, "green" 0
    assert (v["chain1"]["temporal"]["mIoU"], v["chain2"]["spatial"]["mIoU"]) == (T1, S2)
    assert report["benchmarks"]["charades_sta"]["mIoU"] == 0.5
    assert json.loads((out / "report.json").read_text())["benchmarks"]["vstar"]["mAM"] == v["mAM"]
    md = (out / "report.md").read_text()
    assert "| Acc |" in md and "| What Acc |" in md and "| R@0.3 | R@0.5 | R@0.7 | mIoU |" in md
    results = json.loads((out / "vstar_results.json").read_text())
    assert [r["vid"] for r in results] == ["v0", "v1"] and results[0]["answer_vqa"] == "A red cup."
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert rows[0]["vstar"] == {"vid": "v0", "index": 0, "query": "what", "chain": 0}
    assert rows[4]["frame_size"] == [320, 180] and rows[10]["source"] == "charades_sta"
