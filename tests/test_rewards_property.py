"""Property tests: the verifier never raises and stays in range on random and mutilated completions.

11,000 completions in all (8,000 mutilated valid ones + 3,000 random tag soups), derandomized.
"""

import math
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visd_exp.rewards import COMPONENTS, parse_completion, score

SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))

SAMPLES = [
    {
        "task": "temporal_grounding",
        "segment": [2.0, 6.0],
        "key_frames": [{"idx": 90, "time": 3.0}],
        "duration": 10.0,
    },
    {
        "task": "spatio_temporal_grounding",
        "key_frames": [{"idx": 30, "time": 1.0}, {"idx": 90, "time": 3.0}],
        "key_items": {
            "30": {"red square": [[0, 0, 10, 10]]},
            "90": {"cat": [[10, 10, 30, 30], [0, 0, 5, 5]]},
        },
        "image_size": [100, 100],
        "frame_size": [50, 60],
        "duration": 10.0,
    },
    {"task": "multiple_choice", "answer": "B", "options": ["A. left", "B. right"]},
    {"task": "free_form", "answer": "the red square moves left", "segment": [0.0, 1.0]},
    {"task": "numerical", "answer": "3"},
    {"task": "regression", "answer": "10", "key_frames": [{"idx": 1, "time": 0.5}]},
    {"task": "ocr", "answer": "STOP AHEAD"},
    {"task": "temporal QA (MCQ)", "answer": "C\n[11.5, 19.0]"},
    {"task": "temporal-spatial free-form QA", "answer": "a dog", "key_frames": [{"idx": 1, "time": 0.5}]},
    {"task": "visual QA", "answer": "<obj>car</obj><box>[1, 2, 30, 40]</box>", "image_size": [50, 50]},
    {"task": "visual QA"},  # no reference box: its components are masked
    {"task": "General video QA MCQ"},
    # broken records must not break the verifier either
    {
        "task": "spatio_temporal_grounding",
        "key_items": "junk",
        "key_frames": [None, {"idx": "x"}, {"idx": 2}],
    },
    {"task": "temporal_grounding", "segment": ["a", 1], "duration": "long", "image_size": [0, 0]},
    {"task": "temporal QA", "answer": "[1, 2, 3]"},
    {"task": "temporal QA (MCQ)", "answer": "C"},
    {
        "task": "spatio_temporal_grounding",
        "key_frames": [{"idx": 5, "time": float("nan")}, {"idx": 6, "time": 2.0}],
        "key_items": {"6": {"x": [1, 2, 3, 4]}, "5": {"y": [[0, 0, 1, 1]]}, "bad": {}},
        "image_size": [0, 10],
        "frame_size": [10, 10],
    },
]
CFGS = [
    None,
    {"one_sided_gate": True, "name_match": "none"},
    {"divide_by": "matched", "name_match": "strict", "parsing": "lenient"},
    {"one_sided_gate": True, "box_match": "object_mean", "outside_video_zero": True},
    {"weights": {"ans": 2.0, "fmt": 0.5, "thk_spa": 3.0}, "tau": 0.0, "sigma_start": 0.0},
]
MAX_TOTAL = 6 * 3.0

ODD_NUMBERS = [
    "1e400",
    "-1e400",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "9" * 400,
    "1e-400",
    "0x1F",
    "",
    "3.",
    ".5",
    "--1",
]
INSERTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<t>", "</t>", "<box>", "</box>", "<obj>", "</obj>",
    "1e400", "NaN", "inf", "\x00", "🐱", "\u202e", "猫", "<t>1e400</t>", "<box>[nan,0,1,1]</box>", "<t>-0</t>",
    "<box>[1e308,1e308,-1e308,1e308]</box>", "From <t>", "</t>s to <t>", "9" * 500, "<<>>", "Answer: ",
]  # fmt: skip
TAG_RE = re.compile(r"</?\w+>")

numbers = st.one_of(
    st.floats(-20, 20, allow_nan=False).map(lambda x: f"{x:.3g}"),
    st.integers(-5, 15).map(str),
    st.sampled_from(ODD_NUMBERS),
)
names = st.sampled_from(["red square", "cat", "Red Square", "cats", "a", "", "猫", "blue circle"])


@st.composite
def claims(draw):
    boxes = "".join(
        f"<box>[{','.join(draw(numbers) for _ in range(4))}]</box>" for _ in range(draw(st.integers(0, 3)))
    )
    time = f"at<t>{draw(numbers)}</t>s" if draw(st.booleans()) else ""
    return f"<obj>{draw(names)}</obj>{boxes}{time}"


pieces = st.one_of(claims(), numbers.map(lambda n: f" at <t>{n}</t>s "), st.text(max_size=12))
answers = st.one_of(
    st.sampled_from(["A", "B", "(B)", "Correct Option: B", "right", "3", "10", "the red square moves left"]),
    st.tuples(numbers, numbers).map(lambda p: f"From <t>{p[0]}</t>s to <t>{p[1]}</t>s"),
    st.lists(claims(), max_size=3).map("".join),
    numbers,
    st.text(max_size=20),
)


@st.composite
def valid_completions(draw):
    think = " ".join(draw(st.lists(pieces, max_size=8)))
    return f"<think>{think}</think>\n<answer>{draw(answers)}</answer>"


@st.composite
def mutilated(draw):
    text = draw(valid_completions())
    for _ in range(draw(st.integers(0, 4))):
        n = len(text)
        i, j = sorted((draw(st.integers(0, n)), draw(st.integers(0, n))))
        op = draw(
            st.sampled_from(["cut_tail", "cut_head", "duplicate", "swap_tags", "drop_tag", "insert", "noise"])
        )
        if op == "cut_tail":
            text = text[:i]
        elif op == "cut_head":
            text = text[i:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif op in ("swap_tags", "drop_tag"):
            tags = list(TAG_RE.finditer(text))
            if len(tags) >= 2:
                a, b = sorted(
                    draw(st.lists(st.sampled_from(tags), min_size=2, max_size=2)), key=lambda m: m.start()
                )
                if op == "drop_tag":
                    text = text[: a.start()] + text[a.end() :]
                elif a.end() <= b.start():
                    text = (
                        text[: a.start()]
                        + b.group()
                        + text[a.end() : b.start()]
                        + a.group()
                        + text[b.end() :]
                    )
        elif op == "insert":
            text = text[:i] + draw(st.sampled_from(INSERTS)) + text[i:]
        else:
            text = text[:i] + draw(st.text(max_size=10)) + text[i:]
    return text


tag_soup = st.lists(st.one_of(st.sampled_from(INSERTS), st.text(max_size=6), numbers), max_size=30).map(
    "".join
)


def check(text, sample, progress, cfg):
    out = score(text, sample, progress=progress, cfg=cfg)
    assert tuple(out) == (*COMPONENTS, "total")
    for k in COMPONENTS:
        v = out[k]
        assert v is None or (isinstance(v, float) and 0.0 <= v <= 1.0), (k, v)
    assert out["fmt"] is not None
    assert (
        isinstance(out["total"], float) and math.isfinite(out["total"]) and 0.0 <= out["total"] <= MAX_TOTAL
    )
    p = parse_completion(text)
    assert all(math.isfinite(t) for t in p.think_times)
    assert all(math.isfinite(v) for c in p.think_claims + p.answer_claims for b in c.boxes for v in b)


progress = st.one_of(st.floats(0, 1), st.floats(-10, 10), st.just(float("nan")))


@settings(max_examples=8000, **SETTINGS)
@given(mutilated(), st.sampled_from(SAMPLES), progress, st.sampled_from(CFGS))
def test_mutilated_completions_never_break_the_verifier(text, sample, p, cfg):
    check(text, sample, p, cfg)


@settings(max_examples=3000, **SETTINGS)
@given(tag_soup, st.sampled_from(SAMPLES), progress, st.sampled_from(CFGS))
def test_random_tag_soup_never_breaks_the_verifier(text, sample, p, cfg):
    check(text, sample, p, cfg)


@settings(max_examples=300, **SETTINGS)
@given(valid_completions(), st.sampled_from(SAMPLES[:6]))
def test_valid_completions_are_paired(text, sample):
    # every generated valid completion has exactly one think and one answer block
    if all(text.count(tag) == 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")):
        assert score(text, sample)["fmt"] in (0.5, 1.0)
