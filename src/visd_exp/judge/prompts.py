"""Judge prompts: packaged or configured templates, rendering, and parsing a rendered user message back.

Templates use ``string.Template`` placeholders (``${task}``). Substitution is a single pass over the
template, so braces, dollars or template-looking text inside the student output are inserted verbatim
and never re-expanded. The system prompt is the same for every item (the per-sample notes live in
the user message), which keeps it a cacheable prefix for API providers.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from importlib import resources
from string import Template

from visd_exp.judge.base import JudgeItem

#: placeholders a template may use
FIELDS = ("task", "question", "standard_answer", "evidence", "final_answer", "student_output", "notes")

#: what the judge sees in place of the final answer when the student never wrote an <answer> block
NO_ANSWER_MARKER = "null (no <answer> tag found)"

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


def load_template(path: str | os.PathLike | None, kind: str) -> str:
    """Template text from ``path``, or the packaged ``templates/{kind}.txt`` when path is None."""
    if path is None:
        return check_template(_packaged(f"{kind}.txt"))
    with open(os.fspath(path), encoding="utf-8") as f:
        return check_template(f.read())


def _resolve(template: str | os.PathLike | None, kind: str) -> str:
    # str = template text; a Path = a file to read; None = the packaged template.
    if template is None or isinstance(template, os.PathLike):
        return load_template(template, kind)
    return check_template(template)


def extract_final_answer(completion: str) -> str | None:
    """Text of the last <answer>...</answer> block, stripped; None when there is none.

    Same rule as the verifier's parser (last closing tag, nearest opening tag before it).
    """
    j = completion.rfind("</answer>")
    i = completion.rfind("<answer>", 0, j) if j >= 0 else -1
    return completion[i + len("<answer>") : j].strip() if i >= 0 else None


def prompt_fields(item: JudgeItem) -> dict[str, str]:
    """The placeholder values for one item."""
    answer = extract_final_answer(item.completion)
    notes = [EVIDENCE_NOTE if item.evidence else NO_EVIDENCE_NOTE]
    if answer is None:
        notes.append(NO_ANSWER_NOTE)
    evidence = json.dumps(item.evidence, ensure_ascii=False, sort_keys=True) if item.evidence else "null"
    return {
        "task": item.task,
        "question": item.question.strip(),
        "standard_answer": item.standard_answer.strip(),
        "evidence": evidence,
        "final_answer": answer if answer is not None else NO_ANSWER_MARKER,
        "student_output": item.completion.strip(),
        "notes": "\n".join(notes),
    }


def build_messages(
    item: JudgeItem,
    system_template: str | os.PathLike | None = None,
    user_template: str | os.PathLike | None = None,
) -> list[dict]:
    """Chat messages for one item. A template is its text (str), a file (Path), or None (packaged)."""
    fields = prompt_fields(item)
    system = Template(_resolve(system_template, "system")).substitute(fields)
    user = Template(_resolve(user_template, "user")).substitute(fields)
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


def parse_user_message(text: str, user_template: str | os.PathLike | None = None) -> dict[str, str]:
    """Recover the placeholder values from a user message rendered with ``user_template``.

    Raises ValueError naming the fields whose labels are missing when the message has another shape.
    """
    template = _resolve(user_template, "user").strip()
    regex, labels = _template_regex(template)
    m = regex.match(text.strip())
    if m is None:
        missing = [name for name, label in labels if label and label not in text]
        if missing:
            raise ValueError(f"could not find the fields {missing} in the user message")
        raise ValueError("the user message does not follow the judge's user template")
    return m.groupdict()
