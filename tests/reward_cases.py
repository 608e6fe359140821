"""Generated completions with the reward Open-o3-Video's reward_func.py gives them, known by construction.

Each case is built from pieces whose effect on every one of the original's seven reward functions was
worked out by hand from reading that code (ans_acc, ans_tiou, ans_viou, format, thk_temporal_segment,
thk_temporal_point, thk_spatial). The expected values are computed from the construction parameters
(the numbers put into the text), never by parsing the text, so a parser or gate that reads the text
differently from the original fails. Used by tests/test_open_o3_reward.py and bench/open_o3_parity.py.

Records come in the project's schema (boxes in pixels of image_size, frame_size = the frame the model
saw, no `segment`: the interval is read from the answer as the original does). Coordinates are chosen so
that image -> frame rescaling is exact in floating point.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field

IMAGE = (640, 360)  # record image_size
FRAME = (320, 180)  # frame the model saw: GT pixel boxes are halved

# Key frames of the spatio-temporal records, file order: idx, time, {object: [GT boxes in IMAGE pixels]}.
KEY_FRAMES = [
    (4, 2.0, {"person": [[40, 40, 120, 200]]}),
    (10, 5.0, {"person": [[200, 40, 280, 200]], "dog": [[400, 200, 480, 280], [500, 200, 580, 280]]}),
    (18, 9.0, {"person": [[40, 100, 120, 260]]}),
]


def frame_box(box):
    return [v * FRAME[i % 2] / IMAGE[i % 2] for i, v in enumerate(box)]


@dataclass
class Case:
    name: str
    task: str
    record: dict
    completion: str
    progress: float
    expected: dict = field(default_factory=dict)  # the original's seven functions, by name

    @property
    def total(self) -> float:
        return sum(self.expected.values())


FUNCS = ("ans_acc", "ans_tiou", "ans_viou", "format", "thk_seg", "thk_point", "thk_spatial")


def _zero() -> dict:
    return dict.fromkeys(FUNCS, 0.0)


# --- pieces of a think block -------------------------------------------------------------------------


def t_tag(v: float, form: str = "strict") -> str:
    """A think timestamp. Only the strict form `<t>v</t>s` is read by the original."""
    return {"strict": f"<t>{v}</t>s", "no_s": f"<t>{v}</t>", "space_s": f"<t>{v}</t> s"}[form]


def claim(name: str, boxes: list, t: float, form: str = "strict") -> str:
    bx = "".join(f"<box>[{','.join(str(round(c, 3)) for c in b)}]</box>" for b in boxes)
    if form == "spaced":  # " at <t>": not a claim for the original (its <t> is still a timestamp)
        return f"<obj>{name}</obj>{bx} at <t>{t}</t>s"
    return f"<obj>{name}</obj>{bx}at<t>{t}</t>s"


def shifted(box, frac_x: float):
    """The box moved right by frac_x of its width: IoU = (1 - f) / (1 + f) for 0 <= f <= 1."""
    w = box[2] - box[0]
    return [box[0] + frac_x * w, box[1], box[2] + frac_x * w, box[3]]


def iou_shift(f: float) -> float:
    return max(0.0, (1 - f) / (1 + f))


# --- completion wrappers ------------------------------------------------------------------------------
# (template, think_visible, answer_visible, format_ok)
WRAPS = {
    "ok": ("<think>{t}</think><answer>{a}</answer>", True, True, True),
    "spaced": ("  <think>{t}</think>\n<answer> {a} </answer>\n", True, True, True),
    "answer_first": ("<answer>{a}</answer><think>{t}</think>", True, True, True),
    "double_answer": ("<think>{t}</think><answer>{a}</answer> <answer>zzz</answer>", True, True, True),
    "no_answer": ("<think>{t}</think>", True, False, False),
    "unclosed_answer": ("<think>{t}</think><answer>{a}", True, False, False),
    "no_think": ("<answer>{a}</answer>", False, True, False),
    "extra_think": ("<think>{t}</think><think>x<answer>{a}</answer>", True, True, False),
    "unpaired_obj": ("<think>{t} <obj>cut</think><answer>{a}</answer>", True, True, False),
    "unpaired_t": ("<think>{t} <t>3</think><answer>{a}</answer>", True, True, False),
}


def wrap(kind: str, think: str, answer: str) -> tuple[str, bool, bool, bool]:
    template, tv, av, ok = WRAPS[kind]
    return template.format(t=think, a=answer), tv, av, ok


# --- temporal QA and temporal QA (MCQ) ---------------------------------------------------------------

SEGMENT = (6.0, 14.0)
ANSWERS_TMP = {  # answer text -> IoU with SEGMENT by the original's pattern
    "exact": ("From <t>6.0</t>s to <t>14.0</t>s.", 1.0),
    "partial": ("From <t>4.0</t>s to <t>10.0</t>s.", 4.0 / 10.0),
    "inside": ("<t>8</t>s to <t>12.5</t>s", 4.5 / 8.0),
    "disjoint": ("From <t>20.0</t>s to <t>25.0</t>s.", 0.0),
    "reversed": ("From <t>14.0</t>s to <t>6.0</t>s.", 0.0),
    "no_s": ("From <t>6.0</t> to <t>14.0</t>.", 0.0),
    "dash": ("<t>6.0</t>s - <t>14.0</t>s", 0.0),
    "negative": ("From <t>-1.0</t>s to <t>14.0</t>s.", 0.0),
    "words": ("between six and fourteen seconds", 0.0),
}
THINK_TIMES = {  # (values with forms) -> (segment reward by construction, number of <t> tags)
    "all_in": ([(7.0, "strict"), (13.5, "strict")], 1.0, 2),
    "half": ([(7.0, "strict"), (2.0, "strict")], 0.5, 2),
    "edges": ([(6.0, "strict"), (14.0, "strict"), (14.5, "strict")], 2 / 3, 3),
    "forms": ([(7.0, "strict"), (2.0, "no_s"), (3.0, "space_s")], 1.0, 3),  # only 7.0 is read
    "one": ([(8.0, "strict")], 1.0, 1),  # fewer than two <t>: format 0.5
    "none": ([], 0.0, 0),
}


def temporal_cases(mcq: bool) -> list[Case]:
    cases = []
    letters = {"right": "C", "paren": "(C)", "dot": "C.", "wrong": "B", "lower": "c", "option": "Option C"}
    for (an, (atext, tiou)), (tn, (times, seg, n_t)), wk in itertools.product(
        ANSWERS_TMP.items(), THINK_TIMES.items(), ("ok", "spaced", "no_answer", "no_think", "unpaired_t")
    ):
        think = "I watch the clip. " + " then ".join(t_tag(v, f) for v, f in times)
        answer, acc = atext, None
        if mcq:
            ln = ["right", "paren", "dot", "wrong", "lower", "option"][len(cases) % 6]
            answer = f"{atext}\nCorrect Option: {letters[ln]}"
            acc = 1.0 if ln in ("right", "paren", "dot") else 0.0
        text, tv, av, ok = wrap(wk, think, answer)
        e = _zero()
        if av:
            e["ans_tiou"] = tiou
            if mcq:
                e["ans_acc"] = acc
        if tv:
            e["thk_seg"] = seg
        n_t_all = n_t + (1 if wk == "unpaired_t" else 0)
        e["format"] = (1.0 if n_t_all >= 2 else 0.5) if ok else 0.0
        record = {
            "id": f"tg{len(cases)}",
            "task": "temporal QA (MCQ)" if mcq else "temporal QA",
            "answer": f"C\n[{SEGMENT[0]}, {SEGMENT[1]}]" if mcq else f"[{SEGMENT[0]}, {SEGMENT[1]}]",
        }
        cases.append(Case(f"{record['task']}/{an}/{tn}/{wk}", record["task"], record, text, 0.5, e))
    return cases


# --- temporal-spatial free-form QA ------------------------------------------------------------------

ROUGE_PAIRS = {  # (reference, prediction) -> mean ROUGE-1/2/L F1 with Porter stemming, by hand
    "exact": ("the red car turns left", "the red car turns left", 1.0),
    "prefix": ("the red car turns left", "the red car", (0.75 + 2 / 3 + 0.75) / 3),
    "stem": ("dogs running", "dog runs", 1.0),  # dogs->dog, running/runs->run
    "disjoint": ("a man waves", "blue sky", 0.0),
}


def _st_record(i: int, answer: str) -> dict:
    return {
        "id": f"st{i}",
        "task": "temporal-spatial free-form QA",
        "answer": answer,
        "image_size": list(IMAGE),
        "frame_size": list(FRAME),
        "key_frames": [{"idx": idx, "time": t} for idx, t, _ in KEY_FRAMES],
        "key_items": {str(idx): items for idx, _, items in KEY_FRAMES},
    }


def _sigma(p: float) -> float:
    return 4 * (1 - p) if p < 0.75 else 1.0


def _point(times: list[float], p: float) -> float:
    keys = [t for _, t, _ in KEY_FRAMES]
    s = _sigma(p)
    return sum(math.exp(-(min(abs(t - k) for k in keys) ** 2) / (2 * s * s)) for t in times) / len(times)


# Claims: (text, claim time, spatial score under the original: one-sided gate, per-object mean, max over
# objects). GT person box on the 5.0 s frame, in frame pixels: [100, 20, 140, 100].
P5 = frame_box([200, 40, 280, 200])
D5A, D5B = frame_box([400, 200, 480, 280]), frame_box([500, 200, 580, 280])
P2 = frame_box([40, 40, 120, 200])
CLAIMS = {
    "exact5": (claim("person", [P5], 5.0), 5.0, 1.0),
    "shift5": (claim("person", [shifted(P5, 0.5)], 5.2), 5.2, iou_shift(0.5)),
    "two_boxes": (claim("person", [shifted(P5, 1.5), P5], 4.6), 4.6, 1.0),  # max over the claim's boxes
    "dog_one_of_two": (claim("dog", [D5A], 5.0), 5.0, 0.5),  # the dog's mean over its 2 GT boxes: (1+0)/2
    "wrong_name": (claim("cat", [P5], 5.0), 5.0, 1.0),  # names are not checked
    "late": (claim("person", [P2], 7.5), 7.5, 0.0),  # nearest gated frame is 5.0 (2-7.5<1, 5-7.5<1): IoU 0
    "late_p5": (
        claim("person", [P5], 7.5),
        7.5,
        1.0,
    ),  # one-sided gate passes 5.0 (5-7.5<1); Eq. 13 would not
    "early_far": (claim("person", [P5], 3.5), 3.5, 0.0),  # 5-3.5=1.5 not < 1; 2-3.5<1 -> 2.0 frame: IoU 0
    "bad_len": (claim("person", [[1, 2, 3]], 5.0), 5.0, 0.0),  # JSON but not 4 numbers: counts, IoU 0
}


def st_cases() -> list[Case]:
    cases = []
    claim_sets = [
        ["exact5"],
        ["exact5", "shift5"],
        ["two_boxes", "late"],
        ["late_p5", "shift5"],
        ["dog_one_of_two", "wrong_name"],
        ["early_far", "bad_len", "exact5"],
        [],
    ]
    extras = {  # appended after the claims: (text, extra think timestamps read, spatial claims added)
        "none": ("", []),
        "spaced_claim": (" " + claim("person", [P5], 5.0, "spaced"), [5.0]),  # not a claim, still a <t>
        "plain_time": (" around <t>8.0</t>s", [8.0]),
    }
    for ci, (cs, (xn, (xtext, xtimes)), (rn, (ref, pred, rouge)), p, wk) in enumerate(
        itertools.product(
            claim_sets,
            extras.items(),
            ROUGE_PAIRS.items(),
            (0.1, 0.8),
            ("ok", "no_answer", "unpaired_obj", "answer_first"),
        )
    ):
        think = "Looking: " + " and ".join(CLAIMS[c][0] for c in cs) + xtext
        text, tv, av, ok = wrap(wk, think, pred)
        times = [CLAIMS[c][1] for c in cs] + xtimes
        e = _zero()
        if av:
            e["ans_acc"] = rouge
        if tv and times:
            e["thk_point"] = _point(times, p)
        if tv and av and cs:
            e["thk_spatial"] = sum(CLAIMS[c][2] for c in cs) / len(cs)
        grounded = bool(cs) or xn == "spaced_claim"  # an <obj>, a <box> and a <t> in the think block
        e["format"] = (1.0 if grounded else 0.5) if ok else 0.0
        name = f"tsfQA/{'+'.join(cs) or 'no_claims'}/{xn}/{rn}/p{p}/{wk}"
        cases.append(Case(name, "temporal-spatial free-form QA", _st_record(ci, ref), text, p, e))
    return cases


# --- General video QA (MCQ and free-form) -----------------------------------------------------------


def general_cases() -> list[Case]:
    cases = []
    mcq = {
        "B": 1.0,
        "(B)": 1.0,
        "[B]": 1.0,
        "B.": 1.0,
        "b": 0.0,
        "Answer: B": 0.0,
        "B. left": 0.0,
        "C": 0.0,
        "": 0.0,
    }
    for (pred, acc), wk in itertools.product(
        mcq.items(), ("ok", "spaced", "no_think", "double_answer", "extra_think")
    ):
        text, tv, av, ok = wrap(wk, "The dog moves <t>3.0</t>s left.", pred)
        e = _zero()
        e["ans_acc"] = acc if av else 0.0
        e["format"] = 1.0 if ok else 0.0
        rec = {"id": f"mc{len(cases)}", "task": "General video QA MCQ", "answer": "B"}
        cases.append(Case(f"MCQ/{pred!r}/{wk}", rec["task"], rec, text, 0.5, e))
    for (rn, (ref, pred, rouge)), wk in itertools.product(
        ROUGE_PAIRS.items(), ("ok", "no_answer", "answer_first")
    ):
        text, tv, av, ok = wrap(wk, "thinking", pred)
        e = _zero()
        e["ans_acc"] = rouge if av else 0.0
        e["format"] = 1.0 if ok else 0.0
        rec = {"id": f"ff{len(cases)}", "task": "General video QA Free-form", "answer": ref}
        cases.append(Case(f"FF/{rn}/{wk}", rec["task"], rec, text, 0.5, e))
    return cases


# --- visual QA (images) ------------------------------------------------------------------------------

REF_BOX = [100, 60, 300, 260]  # in IMAGE pixels; in frame pixels [50, 30, 150, 130]


def visual_cases() -> list[Case]:
    cases = []
    gt = frame_box(REF_BOX)
    answers = {
        "exact": (f"<obj>car</obj><box>{gt}</box>", 1.0),
        "shift": (f"<obj>car</obj><box>{shifted(gt, 0.5)}</box>", iou_shift(0.5)),
        "bad_json": ("<obj>car</obj><box>[50, 30, 150,]</box>", 0.0),
        "three": ("<obj>car</obj><box>[50, 30, 150]</box>", 0.0),
        "no_box": ("a car", 0.0),
    }
    thinks = {  # think text -> (best think box IoU, has <obj>word</obj><box> somewhere, has obj+t+box)
        "claim": (
            f"The <obj>car</obj><box>{shifted(gt, 0.25)}</box>at<t>0</t>s",
            iou_shift(0.25),
            True,
            True,
        ),
        "spaced_name": (f"The <obj>red car</obj><box>{gt}</box> here", 1.0, False, False),
        "nothing": ("Just looking.", 0.0, False, False),
    }
    for (an, (atext, aiou)), (tn, (ttext, tiou, word_box, full)), wk in itertools.product(
        answers.items(), thinks.items(), ("ok", "no_answer", "unpaired_obj")
    ):
        text, tv, av, ok = wrap(wk, ttext, atext)
        e = _zero()
        if av:
            e["ans_viou"] = aiou
        if tv and av:
            e["thk_spatial"] = tiou
        # the answer's <obj>car</obj><box>[..]</box> also counts (the format check does not parse the box)
        grounded = full or word_box or (av and an != "no_box")
        e["format"] = (1.0 if grounded else 0.5) if ok else 0.0
        rec = {
            "id": f"vq{len(cases)}",
            "task": "visual QA",
            "answer": f"The <obj>car</obj><box>{REF_BOX}</box>",
            "image_size": list(IMAGE),
            "frame_size": list(FRAME),
        }
        cases.append(Case(f"VQA/{an}/{tn}/{wk}", rec["task"], rec, text, 0.5, e))
    return cases


def all_cases() -> list[Case]:
    return temporal_cases(False) + temporal_cases(True) + st_cases() + general_cases() + visual_cases()


# --- random mutations (for the parity bench against the original code: no expected values) ------------

_SNIPPETS = [
    "<t>",
    "</t>",
    "<obj>",
    "</obj>",
    "<box>",
    "</box>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
    " ",
    "s",
    "at",
    "[",
    "]",
    ",",
    "\n",
    "1.5",
    "Correct Option:",
    "-",
]


def mutate(text: str, rng: random.Random) -> str:
    """One random edit: delete a span, insert a tag or fragment, duplicate a span, or truncate."""
    if not text:
        return rng.choice(_SNIPPETS)
    i = rng.randrange(len(text) + 1)
    op = rng.randrange(4)
    if op == 0:
        return text[:i] + text[i + rng.randint(1, 12) :]
    if op == 1:
        return text[:i] + rng.choice(_SNIPPETS) + text[i:]
    if op == 2:
        j = min(len(text), i + rng.randint(1, 30))
        return text[:j] + text[i:j] + text[j:]
    return text[:i]
