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
    # the rendered message parses back to exactly the fields that went in
    assert parse_user_message(user) == prompt_fields(tg(nasty))


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


def test_build_judge_from_each_config(tmp_path):
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
