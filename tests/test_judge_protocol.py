"""The judge protocol of the paper's Appendix G: the rendered prompts, and the served judge answering
Appendix-G prompts sent by a plain httpx client (real HTTP over loopback)."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from visd_exp.judge import JudgeItem, RuleJudge, build_judge, build_messages
from visd_exp.judge.prompts import G1_EVIDENCE, G1_NO_ANSWER, G1_NO_EVIDENCE, NO_ANSWER_MARKER
from visd_exp.judge.protocol import ProtocolError, parse_evidence, parse_g2
from visd_exp.judge.serve import start_server, stop

EVIDENCE = {
    "segment": [2.0, 5.0],
    "key_frames": [{"time": 3.0, "objects": {"red square": [[10, 10, 50, 50]]}}],
}
TG_REF = "From <t>2.0</t>s to <t>5.0</t>s"
ANSWERED = (
    "<think>The square appears at <t>2.5</t>s and is still there at <t>4.5</t>s.</think><answer>"
    + TG_REF
    + "</answer>"
)
TRUNCATED = "<think>The square appears at <t>2.5</t>s and then"

G1_SECTIONS = [
    "## Role",
    "## Mission",
    "## Input Boundaries",
    "## Output Format",
    "## Feedback Requirements",
    "## Evaluation Focus",
    "## Task",
]
# G.2's lines, in order: (line prefix, what follows it for the item below)
G2_LINES = [
    "Please judge the following sample.",
    "## Task And Reference Context",
    "- Task type: temporal_grounding",
    "- Question: When is the red square visible?",
    "- Standard answer: " + TG_REF,
    "- Keyframe object evidence: " + json.dumps(EVIDENCE, sort_keys=True),
    "- Keyframe object evidence is hidden grounding reference. Use it only to judge whether the student's "
    "reasoning points to the right time, object, and spatial region.",
    "## Student Submission",
    "- Student final answer: " + TG_REF,
    "- Student full output: " + ANSWERED,
    "## Required Output",
    "{",
    '"feedback": "{concise diagnostic feedback}"',
    "}",
]


def item(completion: str = ANSWERED, evidence=EVIDENCE, task="temporal_grounding") -> JudgeItem:
    return JudgeItem(task, "When is the red square visible?", TG_REF, evidence, completion)


# -- rendering -----------------------------------------------------------------------------------------------


def test_default_messages_are_appendix_g():
    system, user = (m["content"] for m in build_messages(item()))
    assert user.split("\n") == G2_LINES
    lines = system.split("\n")
    assert lines[:2] == ["## Role", "You are a strict video and image QA judge."]
    assert [ln for ln in lines if ln.startswith("## ")] == G1_SECTIONS
    assert "- Return strict JSON only with key: feedback." in lines
    assert lines[-2:] == [
        "Compare the verified answer against the student's final answer and reasoning text, then return the "
        "feedback JSON.",
        G1_EVIDENCE,
    ]
    assert "If keyframe object evidence" not in system  # G.1's cases are applied, not shown


def test_g1_cases_follow_the_item():
    def tail(it):
        system = build_messages(it)[0]["content"]
        return system.split("## Task\n", 1)[1].split("\n")[1:]

    assert tail(item()) == [G1_EVIDENCE]
    assert tail(item(evidence=None)) == [G1_NO_EVIDENCE]
    assert tail(item(TRUNCATED)) == [G1_EVIDENCE, G1_NO_ANSWER]
    assert tail(item(TRUNCATED, evidence=None)) == [G1_NO_EVIDENCE, G1_NO_ANSWER]
    assert G1_NO_ANSWER.startswith("The student output does not contain a final <answer> or </answer> tag.")
    # G.2's placeholders for a missing evidence and a missing final answer
    user = build_messages(item(TRUNCATED, evidence=None))[1]["content"].split("\n")
    assert "- Keyframe object evidence: null" in user
    assert f"- Student final answer: {NO_ANSWER_MARKER}" in user


def test_paraphrase_template_and_overrides_stay_available(tmp_path):
    para = build_messages(item(), template="paraphrase")
    assert para[0]["content"].startswith("## Your role") and "## Notes for this sample" in para[1]["content"]
    path = tmp_path / "user.txt"
    path.write_text("Q=${question}\n${conditions}")
    custom = build_messages(item(evidence=None), user_template=path)
    assert custom[1]["content"] == f"Q=When is the red square visible?\n{G1_NO_EVIDENCE}"
    assert custom[0]["content"].startswith("## Role")  # the system prompt is still Appendix G's
    with pytest.raises(ValueError, match="appendix_g"):
        build_messages(item(), template="gpt")
    judge = build_judge(
        {"name": "x", "base_url": "http://127.0.0.1:9/v1", "model": "m", "template": "paraphrase"}
    )
    assert judge.messages(item()) == para
    judge.close()


# -- reading G.2 ---------------------------------------------------------------------------------------------


def paper_prompt(
    task, answer, output, final=None, evidence="null", question="When is the red square visible?"
):
    """A G.2 user prompt as a client written from the paper would assemble it (not the project's code)."""
    final = final if final is not None else "null (no answer tag found)"
    return (
        "Please judge the following sample.\n"
        "## Task And Reference Context\n"
        f"- Task type: {task}\n"
        f"- Question: {question}\n"
        f"- Standard answer: {answer}\n"
        f"- Keyframe object evidence: {evidence}\n"
        "- Keyframe object evidence is hidden grounding reference. Use it only to judge whether the "
        "student's reasoning points to the right time, object, and spatial region.\n"
        "## Student Submission\n"
        f"- Student final answer: {final}\n"
        f"- Student full output: {output}\n"
        "## Required Output\n"
        '{\n"feedback": "{concise diagnostic feedback}"\n}\n'
    )


def test_parse_g2_reads_multiline_fields_and_pretty_evidence():
    output = "<think>## Required Output is not a header here\n- Task type: x</think><answer>C</answer>"
    text = paper_prompt(
        "temporal QA (MCQ)",
        "C\n[11.5, 19.0]",
        output,
        final="From <t>11.5</t>s to <t>19.0</t>s.\nCorrect Option: C",
        evidence=json.dumps(EVIDENCE, indent=2),
        question="When?\nA. early\nB. middle\nC. late",
    )
    fields = parse_g2(text)
    assert fields["task"] == "temporal QA (MCQ)" and fields["standard_answer"] == "C\n[11.5, 19.0]"
    assert fields["question"] == "When?\nA. early\nB. middle\nC. late"
    assert fields["final_answer"] == "From <t>11.5</t>s to <t>19.0</t>s.\nCorrect Option: C"
    assert fields["student_output"] == output
    assert parse_evidence(fields["evidence"]) == {
        "segment": [2.0, 5.0],
        "key_frames": [{"time": 3.0, "objects": {"red square": [[10.0, 10.0, 50.0, 50.0]]}}],
    }
    # the project's own rendering reads back to the same item
    for it in (item(), item(TRUNCATED, evidence=None)):
        fields = parse_g2(build_messages(it)[1]["content"])
        assert fields["student_output"] == it.completion and parse_evidence(fields["evidence"]) == it.evidence
    with pytest.raises(ProtocolError, match="- Standard answer:"):
        parse_g2("- Task type: x\n- Student full output: y")
    with pytest.raises(ProtocolError, match="key_frames\\[0\\].time"):
        parse_evidence('{"key_frames": [{"time": "soon"}]}')


@settings(max_examples=100, deadline=None)
@given(
    question=st.text(alphabet=st.sampled_from(list("abc XYZ?.\n{}$")), min_size=1, max_size=40),
    output=st.text(alphabet=st.sampled_from(list("<>/thinkaswer #Rq{}$\n.0123")), max_size=80),
    evidence=st.sampled_from([None, EVIDENCE]),
)
def test_g2_rendering_reads_back(question, output, evidence):
    it = JudgeItem("temporal QA", question, TG_REF, evidence, output)
    fields = parse_g2(build_messages(it)[1]["content"])
    assert fields["question"] == question.strip() and fields["student_output"] == output.strip()
    assert parse_evidence(fields["evidence"]) == evidence


# -- the served judge, asked by a plain httpx client ----------------------------------------------------------


@pytest.fixture(scope="module")
def server_url():
    server, thread, url = start_server("127.0.0.1", 0)
    yield url
    stop(server, thread)


def ask(url: str, user: str, system: str = "You are a judge. Reply in JSON.") -> httpx.Response:
    body = {
        "model": "any-name",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        "max_completion_tokens": 200,
    }
    return httpx.post(f"{url}/chat/completions", json=body, timeout=10)


def feedback(resp: httpx.Response) -> str:
    assert resp.status_code == 200, resp.text
    return json.loads(resp.json()["choices"][0]["message"]["content"])["feedback"]


def test_served_judge_diagnoses_appendix_g_prompts(server_url):
    think = "<think>The square shows up at <t>8.0</t>s and is gone after <t>9.0</t>s.</think>"
    wrong = paper_prompt(
        "temporal QA", "[2.0, 5.0]", f"{think}<answer>[7.5, 9.5]</answer>", "[7.5, 9.5]", json.dumps(EVIDENCE)
    )
    fb = feedback(ask(server_url, wrong))
    assert "wrong" in fb and "wrong time window" in fb and "correct" not in fb
    right = paper_prompt("temporal QA", "[2.0, 5.0]", ANSWERED, TG_REF)
    fb = feedback(ask(server_url, right, system=build_messages(item())[0]["content"]))
    assert "fully correct" in fb and "wrong" not in fb
    missing = paper_prompt("temporal QA", "[2.0, 5.0]", TRUNCATED)
    assert "No final answer" in feedback(ask(server_url, missing))
    stg = "<obj>red square</obj><box>[10,10,50,50]</box>at<t>3.0</t>s"
    off = "<obj>red square</obj><box>[100,100,140,140]</box>at<t>3.0</t>s"
    wrong_object = paper_prompt(
        "spatio_temporal_grounding",
        stg,
        f"<think>The {off} sits at the top right.</think><answer>{off}</answer>",
    )
    fb = feedback(ask(server_url, wrong_object))
    assert "wrong" in fb and "mislocalised" in fb
    mcq = paper_prompt(
        "temporal QA (MCQ)",
        "C\n[2.0, 5.0]",
        f"{think}<answer>From <t>2.0</t>s to <t>5.0</t>s.\nCorrect Option: C</answer>",
        "From <t>2.0</t>s to <t>5.0</t>s.\nCorrect Option: C",
    )
    assert "fully correct" in feedback(ask(server_url, mcq))


def test_served_judge_matches_the_rule_judge_for_both_templates(server_url):
    for template in ("appendix_g", "paraphrase"):
        for it in (item(), item(TRUNCATED, evidence=None), item(ANSWERED.replace("5.0", "9.0"))):
            system, user = build_messages(it, template=template)
            resp = httpx.post(f"{server_url}/chat/completions", json={"messages": [system, user]}, timeout=10)
            assert feedback(resp) == RuleJudge().diagnose(it).feedback


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [{"role": "user", "content": "Is the sky blue?"}]}, "- Task type:"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}, "Appendix G.2"),
        ({"messages": [{"role": "system", "content": "x"}]}, "role 'user'"),
        ({"messages": []}, "role 'user'"),
        ("not an object", "'messages'"),
        (b"{not json", "not JSON"),
        ({"messages": [{"role": "user", "content": paper_prompt("tg", "", "x")}]}, "'- Standard answer:' of"),
        (
            {"messages": [{"role": "user", "content": paper_prompt("tg", TG_REF, "x", evidence="{oops")}]},
            "evidence",
        ),
    ],
)
def test_unreadable_requests_get_400_naming_what_is_missing(server_url, body, expected):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    resp = httpx.post(f"{server_url}/chat/completions", timeout=10, **kwargs)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error" and expected in error["message"]
