"""The strict readers (rewards/reading.py) return exactly what Open-o3-Video's regular expressions return,
in linear time. The regexes below are the grammar as the original writes it; random strings built from
its delimiters (where backtracking decides the result) must read the same both ways."""

from __future__ import annotations

import random
import re
import time

import pytest

from visd_exp.rewards import reading as R

FRAGMENTS = [
    "<obj>", "</obj>", "<box>[", "]</box>", "<box>", "</box>", "at<t>", "</t>s", "<t>", "</t>", "at", "s",
    "a", "dog", "1", "2.5", ".", " ", "\n", "[", "]", ",", "[1,2,3,4]", "<think>", "</think>", "<answer>",
    "</answer>", " to ", "x",
]  # fmt: skip
CLAIM = re.compile(r"<obj>(.*?)</obj>((?:<box>\[.*?\]</box>)+)at<t>(.*?)</t>s", re.DOTALL)
THINK_TIME = re.compile(r"<t>([\d.]+)</t>s")
INTERVAL = re.compile(r"<t>(\d+\.?\d*)</t>s to <t>(\d+\.?\d*)</t>s")
NAMED_BOX = re.compile(r"<obj>(\w+)</obj><box>(\[.*?\])</box>")
ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def _claim_pieces(rng: random.Random) -> list[str]:
    boxes = []
    for _ in range(rng.randint(1, 3)):
        boxes += ["<box>[", rng.choice(["1,2,3,4", "1,2", "a", ""]), "]</box>"]
    return [
        "<obj>",
        rng.choice(["dog", "", "a b"]),
        "</obj>",
        *boxes,
        "at<t>",
        rng.choice(["1", "2.5", "x"]),
        "</t>s",
    ]


def strings(n: int, seed: int, max_units: int = 5):
    """Claims (some with a piece dropped, replaced or doubled) mixed with random fragments."""
    rng = random.Random(seed)
    for _ in range(n):
        out = []
        for _ in range(rng.randint(0, max_units)):
            if rng.random() < 0.3:
                out += [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 4))]
                continue
            pieces = _claim_pieces(rng)
            for _ in range(rng.choice([0, 0, 1, 2])):
                i = rng.randrange(len(pieces))
                op = rng.randrange(3)
                if op == 0:
                    del pieces[i]
                elif op == 1:
                    pieces[i] = rng.choice(FRAGMENTS)
                else:
                    pieces.insert(i, pieces[i])
            out += pieces
        yield "".join(out)


@pytest.mark.parametrize("seed", range(4))
def test_linear_readers_equal_the_regexes(seed):
    claims_seen = 0
    for text in strings(2500, seed):
        want = [m.groups() for m in CLAIM.finditer(text)]
        assert R.claim_spans(text) == want, text
        claims_seen += len(want)
        assert R.bracket_groups(text) == re.findall(r"\[.*?\]", text), text
        assert R.box_tag_groups(text) == re.findall(r"<box>(\[.*?\])</box>", text), text
        assert R.has_named_box(text) == (NAMED_BOX.search(text) is not None), text
        assert R._THINK_TIME_RE.findall(text) == THINK_TIME.findall(text), text
        m = INTERVAL.search(text)
        m2 = R._INTERVAL_RE.search(text)
        assert (m and m.groups()) == (m2 and m2.groups()), text
        m = ANSWER.search(text)
        assert R.first_answer(text) == (m.group(1).strip() if m else None), text
        m, span = THINK.search(text), R.block(text, "<think>", "</think>")
        assert (m.span(1) if m else None) == span, text
    assert claims_seen > 100  # the generator does produce claims, malformed neighbours included


def test_cross_reaching_claims_as_the_original_reads_them():
    """A claim written " at <t>" is not a claim, and the original's pattern reaches across it into the
    next claim: one claim, the first name, every box in between, the second time."""
    text = "<obj>a</obj><box>[1,2,3,4]</box> at <t>3</t>s <obj>b</obj><box>[5,6,7,8]</box>at<t>5</t>s"
    (c,) = R.strict_claims(text)
    assert c.name == "a" and c.time == 5.0 and c.boxes == ((1, 2, 3, 4), (5, 6, 7, 8))


ADVERSARIAL = [
    "<think>" * 15_000,
    "<obj>" * 20_000,
    "<obj></obj>" * 10_000,
    "<obj>a</obj><box>[" * 10_000,
    "<obj>a</obj><box>[" + "[" * 50_000 + "\n]</box>at<t>1</t>s",
    "<box>[" * 20_000,
    "<answer><t>" + "9" * 100_000 + "</answer>",
    "<t>" + "1." * 50_000,
    "<obj>" + "a" * 100_000 + "</obj><box>[",
    "<obj>a</obj>" + "<box>[1,2,3,4]</box>" * 5_000 + "at<t>1</t>s" * 2,
    "<think>" + "<obj>a</obj><box>[1,2,3,4]</box>at<t>1</t>s " * 2_500 + "</think><answer>B</answer>",
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_strict_reading_is_linear_on_degenerate_text(text):
    from visd_exp.rewards import score

    start = time.perf_counter()
    R.read_strict(text)
    for task in ("temporal QA", "temporal-spatial free-form QA", "visual QA", "General video QA MCQ"):
        score(text, {"task": task, "answer": "[1.0, 2.0]", "key_frames": [{"idx": 1, "time": 1.0}]})
    assert time.perf_counter() - start < 2.0  # the regexes take minutes on several of these
