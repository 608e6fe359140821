"""Verifier reward: parser and components against hand-computed values (VISD Eq. 10-13)."""

import math
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from visd_exp.rewards import (
    COMPONENTS,
    TASK_NAMES,
    Claim,
    RewardConfig,
    UnknownTaskError,
    canonical_task,
    parse_completion,
    score,
    score_batch,
)

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


# --- per-task tables: values hand-computed from Open-o3-Video's / Video-R1's rules ------------------------
# Default preset unless a case says otherwise (README "Rewards" lists where default and open_o3 differ).

TGO = {"id": "tgo", "task": "temporal QA", "answer": "[2.0, 6.0]"}  # Open-o3-Video's own shape
TGC = {"id": "tgc", "task": "temporal QA (MCQ)", "answer": "B\n[2.0, 6.0]"}
STQ = {**ST, "id": "stq", "task": "temporal-spatial free-form QA", "answer": "the red square moves left"}
OCR = {"id": "ocr", "task": "OCR", "answer": "STOP AHEAD"}
VQA = {  # the reference box in image pixels; the model saw a 2x smaller image
    "id": "vqa",
    "task": "visual QA",
    "answer": "The <obj>car</obj><box>[20, 40, 60, 80]</box>",
    "image_size": [200, 200],
    "frame_size": [100, 100],
}
LENIENT = {"parsing": "lenient"}
OPEN_O3 = {"one_sided_gate": True, "box_match": "object_mean"}
TGC_ANSWER = "From <t>2.0</t>s to <t>6.0</t>s.\nCorrect Option: {}"


@pytest.mark.parametrize(
    "sample, answer, cfg, expected",
    [
        # multiple choice: the whole answer is the letter as X, X., (X) or [X] (Open-o3-Video)
        (MC, "B", None, 1.0),
        (MC, "(B)", None, 1.0),
        (MC, "[B]", None, 1.0),
        (MC, " B. ", None, 1.0),  # the answer block is stripped
        (MC, "b", None, 0.0),
        (MC, "Correct Option: B", None, 0.0),
        (MC, "B. right", None, 0.0),
        (MC, "right", None, 0.0),
        (MC, "A", None, 0.0),
        (MC, "", None, 0.0),  # an empty <answer></answer>
        (MC, "Correct Option: B", LENIENT, 1.0),
        (MC, "right", LENIENT, 1.0),  # the option text
        (MC, "b", LENIENT, 1.0),
        ({**MC, "task": "General video QA MCQ"}, "(B)", None, 1.0),
        ({**MC, "task": "multiple choice"}, "B", None, 1.0),  # Video-R1's name
        ({**MC, "answer": None}, "B", None, None),  # no reference: masked
        # temporal multiple choice: the letter after "Correct Option:"
        (TGC, TGC_ANSWER.format("B"), None, 1.0),
        (TGC, TGC_ANSWER.format("(B)"), None, 1.0),
        (TGC, TGC_ANSWER.format("A"), None, 0.0),
        (TGC, TGC_ANSWER.format("B, because it is late"), None, 0.0),
        (TGC, "From <t>2.0</t>s to <t>6.0</t>s. B", None, 0.0),  # no "Correct Option:"
        (TGC, "The correct option is B", LENIENT, 1.0),
        # free form: mean ROUGE-1/2/L F1 with Porter stemming
        (FF, "the red square moves left", None, 1.0),
        # R1 4/5 -> 0.8; R2 3 of 4 bigrams -> 0.75; RL LCS 4 -> 0.8: (0.8 + 0.75 + 0.8) / 3
        (FF, "the red square moves right", None, 2.35 / 3),
        (FF, "the red squares move left", None, 1.0),  # squares/square, move/moves stem alike
        # without stemming: R1 3/5 -> 0.6; R2 1 of 4 -> 0.25; RL "the red left" 3/5 -> 0.6
        (FF, "the red squares move left", {"rouge_stemmer": False}, 1.45 / 3),
        (FF, "", None, 0.0),
        (STQ, "the red square moves left", None, 1.0),  # spatio-temporal free text is scored by ROUGE
        # Video-R1's numerical rule: decimal marks must agree, then equal after rounding to 2 places
        (NUM, "3", None, 1.0),
        (NUM, "3.0", None, 0.0),  # "3" has no decimal point, "3.0" has one
        (NUM, "3.0", LENIENT, 1.0),
        (NUM, "three", None, 0.0),
        ({**NUM, "answer": "2.50"}, "2.504", None, 1.0),  # 2.5 == 2.5 after rounding
        ({**NUM, "answer": "2.50"}, "2.51", None, 0.0),
        ({**NUM, "answer": "1000"}, "1,000", None, 0.0),  # the comma counts as a decimal mark
        ({**NUM, "answer": "1,000.5"}, "1000.5", None, 1.0),  # both have one; commas are dropped
        # Video-R1's regression: 1 - min(1, (|pred - gt| + 1e-9) / (|gt| + 1e-9))
        (REG, "8", None, 0.8),
        (REG, "25", None, 0.0),
        (REG, "10", None, 1.0),
        ({**REG, "answer": "0"}, "0", None, 0.0),  # the original's quirk: (0 + 1e-9) / (0 + 1e-9) = 1
        ({**REG, "answer": "0"}, "0", LENIENT, 1.0),
        # Video-R1's OCR: 1 - word error rate
        (OCR, "STOP AHEAD", None, 1.0),
        (OCR, "STOP", None, 0.5),  # one deletion of two words
        (OCR, "STOP AHEAD NOW", None, 0.5),  # one insertion
        (OCR, "GO", None, 0.0),  # a substitution and a deletion
        ({**OCR, "task": "ocr"}, "stop ahead", None, 0.0),  # case counts
        # no answer-correctness term
        (TG, "From <t>2.0</t>s to <t>6.0</t>s", None, None),
        (TGO, "From <t>2.0</t>s to <t>6.0</t>s", None, None),
        (ST, "anything", None, None),
        (VQA, "anything", None, None),
    ],
)
def test_ans(sample, answer, cfg, expected):
    got = score(wrap("", answer), sample, cfg=cfg)["ans"]
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-6))


def test_ans_missing_answer_block_scores_zero():
    assert score("<think>B</think>", MC)["ans"] == 0.0
    assert score("<think>x</think><answer>A</answer><answer>B</answer>", MC)["ans"] == 0.0  # first block
    assert (
        score("<think>x</think><answer>A</answer><answer>B</answer>", MC, cfg=LENIENT)["ans"] == 1.0
    )  # last


def test_unknown_task_is_an_error():
    with pytest.raises(UnknownTaskError, match="temporal qa"):
        score(wrap("", "B"), {"task": "temporal qa", "answer": "B"})


# --- fmt: tiers by task ---------------------------------------------------------------------------------
C1 = claim("cat", [[0, 0, 1, 1]], 2)


@pytest.mark.parametrize(
    "sample, text, expected",
    [
        # general QA: 1.0 once <think>/<answer> are paired; ungrounded is fine
        (MC, wrap("plain reasoning", "B"), 1.0),
        (MC, wrap("", ""), 1.0),  # an empty think and an empty answer are still paired
        (MC, "  x <think>plain</think> y <answer>B</answer> z", 1.0),  # text around is not checked
        (MC, "<answer>B</answer><think>plain</think>", 1.0),  # nor the order
        (MC, wrap("plain", "B") + "<answer>C</answer>", 1.0),  # two answers, paired
        (MC, wrap("the <obj>cat", "B"), 0.0),  # unpaired inner tag
        (MC, wrap("at <t>3</t>s <box>[1,2,3,4]", "B"), 0.0),
        (MC, "<think>plain<answer>B</answer>", 0.0),  # unclosed think
        (MC, "<think>a</think><think>b<answer>B</answer>", 0.0),  # unequal <think> counts
        (MC, "<answer>B</answer>", 0.0),
        (MC, "B", 0.0),
        (MC, "", 0.0),
        (FF, wrap("plain", "x"), 1.0),
        (NUM, wrap("plain", "3"), 1.0),  # Video-R1's types need no grounding
        # temporal tasks: at least two <t> in the think block
        (TG, wrap("from <t>2</t>s to <t>6</t>s", "x"), 1.0),
        (TG, wrap("from <t>2</t> to <t>6</t>", "x"), 1.0),  # the tags count, read or not
        (TG, wrap("at <t>3</t>s", "x"), 0.5),
        (TG, wrap(C1, "x"), 0.5),  # a claim has one <t>
        (TGC, wrap("<t>2</t>s <t>6</t>s", "x"), 1.0),
        (TG, wrap("<t>2</t>s <t>6", "x"), 0.0),
        # spatio-temporal tasks: an <obj>, a <box> and a <t> in the think block
        (STQ, wrap(C1, "x"), 1.0),
        (STQ, wrap("<obj>cat</obj> at <t>1</t>s <box>[0,0,1,1]</box>", "x"), 1.0),  # no claim needed
        (STQ, wrap("<box>[0,0,1,1]</box> at <t>1</t>s", "x"), 0.5),  # no <obj>
        (STQ, wrap("at <t>1</t>s and <t>2</t>s", "x"), 0.5),
        (ST, wrap(C1, "x"), 1.0),
        # visual QA: a claim, or an <obj>word</obj><box>[..]</box> anywhere in the output
        (VQA, wrap("<obj>car</obj><box>[1,2,3,4]</box>", "x"), 1.0),
        (VQA, wrap("look", "<obj>car</obj><box>[1,2]</box>"), 1.0),  # the box is not parsed here
        (VQA, wrap("<obj>red car</obj><box>[1,2,3,4]</box>", "x"), 0.5),  # a name with a space
        (VQA, wrap("look", "car"), 0.5),
    ],
)
def test_fmt(sample, text, expected):
    assert score(text, sample)["fmt"] == expected


# --- ans_tmp ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, cfg, expected",
    [
        ("From <t>2.0</t>s to <t>6.0</t>s", None, 1.0),
        ("From <t>4.0</t>s to <t>8.0</t>s", None, 2 / 6),  # inter [4, 6] = 2, union [2, 8] = 6
        ("<t>3</t>s to <t>4</t>s", None, 1 / 4),  # contained
        ("From <t>6.0</t>s to <t>2.0</t>s", None, 0.0),  # end < start
        ("From <t>7</t>s to <t>9</t>s", None, 0.0),  # disjoint
        ("From <t>3</t>s to <t>3</t>s", None, 0.0),  # zero length
        ("From <t>2.0</t> to <t>6.0</t>", None, 0.0),  # no "s": not read
        ("From <t>2.0</t> to <t>6.0</t>", LENIENT, 1.0),
        ("<t>2.0</t>s - <t>6.0</t>s", None, 0.0),
        ("<t>2.0</t>s - <t>6.0</t>s", LENIENT, 1.0),
        ("between <t>0</t>s and <t>4</t>s", None, 0.0),
        ("between <t>0</t>s and <t>4</t>s", LENIENT, 2 / 6),
        ("<t>+2</t>s to <t>6</t>s", None, 0.0),  # signed numbers are not read
        ("around three seconds", None, 0.0),
    ],
)
@pytest.mark.parametrize("sample", [TG, TGO, TGC], ids=["project", "open_o3", "open_o3_mcq"])
def test_ans_tmp(sample, answer, cfg, expected):
    assert score(wrap("", answer), sample, cfg=cfg)["ans_tmp"] == pytest.approx(expected)


@pytest.mark.parametrize("sample", [ST, STQ, MC, FF, VQA, {**TG, "segment": None, "answer": "soon"}])
def test_ans_tmp_masked(sample):
    assert score(wrap("", "From <t>2.0</t>s to <t>6.0</t>s"), sample)["ans_tmp"] is None


# --- thk_tmp: the segment version (Eq. 11) for temporal tasks, the point version (Eq. 12) for ---------
# --- spatio-temporal ones. Key frames at 1.0 s and 3.0 s; duration 10 s. -------------------------------

E4 = math.exp(-16 / 32)  # d = 4, sigma = 4
E2 = math.exp(-16 / 8)  # d = 4, sigma = 2
E1 = math.exp(-16 / 2)  # d = 4, sigma = 1


@pytest.mark.parametrize(
    "sample, think, progress, cfg, expected",
    [
        (TG, "<t>1</t>s <t>3</t>s <t>5</t>s <t>7</t>s", 0.0, None, 2 / 4),  # 3 and 5 inside [2, 6]
        (TGO, "<t>1</t>s <t>3</t>s <t>5</t>s <t>7</t>s", 0.0, None, 2 / 4),
        (TGC, "<t>2</t>s <t>6</t>s", 0.0, None, 1.0),  # bounds inclusive
        (TG, "<t>3</t>s <t>7</t> <t>1</t> s", 0.0, None, 1.0),  # only "<t>v</t>s" is a timestamp
        (TG, "<t>3</t>s <t>7</t> <t>1</t> s", 0.0, LENIENT, 1 / 3),
        (TG, "<t>3</t>s <t>1.2.3</t>s", 0.0, None, 0.0),  # one malformed number voids them all
        (TG, "no times", 0.0, None, 0.0),
        (TG, "<t>3</t>s <t>11</t>s", 0.0, {"outside_video_zero": True}, 1 / 2),
        (STQ, "<t>3</t>s <t>7</t>s", 0.0, None, (1 + E4) / 2),  # Eq. 12, sigma = 4 (1 - 0) = 4
        (STQ, "<t>3</t>s <t>7</t>s", 0.5, None, (1 + E2) / 2),  # sigma = 4 (1 - 0.5) = 2
        (STQ, "<t>3</t>s <t>7</t>s", 0.8, None, (1 + E1) / 2),  # p >= 0.75: sigma = 1
        (ST, "<t>3</t>s <t>7</t>s", 0.0, None, (1 + E4) / 2),  # the answer-with-boxes task too
        (STQ, "<t>3</t>s <t>11</t>s", 0.0, None, (1 + math.exp(-64 / 32)) / 2),  # d = 8
        (STQ, "<t>3</t>s <t>11</t>s", 0.0, {"outside_video_zero": True}, 1 / 2),  # past the 10 s video
        (STQ, "<t>3</t>s <t>7</t>s", 0.0, {"sigma_start": 8.0}, (1 + math.exp(-16 / 128)) / 2),
        # general QA gets neither version, whatever the record carries
        ({**MC, "segment": [2.0, 6.0], "key_frames": ST["key_frames"]}, "<t>3</t>s", 0.0, None, None),
        ({**FF, "segment": [2.0, 6.0], "key_frames": ST["key_frames"]}, "<t>3</t>s", 0.0, None, None),
    ],
)
def test_thk_tmp(sample, think, progress, cfg, expected):
    got = score(wrap(think, "x"), sample, progress=progress, cfg=cfg)["thk_tmp"]
    assert got == (None if expected is None else pytest.approx(expected))


def test_thk_tmp_needs_only_the_think_block():
    assert score("<think><t>3</t>s</think>", TG)["thk_tmp"] == 1.0  # no answer block
    assert score("<answer><t>3</t>s</answer>", TG)["thk_tmp"] == 0.0  # times outside think do not count


def test_sigma_schedule():
    cfg = RewardConfig()
    # 4 (1 - p) below p = 0.75, then 1
    assert [cfg.sigma(p) for p in (0.0, 0.25, 0.5, 0.74, 0.75, 1.0)] == pytest.approx(
        [4.0, 3.0, 2.0, 1.04, 1.0, 1.0]
    )
    assert cfg.sigma(float("nan")) == 4.0
    assert cfg.sigma(-3.0) == 4.0


# --- thk_spa (Eq. 13) ----------------------------------------------------------------------------------
# GT: 1.0 s red square [0,0,10,10]; 3.0 s red square [10,10,30,30] + blue circle [50,50,70,70];
# 8.0 s dog with TWO boxes [0,0,10,10] and [20,20,30,30] (image = frame, 100x100).
# IoUs: [0,0,10,5] vs [0,0,10,10] = 50/100; [0,0,5,5] vs [0,0,10,10] = 25/100.

RS = "red square"
ST3 = {
    **STQ,
    "key_frames": [*ST["key_frames"], {"idx": 240, "time": 8.0}],
    "key_items": {**ST["key_items"], "240": {"dog": [[0, 0, 10, 10], [20, 20, 30, 30]]}},
}


@pytest.mark.parametrize(
    "claims, cfg, expected",
    [
        ([(RS, [[0, 0, 10, 5]], 1.0)], None, 0.5),
        ([(RS, [[0, 0, 5, 5], [0, 0, 10, 5]], 1.0)], None, 0.5),  # several boxes: max(0.25, 0.5)
        ([(RS, [[0, 0, 10, 5]], 1.0), (RS, [[10, 10, 30, 30]], 3.0)], None, (0.5 + 1.0) / 2),
        ([(RS, [[0, 0, 10, 5]], 1.0), (RS, [[0, 0, 10, 10]], 5.5)], None, (0.5 + 0) / 2),  # 5.5 s: no frame
        ([(RS, [[0, 0, 10, 5]], 1.0), (RS, [[0, 0, 10, 10]], 5.5)], {"divide_by": "matched"}, 0.5 / 1),
        ([(RS, [[5, 5, 5, 10]], 1.0)], None, 0.0),  # zero-area predicted box
        ([(RS, [[1, 2, 3]], 1.0)], None, 0.0),  # not four numbers: counts, scores 0
        ([], None, 0.0),
        # Eq. 13's two-sided gate |t_gt - t_pred| <= 1, frame at 3.0 (box [10,10,30,30]):
        ([(RS, [[10, 10, 30, 30]], 4.0)], None, 1.0),  # |3 - 4| = 1: just inside
        ([(RS, [[10, 10, 30, 30]], 4.01)], None, 0.0),  # 1.01: no frame
        ([(RS, [[10, 10, 30, 30]], 2.05)], None, 1.0),  # 0.95 to 3.0 (1.05 to 1.0 fails)
        ([(RS, [[10, 10, 30, 30]], 1.95)], None, 0.0),  # nearer 1.0: the box misses there
        # Open-o3-Video's one-sided gate t_gt - t_pred < 1: any later claim passes
        ([(RS, [[10, 10, 30, 30]], 4.5)], None, 0.0),
        ([(RS, [[10, 10, 30, 30]], 4.5)], OPEN_O3, 1.0),  # 3 - 4.5 < 1 (8 - 4.5 is not)
        ([(RS, [[10, 10, 30, 30]], 2.01)], OPEN_O3, 1.0),  # 3 - 2.01 = 0.99 < 1
        ([(RS, [[10, 10, 30, 30]], 2.0)], OPEN_O3, 0.0),  # 3 - 2 = 1 is not < 1: the 1.0 frame
        ([(RS, [[10, 10, 30, 30]], -0.5)], OPEN_O3, 0.0),  # 1 - (-0.5) = 1.5: none
        ([("dog", [[0, 0, 10, 10]], 7.0)], OPEN_O3, 0.0),  # 8 - 7 = 1 is not < 1: the 3.0 frame, no dog
        ([("dog", [[0, 0, 10, 10]], 7.0)], None, 1.0),  # |8 - 7| = 1 <= 1: the dog frame
        # an object with two GT boxes: Eq. 13 takes the max over B*(t); Open-o3-Video the mean per object
        ([("dog", [[0, 0, 10, 10]], 8.0)], None, 1.0),
        ([("dog", [[0, 0, 10, 10]], 8.0)], OPEN_O3, (1.0 + 0.0) / 2),
        ([("dog", [[0, 0, 10, 10], [20, 20, 30, 30]], 8.0)], OPEN_O3, 1.0),  # each GT box has its match
        # names are not checked (Eq. 13 and Open-o3-Video); name_match opts in
        ([("square", [[50, 50, 70, 70]], 3.0)], None, 1.0),  # the blue circle's box
        ([("square", [[50, 50, 70, 70]], 3.0)], {"name_match": "soft"}, 0.0),  # a red square: IoU 0
        ([("square", [[50, 50, 70, 70]], 3.0)], {"name_match": "strict"}, 0.0),
        ([("Blue  Circle", [[50, 50, 70, 70]], 3.0)], {"name_match": "strict"}, 1.0),  # case/space
        ([("circles", [[50, 50, 70, 70]], 3.0)], {"name_match": "soft"}, 1.0),  # word substring
        ([("a", [[50, 50, 70, 70]], 3.0)], {"name_match": "soft"}, 0.0),  # stop word only
    ],
)
def test_thk_spa(claims, cfg, expected):
    think = " ".join(claim(n, b, t) for n, b, t in claims)
    assert score(wrap(think, "x"), ST3, cfg=cfg)["thk_spa"] == pytest.approx(expected)


def test_thk_spa_reads_claims_as_the_original():
    good = claim(RS, [[0, 0, 10, 5]], 1.0)
    spaced = "<obj>red square</obj><box>[0,0,10,5]</box> at <t>1.0</t>s"
    assert score(wrap(spaced, "x"), ST3)["thk_spa"] == 0.0  # " at " breaks the claim
    assert score(wrap(spaced, "x"), ST3, cfg=LENIENT)["thk_spa"] == 0.5
    assert score(wrap(good, "x"), ST3)["thk_spa"] == 0.5
    assert score(f"<think>{good}</think>", ST3)["thk_spa"] == 0.0  # no answer block: 0
    bad_json = "<obj>red square</obj><box>[0,0,10,]</box>at<t>1.0</t>s"
    assert score(wrap(good + " " + bad_json, "x"), ST3)["thk_spa"] == 0.5  # dropped, not counted


def test_thk_spa_scales_gt_boxes_to_frame_size():
    # image 100x100 -> frame 50x50: GT [0,0,10,10] becomes [0,0,5,5]
    sample = {**ST3, "frame_size": [50, 50]}
    assert score(wrap(claim(RS, [[0, 0, 5, 5]], 1.0), "x"), sample)["thk_spa"] == 1.0
    assert score(wrap(claim(RS, [[0, 0, 10, 10]], 1.0), "x"), sample)["thk_spa"] == pytest.approx(0.25)


@pytest.mark.parametrize("sample", [TG, TGC, MC, FF, {**ST, "key_frames": []}])
def test_thk_spa_masked(sample):
    assert score(wrap(claim(RS, [[0, 0, 10, 10]], 1.0), "x"), sample)["thk_spa"] is None


@pytest.mark.parametrize(
    "think, expected",
    [
        ("<obj>car</obj><box>[10, 20, 30, 40]</box>", 1.0),  # the reference box in frame pixels
        ("<box>[10, 20, 30, 30]</box> or <box>[0, 0, 1, 1]</box>", 0.5),  # the best think box
        ("<box>[10, 20,]</box>", 0.0),
        ("nothing", 0.0),
    ],
)
def test_thk_spa_visual_qa(think, expected):
    assert score(wrap(think, "x"), VQA)["thk_spa"] == pytest.approx(expected)


# --- ans_spa -------------------------------------------------------------------------------------------
# Answer-with-boxes (project task). GT pairs (frame, object): (1.0, red square), (3.0, red square),
# (3.0, blue circle).


@pytest.mark.parametrize(
    "answer, cfg, expected",
    [
        (
            claim(RS, [[0, 0, 10, 10]], 1.0)
            + claim(RS, [[10, 10, 30, 30]], 3.0)
            + claim("blue circle", [[50, 50, 70, 70]], 3.0),
            {"name_match": "soft"},
            1.0,
        ),
        (claim(RS, [[0, 0, 10, 10]], 1.0), None, 1 / 3),  # two GT pairs unclaimed count 0
        (claim(RS, [[0, 0, 10, 5]], 1.2), None, 0.5 / 3),
        (claim(RS, [[0, 0, 10, 10]], 2.5), None, 0.0),  # nearest gated frame is 3.0: IoU 0 there
        (claim(RS, [[0, 0, 10, 10]], 8.0), None, 0.0),  # no frame within tau
        (claim("thing", [[50, 50, 70, 70]], 3.0), None, 1 / 3),  # names unchecked: the blue circle pair
        (claim("thing", [[50, 50, 70, 70]], 3.0), {"name_match": "soft"}, 0.0),
        ("<obj>red square</obj><box>[0,0,10,10]</box> at <t>1.0</t>s", None, 0.0),  # not a claim
        ("<obj>red square</obj><box>[0,0,10,10]</box> at <t>1.0</t>s", LENIENT, 1 / 3),
        ("", None, 0.0),
    ],
)
def test_ans_spa(answer, cfg, expected):
    assert score(wrap("", answer), ST, cfg=cfg)["ans_spa"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("<obj>car</obj><box>[10, 20, 30, 40]</box>", 1.0),
        ("<obj>car</obj><box>[10, 20, 30, 30]</box>", 0.5),
        ("<box>[10, 20, 30, 40]</box> then <box>[0, 0, 1, 1]</box>", 1.0),  # the first box only
        ("<box>[0, 0, 1, 1]</box> then <box>[10, 20, 30, 40]</box>", 0.0),
        ("<box>[10, 20, 30]</box>", 0.0),
        ("a car", 0.0),
    ],
)
def test_ans_spa_visual_qa(answer, expected):
    assert score(wrap("", answer), VQA)["ans_spa"] == pytest.approx(expected)


@pytest.mark.parametrize("sample", [TG, MC, FF, STQ, {**ST, "key_items": None}])
def test_ans_spa_masked(sample):
    assert score(wrap("", claim(RS, [[0, 0, 10, 10]], 1.0)), sample)["ans_spa"] is None


# --- K(x) by task, totals, weights (Eq. 10) ------------------------------------------------------------
K_BY_TASK = {  # written from the task descriptions in Open-o3-Video's reward code, not from tasks.py
    "temporal_grounding": {"fmt", "ans_tmp", "thk_tmp"},
    "temporal_grounding_choice": {"ans", "fmt", "ans_tmp", "thk_tmp"},
    "spatio_temporal_qa": {"ans", "fmt", "thk_tmp", "thk_spa"},
    "spatio_temporal_grounding": {"fmt", "ans_spa", "thk_tmp", "thk_spa"},
    "multiple_choice": {"ans", "fmt"},
    "free_form": {"ans", "fmt"},
    "visual_qa": {"fmt", "ans_spa", "thk_spa"},
    "numerical": {"ans", "fmt"},
    "regression": {"ans", "fmt"},
    "ocr": {"ans", "fmt"},
}
ALIASES = {
    "temporal QA": "temporal_grounding",
    "temporal QA (MCQ)": "temporal_grounding_choice",
    "temporal-spatial free-form QA": "spatio_temporal_qa",
    "General video QA MCQ": "multiple_choice",
    "General video QA Free-form": "free_form",
    "visual QA": "visual_qa",
    "multiple choice": "multiple_choice",
    "free-form": "free_form",
    "OCR": "ocr",
}
FULL = {  # a record that carries every annotation: K(x) must come from the task alone
    **ST3,
    "answer": "B\n[2.0, 6.0]",
    "segment": [2.0, 6.0],
    "image_size": [100, 100],
    "frame_size": [100, 100],
}


@pytest.mark.parametrize("task", [*K_BY_TASK, *ALIASES])
def test_k_of_x_comes_from_the_task(task):
    answer = (
        "<obj>car</obj><box>[1,2,3,4]</box>" if ALIASES.get(task, task) == "visual_qa" else "B\n[2.0, 6.0]"
    )
    out = score(wrap("<t>3</t>s", "B"), {**FULL, "task": task, "answer": answer})
    assert tuple(out) == (*COMPONENTS, "total")
    assert {k for k in COMPONENTS if out[k] is not None} == K_BY_TASK[ALIASES.get(task, task)]
    assert canonical_task(task) == ALIASES.get(task, task)
    assert set(TASK_NAMES) == set(K_BY_TASK) | set(ALIASES)


def test_total_hand_computed():
    # TG: fmt 1 (two <t>), ans_tmp = IoU([4, 8], [2, 6]) = 2/6, thk_tmp = 1/2 (3 in, 7 out) -> 1 + 1/3 + 1/2
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


def _preset(name: str) -> RewardConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF.parent), version_base=None):
        return RewardConfig.from_cfg(compose("train", overrides=[f"reward={name}"]).reward)


def test_default_yaml_matches_dataclass_defaults():
    assert RewardConfig.from_cfg(OmegaConf.load(CONF / "default.yaml")) == RewardConfig()
    assert _preset("default") == RewardConfig()


def test_presets_differ_from_the_default_only_as_documented():
    assert _preset("open_o3") == RewardConfig(one_sided_gate=True, box_match="object_mean")
    assert _preset("strict_names") == RewardConfig(divide_by="matched", name_match="strict")


@pytest.mark.parametrize(
    "bad",
    [
        {"taus": 1.0},
        {"divide_by": "some"},
        {"name_match": "fuzzy"},
        {"box_match": "mean"},
        {"parsing": "loose"},
        {"thk_tmp_mode": "point"},  # gone: the task decides
        {"weights": {"bogus": 1.0}},
        {"tau": -1},
    ],
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
