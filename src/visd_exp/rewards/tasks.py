"""The task table: which reward components a task supports (K(x) of Eq. 10) and what its format needs.

One row per task. A record's `task` may be the project's name or any alias: Open-o3-Video's task
strings exactly as its STGR data writes them, and Video-R1's `problem_type` values.

answer      how `ans` is scored: choice (exact option letter), choice_keyed (the letter after
            "Correct Option:", Open-o3-Video's temporal MCQ), rouge (mean ROUGE-1/2/L F1, stemmed),
            number (Video-R1's numerical rule), regression (1 - relative error), ocr (1 - word error
            rate), None (no answer-correctness term)
ans_tmp     the answer's interval is scored by temporal IoU
ans_spa     claims: the answer's grounded claims against the key frames (the project's answer-with-boxes
            task); box: the answer's first <box> against the reference's box (Open-o3-Video visual QA)
thk_tmp     segment: Eq. 11 (share of think timestamps inside the GT interval); point: Eq. 12 (Gaussian
            proximity to the nearest key-frame time, sigma annealed); None: not rewarded
thk_spa     claims: Eq. 13 over the think block's claims; box: best think <box> vs the reference box
fmt         what a well-formed output also needs for 1.0 instead of 0.5: none (paired <think>/<answer>
            suffices), times (at least two <t> in the think block), claims (at least one <obj>, <box>
            and <t> in the think block), claims_or_box (claims, or an `<obj>word</obj><box>[..]</box>`)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    answer: str | None
    ans_tmp: bool = False
    ans_spa: str | None = None
    thk_tmp: str | None = None
    thk_spa: str | None = None
    fmt: str = "none"
    aliases: tuple[str, ...] = ()

    @property
    def uses_key_frames(self) -> bool:
        """Its components read key frames: Eq. 12's times, or the boxes of Eq. 13 / the answer's claims."""
        return self.thk_tmp == "point" or self.thk_spa == "claims" or self.ans_spa == "claims"

    @property
    def components(self) -> frozenset[str]:
        """K(x): the components this task supports; the others are masked out of Eq. 10."""
        present = {
            "ans": self.answer is not None,
            "fmt": True,
            "ans_tmp": self.ans_tmp,
            "ans_spa": self.ans_spa is not None,
            "thk_tmp": self.thk_tmp is not None,
            "thk_spa": self.thk_spa is not None,
        }
        return frozenset(k for k, on in present.items() if on)


TASKS: tuple[TaskSpec, ...] = (
    # Temporal grounding: "When does X happen?" -> From <t>s</t>s to <t>e</t>s.
    TaskSpec(
        "temporal_grounding", None, ans_tmp=True, thk_tmp="segment", fmt="times", aliases=("temporal QA",)
    ),
    # Temporal grounding with options: the interval AND "Correct Option: L", both scored.
    TaskSpec(
        "temporal_grounding_choice",
        "choice_keyed",
        ans_tmp=True,
        thk_tmp="segment",
        fmt="times",
        aliases=("temporal QA (MCQ)",),
    ),
    # Free-text question about objects in time and space: ROUGE answer, grounding rewarded in the think
    # block only (Eq. 12 point version and Eq. 13).
    TaskSpec(
        "spatio_temporal_qa",
        "rouge",
        thk_tmp="point",
        thk_spa="claims",
        fmt="claims",
        aliases=("temporal-spatial free-form QA",),
    ),
    # The project's own answer-with-boxes task: the answer IS the grounded claims.
    TaskSpec(
        "spatio_temporal_grounding", None, ans_spa="claims", thk_tmp="point", thk_spa="claims", fmt="claims"
    ),
    TaskSpec("multiple_choice", "choice", aliases=("General video QA MCQ", "multiple choice")),
    TaskSpec("free_form", "rouge", aliases=("General video QA Free-form", "free-form")),
    # Open-o3-Video's image grounding records: one reference box inside the answer text.
    TaskSpec("visual_qa", None, ans_spa="box", thk_spa="box", fmt="claims_or_box", aliases=("visual QA",)),
    # Video-R1's answer types.
    TaskSpec("numerical", "number"),
    TaskSpec("regression", "regression"),
    TaskSpec("ocr", "ocr", aliases=("OCR",)),
)

_BY_NAME: dict[str, TaskSpec] = {}
for _spec in TASKS:
    for _key in (_spec.name, *_spec.aliases):
        _BY_NAME[_key] = _spec
TASK_NAMES: tuple[str, ...] = tuple(_BY_NAME)  # every accepted spelling, project names first


class UnknownTaskError(ValueError):
    pass


def task_spec(task: str) -> TaskSpec:
    """The row for a task name or alias (exact spelling); an unknown task is an error, never a guess."""
    spec = _BY_NAME.get(task) if isinstance(task, str) else None
    if spec is None:
        raise UnknownTaskError(f"unknown task {task!r}; known: {', '.join(repr(t) for t in TASK_NAMES)}")
    return spec


def canonical_task(task: str) -> str:
    """The project's name for a task or alias ("temporal QA" -> "temporal_grounding")."""
    return task_spec(task).name
