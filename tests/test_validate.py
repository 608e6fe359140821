"""Data validation before training: every bad record reported with file, line and field, strict and
lenient command lines, the problem cap, and the Python API, on real synthetic mp4 and JSONL files."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys

import pytest

from visd_exp.data.synthetic import generate
from visd_exp.data.validate import (
    Problem,
    load_valid_records,
    option_letters,
    validate_file,
)

PROBLEM_LINE = re.compile(r"^(?P<path>.+?\.jsonl):(?P<line>\d+): (?P<field>.+?): (?P<message>.+)$")


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "visd_exp.data.validate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def parse_problems(stdout: str, prefix: str = "") -> list[tuple[str, int, str, str]]:
    rows = []
    for line in stdout.splitlines():
        if prefix and line.startswith(prefix):
            line = line[len(prefix) :]
        match = PROBLEM_LINE.match(line)
        if match:
            rows.append((match["path"], int(match["line"]), match["field"], match["message"]))
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("validate") / "syn", num_videos=3, seed=0)


def by_task(dataset, task: str) -> dict:
    records = [
        json.loads(x)
        for s in ("train", "val", "test")
        for x in (dataset / f"{s}.jsonl").read_text().splitlines()
    ]
    return next(r for r in records if r["task"] == task)


def variant(base: dict, new_id: str, **changes) -> dict:
    record = copy.deepcopy(base)
    record["id"] = new_id
    for key, value in changes.items():
        if value is KeyError:
            del record[key]
        else:
            record[key] = value
    return record


def first_box_key(record: dict) -> tuple[str, str]:
    key = next(iter(record["key_items"]))
    return key, next(iter(record["key_items"][key]))


@pytest.fixture(scope="module")
def bad_file(dataset):
    """A JSONL mixing valid lines with one of each kind of bad record; expected {line: (field, words)}."""
    tg = by_task(dataset, "temporal_grounding")
    st = by_task(dataset, "spatio_temporal_grounding")
    mc = by_task(dataset, "multiple_choice")
    ff = by_task(dataset, "free_form")
    trunc = dataset / "videos" / "truncated.mp4"
    shutil.copy(dataset / tg["video_path"], trunc)
    trunc.write_bytes(trunc.read_bytes()[:600])

    key, name = first_box_key(st)
    outside = copy.deepcopy(st["key_items"])
    outside[key][name][0] = [30, 30, 70, 50]  # x2 = 70 > 56
    flipped = copy.deepcopy(st["key_items"])
    flipped[key][name][0] = [40, 10, 20, 30]
    late_frames = copy.deepcopy(st["key_frames"])
    late_frames[0]["time"] = 20.0  # the mp4 lasts 8 s: far past what clipping allows (5 s)
    box_field = f"key_items[{key}][{name}][0]"

    lines = [
        (json.dumps(tg), None),  # 1
        ('{"id": "broken", "task": "free_form", ', ("<json>", "column")),  # 2
        (json.dumps(variant(ff, "no-question", question=KeyError)), ("question", "missing")),  # 3
        (json.dumps(variant(ff, "empty-answer", answer="   ")), ("answer", "empty")),  # 4
        (json.dumps(ff), None),  # 5
        (json.dumps(variant(ff, "bad-task", task="captioning")), ("task", "unknown task")),  # 6
        (json.dumps(variant(tg, "seg-order", segment=[5.0, 5.0])), ("segment", "not before")),  # 7
        (json.dumps(variant(tg, "seg-late", segment=[2.0, 30.0])), ("segment", "past the video")),  # 8
        (json.dumps(variant(st, "kf-late", key_frames=late_frames)), ("key_frames[0].time", "outside")),  # 9
        (json.dumps(variant(st, "box-out", key_items=outside)), (box_field, "outside the 56x56")),  # 10
        (json.dumps(variant(st, "box-flip", key_items=flipped)), (box_field, "x1 < x2")),  # 11
        (json.dumps(mc), None),  # 12
        (
            json.dumps(variant(tg, "no-video", video_path="videos/nope.mp4")),
            ("video_path", "not found"),
        ),  # 13
        (
            json.dumps(variant(tg, "trunc", video_path="videos/truncated.mp4")),
            ("video_path", "cannot decode"),
        ),  # 14
        (json.dumps(variant(mc, "mc-answer", answer="E")), ("answer", "not one of the option letters")),  # 15
        (json.dumps(variant(ff, tg["id"])), ("id", "duplicate id")),  # 16
        ("", None),  # 17: blank lines are skipped, but still counted in line numbers
        (json.dumps(st), None),  # 18
        # Open-o3-Video's task strings: what the task's rewards need must be there
        (
            json.dumps(variant(tg, "o3-tg", task="temporal QA", segment=KeyError, answer="[2.0, 4.0]")),
            None,
        ),  # 19
        (
            json.dumps(variant(tg, "o3-tg-no-interval", task="temporal QA", segment=KeyError, answer="soon")),
            ("segment", "needs the interval"),
        ),  # 20
        (
            json.dumps(variant(tg, "o3-tgc", task="temporal QA (MCQ)", segment=KeyError, answer="C\n[1, 3]")),
            None,
        ),
        (
            json.dumps(variant(tg, "o3-tgc-no-letter", task="temporal QA (MCQ)", answer="[1.0, 3.0]")),
            ("answer", "option letter"),
        ),  # 22
        (json.dumps(variant(st, "o3-st", task="temporal-spatial free-form QA", answer="a red thing")), None),
        (
            json.dumps(
                variant(st, "o3-st-no-boxes", task="temporal-spatial free-form QA", key_items=KeyError)
            ),
            ("key_items", "needs boxes"),
        ),  # 24
        (json.dumps(variant(mc, "o3-mc", task="General video QA MCQ", options=KeyError)), None),  # 25
        (json.dumps(variant(ff, "video-r1-num", task="numerical", answer="3")), None),  # 26
    ]
    path = dataset / "bad.jsonl"
    path.write_text("".join(text + "\n" for text, _ in lines))
    expected = {n: want for n, (_, want) in enumerate(lines, start=1) if want}
    valid = [n for n, (text, want) in enumerate(lines, start=1) if text and not want]
    return path, expected, valid


def test_strict_cli_reports_every_problem_with_file_line_and_field(bad_file):
    path, expected, _ = bad_file
    result = run_cli(path)
    assert result.returncode == 1, result.stdout + result.stderr
    rows = parse_problems(result.stdout)
    assert {row[0] for row in rows} == {str(path)}
    assert sorted((line, field) for _, line, field, _ in rows) == sorted(
        (n, f) for n, (f, _) in expected.items()
    )
    for _, line, _, message in rows:
        assert expected[line][1] in message, (line, message)
    assert f"{len(expected)} problems" in result.stdout.splitlines()[-1]


def test_lenient_cli_warns_and_reports_kept_and_skipped(bad_file):
    path, expected, valid = bad_file
    result = run_cli(path, "--lenient")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = parse_problems(result.stdout, prefix="warning: ")
    assert len(rows) == len(expected) and all(
        x.startswith("warning: ") for x in result.stdout.splitlines()[:-1]
    )
    total = len(expected) + len(valid)
    assert f"kept {len(valid)} of {total} records, skipped {len(expected)}" in result.stdout


def test_valid_synthetic_files_validate_clean(dataset):
    files = [dataset / f"{s}.jsonl" for s in ("train", "val", "test")]
    result = run_cli(*files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("OK: ") and "3 files, 3 videos probed" in result.stdout
    for f in files:
        report = validate_file(f)
        assert report.ok and not report.truncated and len(report.valid_lines) == report.total > 0


def test_max_problems_caps_the_output(bad_file):
    path, expected, _ = bad_file
    result = run_cli(path, "--max-problems", "3")
    assert result.returncode == 1
    assert len(parse_problems(result.stdout)) == 3
    assert f"... and {len(expected) - 3} more" in result.stdout
    report = validate_file(path, max_problems=3)
    assert len(report.problems) == 3 and report.truncated and report.num_problems == len(expected)
    assert report.skipped == len(expected)  # the cap limits what is kept, not what is checked


def test_api_returns_the_same_problems_and_valid_lines(bad_file):
    path, expected, valid = bad_file
    report = validate_file(path)
    assert not report.ok and report.total == len(expected) + len(valid)
    assert report.valid_lines == valid
    assert all(isinstance(p, Problem) and p.path == str(path) for p in report.problems)
    cli_lines = [x for x in run_cli(path).stdout.splitlines() if PROBLEM_LINE.match(x)]
    assert [str(p) for p in report.problems] == cli_lines


def test_load_valid_records_keeps_only_good_lines(bad_file):
    path, _, valid = bad_file
    records, report = load_valid_records(path)
    assert [int(r["_where"].rsplit(":", 1)[1]) for r in records] == valid == report.valid_lines
    assert all(r["video_path"].startswith(str(path.parent)) for r in records)


def test_missing_file_is_one_clear_line_and_exit_2(tmp_path):
    result = run_cli(tmp_path / "nope.jsonl")
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "nope.jsonl" in lines[0] and "not found" in lines[0]
    with pytest.raises(FileNotFoundError):
        validate_file(tmp_path / "nope.jsonl")


def test_probed_duration_is_used_when_the_record_has_none(dataset, tmp_path):
    tg = by_task(dataset, "temporal_grounding")
    late = variant(tg, "late", duration=KeyError, segment=[2.0, 30.0])  # the mp4 lasts 8 s
    path = tmp_path / "late.jsonl"
    path.write_text(json.dumps({**late, "video_path": str(dataset / tg["video_path"])}) + "\n")
    (problem,) = validate_file(path).problems
    assert (problem.line, problem.field) == (1, "segment") and "duration 8" in problem.message
    assert validate_file(path, probe_videos=False).ok  # no duration known: the upper bound is skipped


def test_ends_slightly_past_the_probed_duration_are_clipped_and_counted(dataset, tmp_path):
    """Real annotations end a little past the video (Charades-STA): clipped to the probed 8 s, counted;
    within max(5 s, 10%) only: beyond that it stays an error."""
    tg = by_task(dataset, "temporal_grounding")
    st = by_task(dataset, "spatio_temporal_grounding")
    frames = copy.deepcopy(st["key_frames"])
    frames[0]["time"] = 9.5
    rows = [
        variant(tg, "end-9", duration=KeyError, segment=[2.0, 9.0]),
        variant(tg, "end-13", duration=KeyError, segment=[2.0, 13.0]),
        variant(tg, "end-13.5", duration=KeyError, segment=[2.0, 13.5]),
        variant(st, "kf-9.5", duration=KeyError, key_frames=frames),
        variant(tg, "start-past", duration=KeyError, segment=[8.5, 9.0]),
    ]
    path = tmp_path / "clip.jsonl"
    path.write_text(
        "".join(json.dumps({**r, "video_path": str(dataset / r["video_path"])}) + "\n" for r in rows)
    )
    report = validate_file(path)
    assert report.clipped == 3
    assert [(p.line, p.field) for p in report.problems] == [(3, "segment"), (5, "segment")]
    by_id = {r["id"]: r for r in report.records}
    assert by_id["end-9"]["segment"] == [2.0, 8.0] and by_id["end-13"]["segment"] == [2.0, 8.0]
    assert by_id["kf-9.5"]["key_frames"][0]["time"] == 8.0
    result = run_cli(path, "--lenient")
    assert "clipped 3 interval end(s)" in result.stdout and "kept 3 of 5 records" in result.stdout


def test_normalised_boxes_in_a_pixel_field_are_reported_never_trained_on(dataset, tmp_path):
    """STGR's key_items are normalised; in the project schema they are pixels. Every box within [0, 1]
    passes the inside-the-frame check, so it is caught by shape: an error naming file, line and field."""
    st = by_task(dataset, "spatio_temporal_grounding")
    key, name = first_box_key(st)
    normalised = {key: {name: [[0.1, 0.2, 0.45, 0.6]]}}
    vqa = variant(st, "vqa", task="visual_qa", answer="<obj>cup</obj><box>[0.1,0.1,0.5,0.5]</box>")
    rows = [variant(st, "norm", key_items=normalised), vqa, st]
    path = tmp_path / "norm.jsonl"
    path.write_text(
        "".join(json.dumps({**r, "video_path": str(dataset / r["video_path"])}) + "\n" for r in rows)
    )
    report = validate_file(path)
    assert [(p.line, p.field) for p in report.problems] == [(1, "key_items"), (2, "answer")]
    assert all("normalised" in p.message for p in report.problems)
    assert [r["id"] for r in report.records] == [st["id"]]


def test_a_json_array_of_project_records_is_read(dataset, tmp_path):
    """A JSON array (how most published files come) is read element by element, each with its line."""
    tg, ff = by_task(dataset, "temporal_grounding"), by_task(dataset, "free_form")
    rows = [{**r, "video_path": str(dataset / r["video_path"])} for r in (tg, ff)]
    path = tmp_path / "array.json"
    path.write_text("[\n" + ",\n".join(json.dumps(r, indent=1) for r in rows) + "\n]\n")
    report = validate_file(path, fmt="project")
    second_line = 2 + json.dumps(rows[0], indent=1).count("\n") + 1
    assert report.ok and [r["_where"] for r in report.records] == [f"{path}:2", f"{path}:{second_line}"]


def test_every_problem_of_one_record_is_reported(tmp_path):
    record = {"id": 3, "task": "multiple_choice", "video_path": "v.mp4", "question": "q?", "answer": "A"}
    record |= {
        "options": ["A. x"],
        "image_size": [0, 5],
        "duration": -1,
        "key_frames": [{"idx": -1, "time": True}],
    }
    path = tmp_path / "many.jsonl"
    path.write_text(json.dumps(record) + "\n[1, 2]\n")
    fields = [(p.line, p.field) for p in validate_file(path, probe_videos=False).problems]
    assert fields == [
        (1, "id"),
        (1, "options"),
        (1, "duration"),
        (1, "image_size"),
        (1, "key_frames[0].idx"),
        (1, "key_frames[0].time"),
        (2, "<record>"),
    ]


def test_option_letters():
    assert option_letters(["A. left", "(B) right", "c: up"]) == ["A", "B", "C"]
    assert option_letters(["left", "right"]) == ["A", "B"]
