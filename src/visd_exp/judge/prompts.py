"""Judge prompts: the packaged template sets, rendering, and parsing a rendered user message back.

Two packaged sets (``judge.template``):

  appendix_g   the paper's Appendix G prompt, verbatim (the default): G.1 system prompt
               (templates/appendix_g_system.txt) and G.2 user prompt (templates/appendix_g_user.txt).
               G.1's "## Task" section ends in three conditional cases; they are applied per item
               (``${conditions}``): "Hidden grounding evidence may be provided in the user prompt." when
               the item has keyframe evidence, "No hidden grounding evidence is required for this sample."
               when it has none, and the missing-answer paragraph when the student output has no final
               <answer>...</answer> block. The system prompt therefore varies per item, as G.1 states it.
               G.2's placeholders render as: {keyframe_object_evidence_json_or_null} -> the evidence as
               one-line JSON, or ``null``; {model_answer_or_null_no_answer_tag_found} -> the text of the
               first <answer> block (the one the verifier scores), or ``null (no <answer> tag found)``. The
               seed's text extraction dropped the apostrophes ("the students final answer"); they are
               restored as the paper prints them ("the student's final answer").
  paraphrase   the project's earlier paraphrase of the same protocol (templates/paraphrase_*.txt): a
               fixed system prompt (a cacheable prefix) and per-sample notes in the user message.

Templates use ``string.Template`` placeholders (``${task}``). Substitution is a single pass over the
template, so braces, dollars or template-looking text inside the student output are inserted verbatim
and never re-expanded. ``system_template`` / ``user_template`` (text or a file path) override either
message of the chosen set.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from importlib import resources
from string import Template

from visd_exp.judge.base import JudgeItem
from visd_exp.rewards.reading import first_answer

#: the packaged template sets; the first is the default
TEMPLATES = ("appendix_g", "paraphrase")
DEFAULT_TEMPLATE = TEMPLATES[0]

#: placeholders a template may use
FIELDS = (
    "task",
    "question",
    "standard_answer",
    "evidence",
    "final_answer",
    "student_output",
    "notes",
    "conditions",
)

#: what the judge sees in place of the final answer when the student never wrote an <answer> block
NO_ANSWER_MARKER = "null (no <answer> tag found)"

# Appendix G.1, "## Task": the case that applies to the item is rendered, verbatim.
G1_EVIDENCE = "Hidden grounding evidence may be provided in the user prompt."
G1_NO_EVIDENCE = "No hidden grounding evidence is required for this sample."
G1_NO_ANSWER = (
    "The student output does not contain a final <answer> or </answer> tag. You must still analyze the "
    "student's reasoning text and provide corrective feedback. In the feedback, explicitly point out that "
    "the final answer was not produced and that the response may have been truncated because the thinking "
    "section was too long. Treat the missing final answer as an incomplete response."
)

# The paraphrase template's per-sample notes.
EVIDENCE_NOTE = (
    "- Key-frame evidence is attached: use it to check the times, objects and regions the reasoning cites."
)
NO_EVIDENCE_NOTE = (
    "- No hidden evidence comes with this sample: judge from the reference answer and the text alone."
)
NO_ANSWER_NOTE = (
    "- The student output has no final <answer>...</answer> block. Analyse the reasoning anyway, state "
    "explicitly that no final answer was produced and that the output was probably cut off because the "
    "reasoning ran too long, and treat the response as incomplete."
)


def check_template_name(template: str) -> str:
    """``template`` if it names a packaged set, else a ValueError naming the choices."""
    if template not in TEMPLATES:
        raise ValueError(f"judge.template must be one of {list(TEMPLATES)}, got {template!r}")
    return template


def _packaged(name: str) -> str:
    return resources.files("visd_exp.judge").joinpath("templates", name).read_text(encoding="utf-8")


def check_template(text: str) -> str:
    """Return ``text`` if it is a valid template using only known placeholders, else raise ValueError."""
    tpl = Template(text)
    if not tpl.is_valid():
        raise ValueError("judge template has an invalid $-placeholder (write $$ for a literal dollar)")
    unknown = sorted(set(tpl.get_identifiers()) - set(FIELDS))
    if unknown:
        raise ValueError(f"judge template uses unknown placeholders {unknown}; allowed: {list(FIELDS)}")
    return text


def load_template(path: str | os.PathLike | None, kind: str, template: str = DEFAULT_TEMPLATE) -> str:
    """Template text from ``path``, or the packaged ``templates/{template}_{kind}.txt`` when path is None."""
    if path is None:
        return check_template(_packaged(f"{check_template_name(template)}_{kind}.txt"))
    with open(os.fspath(path), encoding="utf-8") as f:
        return check_template(f.read())


def _resolve(text_or_path: str | os.PathLike | None, kind: str, template: str) -> str:
    # str = template text; a Path = a file to read; None = the packaged template.
    if text_or_path is None or isinstance(text_or_path, os.PathLike):
        return load_template(text_or_path, kind, template)
    return check_template(text_or_path)


def extract_final_answer(completion: str) -> str | None:
    """Text of the first <answer>...</answer> block, stripped; None when there is none: the answer the
    verifier scores (Open-o3-Video's rule, rewards/reading.py)."""
    return first_answer(completion)


def render_evidence(evidence) -> str:
    """The evidence as one line of JSON (keys sorted), or ``null`` when there is none."""
    return json.dumps(evidence, ensure_ascii=False, sort_keys=True) if evidence else "null"


def prompt_fields(item: JudgeItem) -> dict[str, str]:
    """The placeholder values for one item."""
    answer = extract_final_answer(item.completion)
    notes = [EVIDENCE_NOTE if item.evidence else NO_EVIDENCE_NOTE]
    conditions = [G1_EVIDENCE if item.evidence else G1_NO_EVIDENCE]
    if answer is None:
        notes.append(NO_ANSWER_NOTE)
        conditions.append(G1_NO_ANSWER)
    return {
        "task": item.task,
        "question": item.question.strip(),
        "standard_answer": item.standard_answer.strip(),
        "evidence": render_evidence(item.evidence),
        "final_answer": answer if answer is not None else NO_ANSWER_MARKER,
        "student_output": item.completion.strip(),
        "notes": "\n".join(notes),
        "conditions": "\n".join(conditions),
    }


def build_messages(
    item: JudgeItem,
    system_template: str | os.PathLike | None = None,
    user_template: str | os.PathLike | None = None,
    template: str = DEFAULT_TEMPLATE,
) -> list[dict]:
    """Chat messages for one item.

    ``template`` picks the packaged set; ``system_template`` / ``user_template`` override one message
    with template text (str) or a file (Path).
    """
    fields = prompt_fields(item)
    system = Template(_resolve(system_template, "system", template)).substitute(fields)
    user = Template(_resolve(user_template, "user", template)).substitute(fields)
    return [{"role": "system", "content": system.strip()}, {"role": "user", "content": user.strip()}]


@lru_cache(maxsize=8)
def _template_regex(template: str) -> tuple[re.Pattern, tuple[tuple[str, str], ...]]:
    """An anchored regex matching any rendering of ``template``, and each field's label line."""
    parts, labels, seen = [r"\A"], [], set()
    pos = 0
    for m in Template.pattern.finditer(template):
        literal = template[pos : m.start()]
        parts.append(re.escape(literal))
        pos = m.end()
        if m.group("escaped") is not None:
            parts.append(re.escape("$"))
            continue
        name = m.group("named") or m.group("braced")
        if name in seen:
            parts.append(f"(?P={name})")
        else:
            seen.add(name)
            parts.append(f"(?P<{name}>.*?)")
            lines = [ln.strip() for ln in literal.split("\n") if ln.strip()]
            labels.append((name, lines[-1] if lines else ""))
    parts.append(re.escape(template[pos:]) + r"\Z")
    return re.compile("".join(parts), re.DOTALL), tuple(labels)


def parse_user_message(
    text: str, user_template: str | os.PathLike | None = None, template: str = DEFAULT_TEMPLATE
) -> dict[str, str]:
    """Recover the placeholder values from a user message rendered exactly with a user template.

    Raises ValueError naming the fields whose labels are missing when the message has another shape.
    """
    regex, labels = _template_regex(_resolve(user_template, "user", template).strip())
    m = regex.match(text.strip())
    if m is None:
        missing = [name for name, label in labels if label and label not in text]
        if missing:
            raise ValueError(f"could not find the fields {missing} in the user message")
        raise ValueError("the user message does not follow the judge's user template")
    return m.groupdict()
