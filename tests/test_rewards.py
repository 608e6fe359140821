"""Verifier reward: parser and components against hand-computed values (VISD Eq. 10-13)."""

import math
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from visd_exp.rewards import COMPONENTS, Claim, RewardConfig, parse_completion, score, score_batch

CONF = Path(__file__).resolve().parents[1] / "conf" / "reward"

# --- records -------------------------------------------------------------------------------------------

TG = {  # temporal grounding: segment [2, 6], one key frame at 3.0 s, no boxes
    "id": "tg",
    "task": "temporal_grounding",
    "answer": "From <t>2.0</t>s to <t>6.0</t>s",
    "segment": [2.0, 6.0],
    "key_frames": [{"idx": 90, "time": 3.0}],
    "image_size": [100, 100],
    "duration": 10.0,
}
ST = {  # spatio-temporal grounding: key frames at 1.0 s and 3.0 s with boxes (image = frame, 100x100)
    "id": "st",
    "task": "spatio_temporal_grounding",
    "answer": "<obj>red square</obj><box>[0,0,10,10]</box>at<t>1.0</t>s",
    "key_frames": [{"idx": 30, "time": 1.0}, {"idx": 90, "time": 3.0}],
    "key_items": {
        "30": {"red square": [[0, 0, 10, 10]]},
        "90": {"red square": [[10, 10, 30, 30]], "blue circle": [[50, 50, 70, 70]]},
    },
    "image_size": [100, 100],
    "duration": 10.0,
}
MC = {
    "id": "mc",
    "task": "multiple_choice",
    "question": "Where does it go?\nA. left\nB. right",
    "options": ["A. left", "B. right"],
    "answer": "B",
}
FF = {"id": "ff", "task": "free_form", "answer": "the red square moves left"}
NUM = {"id": "num", "task": "numerical", "answer": "3"}
REG = {"id": "reg", "task": "regression", "answer": "10"}


def wrap(think: str, answer: str) -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


def claim(name: str, boxes, t) -> str:
    bx = "".join(f"<box>[{','.join(str(v) for v in b)}]</box>" for b in boxes)
    return f"<obj>{name}</obj>{bx}at<t>{t}</t>s"


# --- parser --------------------------------------------------------------------------------------------


def test_parse_grounded_completion():
    text = (
        "  <think>The <obj>red square</obj><box>[12,30,38,56]</box><box>[1,2,3,4]</box>at<t>3.0</t>s, "
        "then it leaves around <t>5.5</t>s.</think>\n<answer>From <t>2.0</t>s to <t>5.0</t>s</answer> "
    )
    p = parse_completion(text)
    assert p.well_formed
    assert p.think_claims == (Claim("red square", ((12, 30, 38, 56), (1, 2, 3, 4)), 3.0),)
    assert p.think_times == (3.0, 5.5)
    assert p.answer_segment == (2.0, 5.0)
    assert p.answer_claims == ()


@pytest.mark.parametrize(
    "text, think, answer, well_formed",
    [
        ("<think>a</think><answer>b</answer>", "a", "b", True),
        (" \n<think>a</think>\n\n<answer>b</answer>\n", "a", "b", True),
        ("x<think>a</think><answer>b</answer>", "a", "b", False),  # text before <think>
        ("<think>a</think>x<answer>b</answer>", "a", "b", False),  # text between
        ("<answer>b</answer><think>a</think>", "a", "b", False),  # wrong order
        ("<think>a<answer>b</answer>", None, "b", False),  # unclosed think
        ("<think>a</think><answer>b", "a", None, False),  # unclosed answer
        ("<think>a</think><answer>b</answer><answer>c</answer>", "a", "c", False),  # last answer wins
        ("<think><think>a</think></think><answer>b</answer>", "<think>a", "b", False),  # nested
        ("", None, None, False),
    ],
)
def test_parse_blocks(text, think, answer, well_formed):
    p = parse_completion(text)
    assert (p.think, p.answer, p.well_formed) == (think, answer, well_formed)


@pytest.mark.parametrize(
    "answer, choice",
    [
        ("B", "B"),
        ("b", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("[B]", "B"),
        ("B)", "B"),
        ("Correct Option: B", "B"),
        ("The correct answer is B.", "B"),
        ("Answer: (B)", "B"),
        ("B. right", "B"),
        ("answer: a cat", None),  # lower-case word after "answer" is not a letter
        ("I think so", None),
        ("3.5", None),
    ],
)
def test_parse_choice(answer, choice):
    assert parse_completion(wrap("", answer)).answer_choice == choice


@pytest.mark.parametrize(
    "answer, number",
    [
        ("3", 3.0),
        (" 3.50 ", 3.5),
        ("1,234", 1234.0),
        ("about 7 cars", 7.0),
        ("2 or 3", None),
        ("1e400", None),
    ],
)
def test_parse_number(answer, number):
    assert parse_completion(wrap("", answer)).answer_number == number


@pytest.mark.parametrize(
    "answer, segment",
    [
        ("From <t>2.0</t>s to <t>6.0</t>s", (2.0, 6.0)),
        ("from <t>6</t> seconds to <t>2</t> seconds", (6.0, 2.0)),  # kept as written, end < start
        ("between <t>1</t>s and <t>4</t>s", (1.0, 4.0)),
        ("<t>1</t>-<t>4</t>", (1.0, 4.0)),
        ("From <t>1e400</t>s to <t>4</t>s", None),  # overflow -> invalid
        ("From <t>nan</t>s to <t>4</t>s", None),
        ("at <t>2.0</t>s", None),
        ("From <t>2.0</t>s, then much later, to <t>6.0</t>s", None),  # too much in between
    ],
)
def test_parse_segment(answer, segment):
    assert parse_completion(wrap("", answer)).answer_segment == segment


def test_parse_drops_bad_numbers_and_handles_unicode():
    think = (
        "<obj>猫 🐱</obj><box>[1e400,0,1,1]</box><box>[0,0,nan,1]</box><box>[0,0,2,2]</box>at<t>inf</t>s "
        "<t>1e999</t> <t>-2</t> <t>４</t> <box>[1,2,3]</box>"
    )
    p = parse_completion(wrap(think, "x"))
    assert p.think_times == (-2.0,)  # inf, 1e999 and a full-width digit are not finite ASCII numbers
    assert p.think_claims[0] == Claim("猫 🐱", ((0.0, 0.0, 2.0, 2.0),), None)
    assert p.think_claims[1] == Claim("", (), None)  # a 3-number box: a claim without a valid box


def test_parse_claim_grouping():
    think = (
        "<obj>a</obj><box>[0,0,1,1]</box>, <box>[0,0,2,2]</box> at <t>1</t>s; "
        "<obj>b</obj> at <t>2</t>s; <box>[0,0,3,3]</box>at<t>3</t>s; <obj>c</obj><box>[0,0,4,4]</box> and "
        "later something <t>4</t>"
    )
    p = parse_completion(wrap(think, "x"))
    assert p.think_claims == (
        Claim("a", ((0, 0, 1, 1), (0, 0, 2, 2)), 1.0),
        Claim("b", (), 2.0),
        Claim("", ((0, 0, 3, 3),), 3.0),
        Claim("c", ((0, 0, 4, 4),), None),  # the far-away <t> is a free timestamp
    )
    assert p.think_times == (1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize("value", [None, 42, b"<think>", object()])
def test_parse_non_string_never_raises(value):
    assert parse_completion(value).well_formed is False


ADVERSARIAL = [
    "<think>" * 15_000,
    "<t>" * 35_000,
    "<obj>" * 20_000,
    "<box>[" + "1," * 50_000,
    "<answer>answer" + " " * 100_000 + "x</answer>",
    "<answer>option" + " \t" * 50_000 + "B</answer>",
    "<answer>From <t>1</t>" + " " * 100_000 + "<t>2</t></answer>",
    "<answer>" + "<t>1</t>" * 12_000 + "</answer>",
    "<answer>" + "9" * 100_000 + "</answer>",
    "<answer>" + "1," * 50_000 + "</answer>",
    "<answer>" * 12_000 + "</answer>",
    "<think>" + "<obj>a</obj><box>[1,2,3,4]</box>at<t>1</t>s " * 2_500 + "</think><answer>B</answer>",
    "<think>" + "<obj>" + "a" * 100_000 + "</obj></think>",
    "<answer>" + "The answer is " * 7_000 + "</answer>",
]


@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_parse_adversarial_is_fast(text):
    start = time.perf_counter()
    parse_completion(text)
    for sample in (TG, ST, MC, NUM):
        score(text, sample)
    assert time.perf_counter() - start < 1.0


# --- ans -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sample, answer, expected",
    [
        (MC, "B", 1.0),
        (MC, "(B)", 1.0),
        (MC, "Correct Option: B", 1.0),
        (MC, "right", 1.0),  # the option text "B. right"
        (MC, "A", 0.0),
        (MC, "", 0.0),
        ({**MC, "answer": None}, "B", None),  # no GT letter: masked
        (FF, "the red square moves left", 1.0),
        # tokens: the red square moves right vs ... left. R1: 4/5 -> F 0.8; R2: 3 of 4 bigrams -> 0.75;
        # RL: LCS 4 -> 0.8; mean (0.8 + 0.75 + 0.8) / 3 = 0.783333
        (FF, "the red square moves right", 2.35 / 3),
        (FF, "", 0.0),
        (NUM, "3.0", 1.0),
        (NUM, "3.5", 0.0),
        (NUM, "three", 0.0),
        ({**NUM, "answer": "1000"}, "1,000", 1.0),
        (REG, "8", 0.8),  # 1 - min(1, |8 - 10| / 10) = 0.8
        (REG, "25", 0.0),  # 1 - min(1, 15 / 10) = 0
        (REG, "10", 1.0),
        ({**REG, "answer": "0"}, "0", 1.0),  # |gt| = 0: exact match only
        ({**REG, "answer": "0"}, "0.5", 0.0),
        (TG, "From <t>2.0</t>s to <t>6.0</t>s", None),  # scored by ans_tmp
        (ST, "anything", None),  # scored by ans_spa
        ({"task": "ocr", "answer": "x"}, "x", None),  # unsupported task
    ],
)
def test_ans(sample, answer, expected):
    got = score(wrap("", answer), sample)["ans"]
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-6))


def test_ans_missing_answer_block_scores_zero():
    assert score("<think>B</think>", MC)["ans"] == 0.0


# --- fmt -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (wrap("it is at <t>3</t>s", "B"), 1.0),  # paired + a timestamp
        (wrap(claim("cat", [[0, 0, 1, 1]], 2), "B"), 1.0),  # paired + a grounded claim
        (wrap("<box>[0,0,1,1]</box>", "B"), 1.0),  # a box is grounding too
        (wrap("<obj>cat</obj> somewhere", "B"), 0.5),  # a bare name is not grounded
        (wrap("plain reasoning", "B"), 0.5),
        ("<think>plain</think>\n<answer>B</answer>\n", 0.5),
        ("<think>at <t>3</t>s<answer>B</answer>", 0.0),  # unclosed think
        ("<answer>B</answer><think><t>3</t></think>", 0.0),  # wrong order
        ("<think><t>3</t></think><answer>B</answer><answer>B</answer>", 0.0),  # duplicated answer
        ("B", 0.0),
        ("", 0.0),
    ],
)
def test_fmt(text, expected):
    assert score(text, MC)["fmt"] == expected


# --- ans_tmp -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("From <t>2.0</t>s to <t>6.0</t>s", 1.0),
        ("From <t>4.0</t>s to <t>8.0</t>s", 2 / 6),  # inter [4, 6] = 2, union 4 + 4 - 2 = 6
        ("between <t>0</t>s and <t>4</t>s", 2 / 6),  # inter [2, 4] = 2, union 4 + 4 - 2 = 6
        ("From <t>3</t>s to <t>4</t>s", 1 / 4),  # contained: 1 / 4
        ("From <t>6.0</t>s to <t>2.0</t>s", 0.0),  # end < start
        ("From <t>7</t>s to <t>9</t>s", 0.0),  # disjoint
        ("From <t>3</t>s to <t>3</t>s", 0.0),  # zero length: inter 0
        ("around three seconds", 0.0),  # no segment parsed
    ],
)
def test_ans_tmp(answer, expected):
    assert score(wrap("", answer), TG)["ans_tmp"] == pytest.approx(expected)


@pytest.mark.parametrize("sample", [ST, MC, FF, {**TG, "segment": None}, {**TG, "segment": [5.0, 1.0]}])
def test_ans_tmp_masked(sample):
    assert score(wrap("", "From <t>2.0</t>s to <t>6.0</t>s"), sample)["ans_tmp"] is None


# --- thk_tmp (Eq. 11, 12) ------------------------------------------------------------------------------

SEG_ONLY = {"task": "free_form", "answer": "x", "segment": [2.0, 6.0], "duration": 10.0}
PTS_ONLY = {"task": "free_form", "answer": "x", "key_frames": [{"idx": 90, "time": 3.0}], "duration": 10.0}
BOTH = {**SEG_ONLY, "key_frames": [{"idx": 90, "time": 3.0}]}

E_HALF = math.exp(-0.5)  # d = 4, sigma = 4: exp(-16 / 32)
E_TWO = math.exp(-2.0)  # d = 4, sigma = 2: exp(-16 / 8)
E_EIGHT = math.exp(-8.0)  # d = 4, sigma = 1: exp(-16 / 2)


@pytest.mark.parametrize(
    "sample, times, progress, cfg, expected",
    [
        (SEG_ONLY, [1, 3, 5, 7], 0.0, None, 2 / 4),  # Eq. 11: 3 and 5 inside [2, 6]
        (SEG_ONLY, [2, 6], 0.0, None, 1.0),  # bounds inclusive
        (SEG_ONLY, [], 0.0, None, 0.0),  # supervision but no timestamps
        (PTS_ONLY, [3, 7], 0.0, None, (1 + E_HALF) / 2),  # Eq. 12, sigma = 4 (1 - 0) = 4
        (PTS_ONLY, [3, 7], 0.5, None, (1 + E_TWO) / 2),  # sigma = 4 (1 - 0.5) = 2
        (PTS_ONLY, [3, 7], 0.8, None, (1 + E_EIGHT) / 2),  # p >= 0.75: sigma = 1
        (PTS_ONLY, [3, 7], 0.0, {"sigma_start": 8.0}, (1 + math.exp(-16 / 128)) / 2),  # sigma 8
        (PTS_ONLY, [3, 11], 0.0, None, 1 / 2),  # 11 s is past the 10 s video: scores 0
        (PTS_ONLY, [3, -1], 0.0, None, 1 / 2),  # negative time: 0
        (PTS_ONLY, [3, 11], 0.0, {"outside_video_zero": False}, (1 + math.exp(-64 / 32)) / 2),  # d = 8
        (BOTH, [1, 3], 0.0, None, 1 / 2),  # auto = segment: only 3 is inside [2, 6]
        (BOTH, [1, 3], 0.0, {"thk_tmp_mode": "segment"}, 1 / 2),
        (BOTH, [1, 3], 0.0, {"thk_tmp_mode": "point"}, (math.exp(-4 / 32) + 1) / 2),  # d = 2 and 0
        (SEG_ONLY, [1, 3], 0.0, {"thk_tmp_mode": "point"}, 1 / 2),  # no key frames: segment anyway
        (MC, [1, 3], 0.0, None, None),  # no temporal supervision: masked
    ],
)
def test_thk_tmp(sample, times, progress, cfg, expected):
    think = " ".join(f"seen at <t>{t}</t>s" for t in times)
    got = score(wrap(think, "x"), sample, progress=progress, cfg=cfg)["thk_tmp"]
    assert got == (None if expected is None else pytest.approx(expected))


def test_sigma_schedule():
    cfg = RewardConfig()
    # 4 (1 - p) below p = 0.75, then 1
    assert [cfg.sigma(p) for p in (0.0, 0.25, 0.5, 0.74, 0.75, 1.0)] == pytest.approx(
        [4.0, 3.0, 2.0, 1.04, 1.0, 1.0]
    )
    assert cfg.sigma(float("nan")) == 4.0
    assert cfg.sigma(-3.0) == 4.0


# --- thk_spa (Eq. 13) ----------------------------------------------------------------------------------
# GT: t = 1.0 red square [0,0,10,10]; t = 3.0 red square [10,10,30,30], blue circle [50,50,70,70].
# IoUs: [0,0,10,5] vs [0,0,10,10] = 50/100; [0,0,5,5] vs [0,0,10,10] = 25/100.

RS = "red square"


@pytest.mark.parametrize(
    "claims, cfg, expected",
    [
        ([(RS, [[0, 0, 10, 5]], 1.0)], None, 0.5),
        ([(RS, [[0, 0, 5, 5], [0, 0, 10, 5]], 1.0)], None, 0.5),  # several boxes: max(0.25, 0.5)
        ([(RS, [[0, 0, 10, 5]], 1.0), (RS, [[10, 10, 30, 30]], 3.0)], None, (0.5 + 1.0) / 2),
        ([(RS, [[0, 0, 10, 5]], 1.0), (RS, [[0, 0, 10, 10]], 6.0)], None, (0.5 + 0) / 2),  # 6 s: no frame
        ([(RS, [[0, 0, 10, 5]], 1.0), (RS, [[0, 0, 10, 10]], 6.0)], {"divide_by": "matched"}, 0.5 / 1),
        ([(RS, [[5, 5, 5, 10]], 1.0)], None, 0.0),  # zero-area predicted box
        ([], None, 0.0),  # no claims but key items exist
        # two-sided gate |t_gt - t_pred| <= 1, frame at 3.0 (box [10,10,30,30]):
        ([(RS, [[10, 10, 30, 30]], 4.0)], None, 1.0),  # |3 - 4| = 1: just inside
        ([(RS, [[10, 10, 30, 30]], 4.01)], None, 0.0),  # 1.01: just outside, no frame
        ([(RS, [[10, 10, 30, 30]], 2.05)], None, 1.0),  # 0.95 to 3.0 (1.05 to 1.0 fails)
        ([(RS, [[10, 10, 30, 30]], 1.95)], None, 0.0),  # matches 1.0 instead: box misses
        ([(RS, [[10, 10, 30, 30]], 4.5)], None, 0.0),  # 1.5 after the last frame
        # one-sided gate t_gt - t_pred < 1 (the original): late claims always pass
        ([(RS, [[10, 10, 30, 30]], 4.5)], {"one_sided_gate": True}, 1.0),  # 3 - 4.5 = -1.5 < 1
        ([(RS, [[10, 10, 30, 30]], 2.01)], {"one_sided_gate": True}, 1.0),  # 3 - 2.01 = 0.99 < 1
        ([(RS, [[10, 10, 30, 30]], 2.0)], {"one_sided_gate": True}, 0.0),  # 3 - 2 = 1, not < 1 -> t = 1.0
        ([(RS, [[10, 10, 30, 30]], -0.5)], {"one_sided_gate": True}, 0.0),  # 1 - (-0.5) = 1.5: none
        # name matching on the frame at 3.0: box [50,50,70,70] is exactly the blue circle
        ([("square", [[50, 50, 70, 70]], 3.0)], {"name_match": "soft"}, 0.0),  # matches red square: IoU 0
        ([("square", [[50, 50, 70, 70]], 3.0)], {"name_match": "none"}, 1.0),  # any object
        ([("square", [[50, 50, 70, 70]], 3.0)], {"name_match": "strict"}, 0.0),
        ([("Blue  Circle", [[50, 50, 70, 70]], 3.0)], {"name_match": "strict"}, 1.0),  # case/space
        ([("circles", [[50, 50, 70, 70]], 3.0)], {"name_match": "soft"}, 1.0),  # word substring
        ([("circles", [[50, 50, 70, 70]], 3.0)], {"name_match": "strict"}, 0.0),
        ([("a", [[50, 50, 70, 70]], 3.0)], {"name_match": "soft"}, 0.0),  # stop word only
        ([("", [[50, 50, 70, 70]], 3.0)], {"name_match": "soft"}, 0.0),  # nameless claim
        ([("", [[50, 50, 70, 70]], 3.0)], {"name_match": "none"}, 1.0),
    ],
)
def test_thk_spa(claims, cfg, expected):
    think = " ".join(claim(n, b, t) if n else f"<box>{b[0]}</box>at<t>{t}</t>s" for n, b, t in claims)
    assert score(wrap(think, "x"), ST, cfg=cfg)["thk_spa"] == pytest.approx(expected)


def test_thk_spa_claim_without_time_counts_in_denominator():
    think = claim(RS, [[0, 0, 10, 5]], 1.0) + " <obj>red square</obj><box>[0,0,10,10]</box> somewhere"
    assert score(wrap(think, "x"), ST)["thk_spa"] == pytest.approx(0.5 / 2)  # (0.5 + 0) / 2 claims
    assert score(wrap(think, "x"), ST, cfg={"divide_by": "matched"})["thk_spa"] == pytest.approx(0.5)


def test_thk_spa_box_free_claims_are_not_spatial():
    # "<obj>x</obj> at <t>1</t>s" carries no box: it is a timestamp, not a spatial claim (0 claims -> 0.0)
    assert score(wrap("<obj>red square</obj> at <t>1.0</t>s", "x"), ST)["thk_spa"] == 0.0


def test_thk_spa_scales_gt_boxes_to_frame_size():
    # image 100x100 -> frame 50x50: GT [0,0,10,10] becomes [0,0,5,5]
    sample = {**ST, "frame_size": [50, 50]}
    assert score(wrap(claim(RS, [[0, 0, 5, 5]], 1.0), "x"), sample)["thk_spa"] == 1.0
    assert score(wrap(claim(RS, [[0, 0, 10, 10]], 1.0), "x"), sample)["thk_spa"] == pytest.approx(0.25)


@pytest.mark.parametrize("sample", [TG, MC, FF, {**ST, "key_items": {}}, {**ST, "key_frames": []}])
def test_thk_spa_masked_without_key_items(sample):
    assert score(wrap(claim(RS, [[0, 0, 10, 10]], 1.0), "x"), sample)["thk_spa"] is None


# --- ans_spa -------------------------------------------------------------------------------------------
# GT pairs (frame, object): (1.0, red square), (3.0, red square), (3.0, blue circle).


@pytest.mark.parametrize(
    "answer, cfg, expected",
    [
        (
            claim(RS, [[0, 0, 10, 10]], 1.0)
            + claim(RS, [[10, 10, 30, 30]], 3.0)
            + claim("blue circle", [[50, 50, 70, 70]], 3.0),
            None,
            1.0,
        ),
        (claim(RS, [[0, 0, 10, 10]], 1.0), None, 1 / 3),  # two GT pairs unclaimed count 0
        (claim(RS, [[0, 0, 10, 5]], 1.2), None, 0.5 / 3),  # IoU 0.5 on one pair of three
        (claim(RS, [[0, 0, 10, 10]], 2.5), None, 0.0),  # nearest gated frame is 3.0: IoU 0 there
        (claim(RS, [[0, 0, 10, 10]], 8.0), None, 0.0),  # no frame within tau
        # name_match none: (1.0, red) 0 + (3.0, red) 0 + (3.0, blue) 1 -> 1/3; soft: "thing" matches nothing
        (claim("thing", [[50, 50, 70, 70]], 3.0), {"name_match": "none"}, 1 / 3),
        (claim("thing", [[50, 50, 70, 70]], 3.0), None, 0.0),
        ("", None, 0.0),
    ],
)
def test_ans_spa(answer, cfg, expected):
    assert score(wrap("", answer), ST, cfg=cfg)["ans_spa"] == pytest.approx(expected)


@pytest.mark.parametrize("sample", [TG, MC, FF, {**ST, "key_items": None}])
def test_ans_spa_masked(sample):
    assert score(wrap("", claim(RS, [[0, 0, 10, 10]], 1.0)), sample)["ans_spa"] is None


# --- masking, totals, weights (Eq. 10) -----------------------------------------------------------------


@pytest.mark.parametrize(
    "sample, present",
    [
        (TG, {"fmt", "ans_tmp", "thk_tmp"}),
        (ST, {"fmt", "ans_spa", "thk_tmp", "thk_spa"}),
        (MC, {"ans", "fmt"}),
        (FF, {"ans", "fmt"}),
        (
            {**MC, "key_frames": ST["key_frames"], "key_items": ST["key_items"]},
            {"ans", "fmt", "thk_tmp", "thk_spa"},
        ),
        ({}, {"fmt"}),  # an empty record: only the format can be judged
    ],
)
def test_masking_per_task(sample, present):
    out = score(wrap("at <t>3</t>s", "B"), sample)
    assert tuple(out) == (*COMPONENTS, "total")
    assert {k for k in COMPONENTS if out[k] is not None} == present


def test_total_hand_computed():
    # TG: fmt 1 (grounded), ans_tmp = IoU([4, 8], [2, 6]) = 2/6, thk_tmp = 1/2 (3 in, 7 out) -> 1 + 1/3 + 1/2
    text = wrap("start <t>3</t>s end <t>7</t>s", "From <t>4</t>s to <t>8</t>s")
    out = score(text, TG)
    assert out["total"] == pytest.approx(1 + 1 / 3 + 1 / 2)
    # weights: 0.5 * 1 + 3 * (1/3) + 0 * (1/2) = 1.5
    cfg = {"weights": {"fmt": 0.5, "ans_tmp": 3.0, "thk_tmp": 0.0}}
    assert score(text, TG, cfg=cfg)["total"] == pytest.approx(1.5)


def test_garbage_scores_zero():
    for text in ["", "garbage", "<think>", "</answer>", "<answer></answer>"]:
        out = score(text, TG)
        assert out["fmt"] == 0.0 and out["ans_tmp"] == 0.0 and out["thk_tmp"] == 0.0
        assert out["total"] == 0.0


def test_score_batch_matches_score():
    texts = [wrap("<t>3</t>", "B"), wrap("", "From <t>2</t>s to <t>6</t>s"), "junk"]
    samples = [MC, TG, ST]
    assert score_batch(texts, samples, progress=0.3) == [score(t, s, 0.3) for t, s in zip(texts, samples)]
    with pytest.raises(ValueError):
        score_batch(texts, samples[:2])


# --- config --------------------------------------------------------------------------------------------


def test_default_yaml_matches_dataclass_defaults():
    assert RewardConfig.from_cfg(OmegaConf.load(CONF / "default.yaml")) == RewardConfig()


@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.name)
def test_every_reward_option_loads(path):
    cfg = RewardConfig.from_cfg(OmegaConf.load(path))
    assert set(cfg.weights) == set(COMPONENTS)
    score(
        wrap(claim(RS, [[0, 0, 10, 10]], 1.0), claim(RS, [[0, 0, 10, 10]], 1.0)), ST, cfg=OmegaConf.load(path)
    )


def test_open_o3_option_flips_the_documented_flags():
    cfg = RewardConfig.from_cfg(OmegaConf.load(CONF / "open_o3.yaml"))
    assert cfg.one_sided_gate and cfg.name_match == "none" and not cfg.outside_video_zero


@pytest.mark.parametrize(
    "bad",
    [{"taus": 1.0}, {"divide_by": "some"}, {"name_match": "fuzzy"}, {"weights": {"bogus": 1.0}}, {"tau": -1}],
)
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        RewardConfig.from_cfg(bad)


def test_config_partial_weights_keep_defaults():
    cfg = RewardConfig.from_cfg({"weights": {"ans": 2.0}})
    assert dict(cfg.weights) == {
        "ans": 2.0,
        "fmt": 1.0,
        "ans_tmp": 1.0,
        "ans_spa": 1.0,
        "thk_tmp": 1.0,
        "thk_spa": 1.0,
    }
