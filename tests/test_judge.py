"""Judge: evidence, prompts, rule judge, reply parsing, cache and config (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from visd_exp.judge import (
    METRIC_KEYS,
    Judge,
    JudgeError,
    JudgeItem,
    RuleJudge,
    build_judge,
    build_messages,
    evidence_from_sample,
)
from visd_exp.judge.cache import FeedbackCache, cache_key
from visd_exp.judge.http import HttpJudge, parse_feedback, retry_after_seconds
from visd_exp.judge.prompts import NO_ANSWER_MARKER, check_template, parse_user_message, prompt_fields

CONF = Path(__file__).resolve().parents[1] / "conf" / "judge"
TG_REF = "From <t>2.0</t>s to <t>5.0</t>s"
EVIDENCE = {
    "segment": [2.0, 5.0],
    "key_frames": [{"time": 3.0, "objects": {"red square": [[10, 10, 50, 50]]}}],
}
STG_REF = "<obj>red square</obj><box>[10,10,50,50]</box>at<t>3.0</t>s"


def tg(completion: str, evidence=EVIDENCE) -> JudgeItem:
    return JudgeItem("temporal_grounding", "When is the red square visible?", TG_REF, evidence, completion)


def test_rule_judge_diagnoses_the_answer_the_verifier_scores():
    """Two answer blocks: the verifier scores the first (Open-o3-Video's rule), so must the judge."""
    from visd_exp.rewards import score

    judge = RuleJudge()
    think = "<think>The red square appears at <t>2.0</t>s and leaves at <t>5.0</t>s.</think>"
    wrong_then_right = f"{think}<answer>From <t>7.0</t>s to <t>9.0</t>s</answer><answer>{TG_REF}</answer>"
    sample = {"task": "temporal_grounding", "answer": TG_REF, "segment": [2.0, 5.0]}
    assert score(wrong_then_right, sample)["ans_tmp"] == 0.0
    assert judge.diagnose(tg(wrong_then_right)).verdict == "wrong"
    right_then_wrong = f"{think}<answer>{TG_REF}</answer><answer>From <t>7.0</t>s to <t>9.0</t>s</answer>"
    assert score(right_then_wrong, sample)["ans_tmp"] == 1.0
    assert judge.diagnose(tg(right_then_wrong)).verdict == "correct"


# -- evidence ------------------------------------------------------------------------------------------


def test_evidence_from_sample_scales_to_frame_size_and_sorts():
    sample = {
        "segment": [1, 4],
        "key_frames": [{"idx": 90, "time": 3.0}, {"idx": 30, "time": 1.0}],
        "key_items": {"30": {"cat": [[0, 0, 100, 50]]}},
        "image_size": [200, 100],
        "frame_size": [100, 50],
    }
    ev = evidence_from_sample(sample)
    assert ev == {
        "segment": [1.0, 4.0],
        "key_frames": [
            {"time": 1.0, "objects": {"cat": [[0.0, 0.0, 50.0, 25.0]]}},
            {"time": 3.0, "objects": {}},
        ],
    }
    assert evidence_from_sample({"segment": None, "key_frames": []}) is None


# -- prompts -------------------------------------------------------------------------------------------


def test_build_messages_keeps_braces_and_dollars_verbatim():
    nasty = (
        '<think>{"feedback": "x"} ${task} $notes {0} {}</think><answer>From <t>2</t>s to <t>4</t>s</answer>'
    )
    msgs = build_messages(tg(nasty))
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert nasty in user and "temporal_grounding" in user
    assert '"segment": [2.0, 5.0]' in user
    assert "JSON" in msgs[0]["content"] and "feedback" in msgs[0]["content"]
    # the rendered message parses back to exactly the fields that went in, with either template
    fields = prompt_fields(tg(nasty))
    parsed = parse_user_message(user)
    assert parsed == {k: fields[k] for k in parsed} and set(parsed) >= {"task", "student_output"}
    para = build_messages(tg(nasty), template="paraphrase")[1]["content"]
    parsed = parse_user_message(para, template="paraphrase")
    assert parsed == {k: fields[k] for k in parsed} and "notes" in parsed


def test_prompt_marks_missing_answer_and_missing_evidence():
    fields = prompt_fields(tg("<think>still thinking about <t>3</t>s", evidence=None))
    assert fields["final_answer"] == NO_ANSWER_MARKER
    assert fields["evidence"] == "null"
    assert "no final <answer>" in fields["notes"] and "No hidden evidence" in fields["notes"]
    assert prompt_fields(tg("<answer>B</answer>"))["final_answer"] == "B"


def test_custom_templates_from_text_and_path(tmp_path):
    path = tmp_path / "user.txt"
    path.write_text("Q=${question} A=${final_answer} cost $$5\n")
    msgs = build_messages(tg("<answer>x</answer>"), system_template="sys {json}", user_template=path)
    assert msgs == [
        {"role": "system", "content": "sys {json}"},
        {"role": "user", "content": "Q=When is the red square visible? A=x cost $5"},
    ]
    with pytest.raises(ValueError, match="unknown placeholders"):
        check_template("${video_frames}")


def test_parse_user_message_names_what_is_missing():
    with pytest.raises(ValueError, match="task"):
        parse_user_message("hello judge, is this right?")


# -- rule judge ------------------------------------------------------------------------------------------

CASES = {
    "correct": tg(
        "<think>The square appears at <t>2.2</t>s and is still there at <t>4.5</t>s.</think>"
        + f"<answer>{TG_REF}</answer>"
    ),
    "wrong_focus": tg(
        "<think>The square shows up at <t>8.0</t>s and is gone after <t>9.0</t>s.</think><answer>From <t>7.5</t>s to <t>9.5</t>s</answer>"
    ),
    "too_little_evidence": tg(
        "<think>It happens somewhere late in the video, I believe, most likely.</think><answer>From <t>7.0</t>s to <t>9.0</t>s</answer>"
    ),
    "answer_drift": tg(
        "<think>The square appears at <t>2.5</t>s and is visible at <t>4.0</t>s before leaving.</think><answer>From <t>6.0</t>s to <t>9.0</t>s</answer>"
    ),
    "incomplete": tg("<think>The square appears at <t>2.5</t>s and then at <t>3.0</t>s and then it"),
}


@pytest.mark.parametrize("expected", list(CASES))
def test_rule_judge_causes(expected):
    d = RuleJudge().diagnose(CASES[expected])
    assert 2 <= len(d.sentences) <= 4
    if expected == "correct":
        assert d.verdict == "correct" and d.cause is None and "correct" in d.feedback
    else:
        assert d.cause == expected and d.verdict != "correct"
    if expected == "wrong_focus":
        assert "wrong time window" in d.feedback
    if expected == "incomplete":
        assert "No final answer" in d.feedback and "cut off" in d.feedback


def test_rule_judge_spatial_and_choice_causes():
    judge = RuleJudge()
    mis = JudgeItem(
        "spatio_temporal_grounding",
        "Where is the red square?",
        STG_REF,
        EVIDENCE,
        "<think>The <obj>red square</obj><box>[100,100,140,140]</box>at<t>3.0</t>s sits at the top right.</think>"
        "<answer><obj>red square</obj><box>[100,100,140,140]</box>at<t>3.0</t>s</answer>",
    )
    d = judge.diagnose(mis)
    assert (d.verdict, d.cause) == ("wrong", "wrong_focus") and "mislocalised" in d.feedback
    drift = JudgeItem(
        "multiple_choice",
        "Where does he go?\nA. left\nB. right",
        "B",
        None,
        "<think>He turns and walks toward the right door, so the answer is B.</think><answer>A</answer>",
    )
    d = judge.diagnose(drift)
    assert d.cause == "answer_drift" and "option B" in d.feedback
    right = JudgeItem(
        "multiple_choice",
        "q",
        "B",
        None,
        "<think>He walks toward the right door, so B.</think><answer>(B)</answer>",
    )
    assert judge.diagnose(right).verdict == "correct"


def test_rule_judge_partly_correct_and_free_form():
    judge = RuleJudge()
    partly = judge.diagnose(
        tg(
            "<think>Visible at <t>2.5</t>s, <t>3.5</t>s and <t>4.5</t>s clearly.</think><answer>From <t>2.0</t>s to <t>8.0</t>s</answer>"
        )
    )
    assert partly.verdict == "partly" and "0.50" in partly.feedback
    ff = JudgeItem(
        "free_form",
        "What happens?",
        "a man rides a red bicycle",
        None,
        "<think>x</think><answer>A man riding a red bicycle</answer>",
    )
    assert judge.diagnose(ff).verdict == "correct"


def test_rule_judge_is_deterministic_and_uses_the_sample():
    sample = {
        "segment": [2.0, 5.0],
        "key_frames": [{"idx": 3, "time": 3.0}],
        "key_items": {"3": {"red square": [[10, 10, 50, 50]]}},
        "image_size": [100, 100],
    }
    item = JudgeItem(
        "temporal_grounding", "When?", TG_REF, None, CASES["wrong_focus"].completion, sample=sample
    )
    first = RuleJudge().judge_batch([item, *CASES.values()])
    assert first == RuleJudge().judge_batch([item, *CASES.values()])
    assert first[0] == RuleJudge().diagnose(CASES["wrong_focus"]).feedback


def test_rule_judge_metrics():
    judge = RuleJudge()
    assert isinstance(judge, Judge)
    judge.judge_batch(list(CASES.values()))
    m = judge.pop_metrics()
    assert set(METRIC_KEYS) <= set(m)
    assert m["judge/calls"] == 5 and m["judge/fallback_rate"] == 0.0 and m["judge/cache_hits"] == 0
    assert judge.pop_metrics()["judge/calls"] == 0


@settings(max_examples=150, deadline=None)
@given(
    task=st.sampled_from(
        [
            "temporal_grounding",
            "spatio_temporal_grounding",
            "multiple_choice",
            "free_form",
            "numerical",
            "weird",
        ]
    ),
    completion=st.text(alphabet=st.sampled_from(list("<>/thinkaswerobjx0123456789.[], {}$")), max_size=120),
)
def test_rule_judge_never_raises_and_stays_short(task, completion):
    ref = {"multiple_choice": "C", "numerical": "42", "spatio_temporal_grounding": STG_REF}.get(task, TG_REF)
    d = RuleJudge().diagnose(JudgeItem(task, "q", ref, EVIDENCE, completion))
    assert 2 <= len(d.sentences) <= 4 and all(s.strip() for s in d.sentences)


# -- replies, cache ----------------------------------------------------------------------------------------


def test_parse_feedback_strict_repair_and_validation():
    assert parse_feedback('{"feedback": " Good. "}', 100) == "Good."
    assert parse_feedback('Sure!\n```json\n{"feedback": "Fixed {x}."}\n```', 100) == "Fixed {x}."
    assert parse_feedback("feedback: fine", 100) is None
    assert parse_feedback('{"feedback": "   "}', 100) is None
    assert parse_feedback('{"feedback": 3}', 100) is None
    assert parse_feedback('{"verdict": "ok"}', 100) is None
    assert parse_feedback(None, 100) is None
    assert parse_feedback(json.dumps({"feedback": "a" * 50}), 10) == "a" * 10


def test_retry_after_parsing():
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("-1") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_cache_roundtrip_layout_and_corruption(tmp_path):
    cache = FeedbackCache(tmp_path)
    key = cache_key("m", [{"role": "user", "content": "hi"}])
    assert cache.get(key) is None
    cache.put(key, "Looks right.", "m")
    assert cache.get(key) == "Looks right."
    path = tmp_path / key[:2] / key[2:4] / f"{key}.json"
    assert path.is_file() and not list(path.parent.glob(".tmp-*"))
    path.write_text("{broken")
    assert cache.get(key) is None
    assert cache_key("m", [{"role": "user", "content": "hi"}]) != cache_key(
        "m2", [{"role": "user", "content": "hi"}]
    )


# -- config ---------------------------------------------------------------------------------------------


def load_group(name: str):
    """A conf/judge file with its defaults list applied, as Hydra would compose it."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    parents = [d for d in cfg.pop("defaults", []) if d != "_self_"]
    return OmegaConf.merge(*(load_group(p) for p in parents), cfg) if parents else cfg


def test_build_judge_from_each_config(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(JudgeError, match="OPENAI_API_KEY"):  # a remote judge with no key: fails at build
        build_judge(OmegaConf.merge(load_group("openai"), {"cache_dir": None}))
    monkeypatch.setenv("OPENAI_API_KEY", "fake-key-for-construction")
    assert build_judge(load_group("none")) is None
    assert isinstance(build_judge(load_group("rule")), RuleJudge)
    for name in ("openai", "vllm"):
        cfg = OmegaConf.merge(load_group(name), {"cache_dir": str(tmp_path)})
        judge = build_judge(cfg)
        assert isinstance(judge, HttpJudge) and judge.name == name
        judge.close()
    vllm = build_judge(OmegaConf.merge(load_group("vllm"), {"cache_dir": None}))
    assert vllm.url == "http://127.0.0.1:8000/v1/chat/completions" and vllm.api_key_env == "VLLM_API_KEY"
    assert not vllm.api_key_required and vllm.cache is None
    with pytest.raises(ValueError, match="unknown"):
        build_judge({"name": "rule", "tau": 1.0, "tua": 2.0})


def test_cache_dir_follows_paths_node():
    root = OmegaConf.create({"paths": {"cache_dir": "/data/cache"}, "judge": load_group("openai")})
    assert root.judge.cache_dir == "/data/cache/judge"
    assert load_group("openai").cache_dir == ".cache/judge"


def test_hydra_composes_the_judge_group(tmp_path):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF.parent), version_base=None):
        cfg = compose(overrides=["+judge=vllm", f"judge.cache_dir={tmp_path}"])
    assert cfg.judge.name == "vllm" and cfg.judge.max_concurrency == 16 and cfg.judge.retries == 4
    judge = build_judge(cfg.judge)
    assert isinstance(judge, HttpJudge)
    judge.close()


# -- the task table's tasks --------------------------------------------------------------------------------


def test_rule_judge_reads_every_task_name_of_the_task_table():
    from visd_exp.judge.reference import KIND_OF_TASK, parse_reference, task_kind
    from visd_exp.rewards.tasks import TASK_NAMES, canonical_task

    assert set(KIND_OF_TASK) == {canonical_task(name) for name in TASK_NAMES}  # no task left out
    judge = RuleJudge()
    for name in TASK_NAMES:
        # a reference that would be inferred as free text: the kind must come from the name itself
        assert task_kind(name, parse_reference("a cat")) == KIND_OF_TASK[canonical_task(name)], name
        d = judge.diagnose(
            JudgeItem(name, "q", "C\n[11.5, 19.0]", None, "<think>x</think><answer>C</answer>")
        )
        assert 2 <= len(d.sentences) <= 4
    assert task_kind("General video QA MCQ", parse_reference("a cat")) == "multiple_choice"
    assert task_kind("general video qa free-form", parse_reference("B")) == "free_form"  # any case
    assert task_kind("tg", parse_reference("x")) == "temporal_grounding"  # the older short names


MCQ_REF = "C\n[11.5, 19.0]"
MCQ_THINK = "<think>He picks up the cup at <t>12.0</t>s and puts it down at <t>18.0</t>s.</think>"


@pytest.mark.parametrize(
    ("answer", "verdict", "phrase"),
    [
        ("From <t>11.5</t>s to <t>19.0</t>s.\nCorrect Option: C", "correct", "picks the reference option C"),
        ("From <t>11.0</t>s to <t>19.0</t>s.\nCorrect Option: B", "partly", "picks option B but"),
        ("From <t>1.0</t>s to <t>4.0</t>s.\nCorrect Option: C", "partly", "temporal IoU 0.00"),
        ("From <t>1.0</t>s to <t>4.0</t>s.\nCorrect Option: A", "wrong", "picks option A but"),
        ("From <t>11.5</t>s to <t>19.0</t>s.", "partly", "names no option letter"),
    ],
)
def test_rule_judge_temporal_mcq_scores_letter_and_span(answer, verdict, phrase):
    item = JudgeItem(
        "temporal QA (MCQ)", "When?\nA. a\nB. b\nC. c", MCQ_REF, None, f"{MCQ_THINK}<answer>{answer}</answer>"
    )
    d = RuleJudge().diagnose(item)
    assert d.verdict == verdict and phrase in d.feedback, d.feedback
    assert ("reference [11.5, 19.0] s" in d.feedback) or "gives no parseable" in d.feedback


@pytest.mark.parametrize("ref", ["[6.0, 14.0]", "From <t>6.0</t>s to <t>14.0</t>s"])
def test_rule_judge_temporal_qa_reference_forms(ref):
    think = "<think>The man starts running at <t>7.0</t>s and stops at <t>13.0</t>s, clearly.</think>"
    right = JudgeItem(
        "temporal QA", "When?", ref, None, f"{think}<answer>From <t>6.0</t>s to <t>14.0</t>s</answer>"
    )
    literal = JudgeItem("temporal QA", "When?", ref, None, f"{think}<answer>[6.5, 14.0]</answer>")
    wrong = JudgeItem(
        "temporal QA", "When?", ref, None, f"{think}<answer>From <t>20.0</t>s to <t>25.0</t>s</answer>"
    )
    judge = RuleJudge()
    assert judge.diagnose(right).verdict == "correct"
    assert judge.diagnose(literal).verdict == "correct"  # a literal span answer is read too
    d = judge.diagnose(wrong)
    assert d.verdict == "wrong" and "reference [6.0, 14.0] s" in d.feedback


def test_rule_judge_visual_qa_box_and_spatio_temporal_qa():
    judge = RuleJudge()
    ref = "The <obj>dog</obj><box>[10, 10, 50, 50]</box> is on the sofa."
    think = "<think>The <obj>dog</obj><box>[10,10,50,50]</box> lies on the sofa on the left side.</think>"
    right = JudgeItem(
        "visual QA",
        "Where is the dog?",
        ref,
        None,
        f"{think}<answer><obj>dog</obj><box>[12,10,50,52]</box></answer>",
    )
    wrong = JudgeItem(
        "visual QA",
        "Where is the dog?",
        ref,
        None,
        f"{think}<answer><obj>dog</obj><box>[80,80,99,99]</box></answer>",
    )
    assert judge.diagnose(right).verdict == "correct"
    d = judge.diagnose(wrong)
    assert d.verdict == "wrong" and "IoU 0.00 with the reference box" in d.feedback
    # the reference box is in image pixels; the student's is in the resized frame's
    sample = {"image_size": [200, 200], "frame_size": [100, 100]}
    scaled = JudgeItem(
        "visual QA", "q", "<box>[20, 20, 100, 100]</box>", None, right.completion, sample=sample
    )
    assert judge.diagnose(scaled).verdict == "correct"
    stqa = JudgeItem(
        "temporal-spatial free-form QA",
        "What does the man hold?",
        "a red umbrella",
        EVIDENCE,
        "<think>At <t>3.0</t>s the <obj>man</obj><box>[10,10,50,50]</box>at<t>3.0</t>s holds it up.</think>"
        "<answer>a blue suitcase</answer>",
    )
    d = judge.diagnose(stqa)
    assert d.verdict == "wrong" and "token F1" in d.feedback
