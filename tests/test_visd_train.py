"""VISD inside the training loop: lambda = 0 is exactly GRPO, the teacher and judge stop when lambda is
0 for good, checkpoints carry the teacher and the schedule, feedback reaches the privileged block."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from test_train_e2e import FAST, compose_train, fast, read_metrics, run_module, shared_paths
from visd_exp.data.prompts import render_prompt
from visd_exp.judge import evidence_from_sample
from visd_exp.teacher import privileged_block
from visd_exp.train import train


def run(cache_dir, out_dir, *overrides):
    cfg = compose_train(
        FAST
        + shared_paths(cache_dir, out_dir)
        + [f"paths.output_dir={out_dir}", "logger=csv", "trainer.max_steps=3", *overrides]
    )
    train(cfg)
    return out_dir


def test_lambda_zero_is_exactly_grpo(cache_dir, tmp_path, monkeypatch):
    import visd_exp.algorithms.visd as visd

    calls = []
    monkeypatch.setattr(visd, "teacher_states", lambda *a, **k: calls.append(1))
    grpo = run(cache_dir, tmp_path / "grpo", "+experiment=grpo")
    visd0 = run(
        cache_dir, tmp_path / "visd0", "+experiment=ema_topk", "schedule=constant", "schedule.value=0.0"
    )
    assert calls == []  # no teacher replay at all
    a, b = load_file(grpo / "hf_model/model.safetensors"), load_file(visd0 / "hf_model/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows_a, rows_b = read_metrics(grpo), read_metrics(visd0)
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert all(float(r["timing/teacher"]) == 0.0 and r["credit/weight_mean"] == "nan" for r in rows_b)


def test_teacher_and_judge_stop_when_lambda_reaches_zero(cache_dir, tmp_path):
    out = run(cache_dir, tmp_path, "+experiment=ema_topk", "schedule.steps=2", "trainer.max_steps=4")
    rows = read_metrics(out)
    assert [float(r["lambda"]) for r in rows] == pytest.approx([0.5, 0.25, 0.0, 0.0])
    assert all(r["timing/teacher"] != "" and r["credit/weight_mean"] != "" for r in rows[:2])
    # afterwards the step is a GRPO step: no teacher time, credit metrics not applicable (nan, not stale)
    assert all(float(r["timing/teacher"]) == 0.0 and r["credit/weight_mean"] == "nan" for r in rows[2:])
    for r in rows[:2]:  # the privileged block moved the teacher away from the student: Delta != 0
        assert float(r["credit/delta_abs_mean"]) > 1e-3


def test_checkpoint_holds_teacher_and_schedule(cache_dir, tmp_path):
    out = run(cache_dir, tmp_path, "+experiment=sync10_topk", "teacher.every_n_steps=2")
    ckpt = torch.load(out / "checkpoints/last.ckpt", weights_only=False)
    teacher_keys = [k for k in ckpt["state_dict"] if k.startswith("teacher.copy.")]
    assert teacher_keys
    step = ckpt["global_step"]
    assert step == 2  # every_n_train_steps=2 in FAST
    states = [v for k, v in ckpt["callbacks"].items() if k.startswith("LambdaSchedule")]
    assert states and states[0]["lam"] == pytest.approx(
        0.5 * (1 - (step - 1) / 600)
    )  # set before batch step-1
    # sync every 2 steps: at step 2 the copy equals the student; after step 3 the student has moved on
    student_w = ckpt["state_dict"]["model.model.language_model.embed_tokens.weight"]
    teacher_w = ckpt["state_dict"]["teacher.copy.model.language_model.embed_tokens.weight"]
    assert torch.equal(teacher_w, student_w)
    final = load_file(out / "hf_model/model.safetensors")["model.embed_tokens.weight"]  # HF's saved name
    assert not torch.equal(teacher_w, final)


@pytest.mark.parametrize("judge", ["rule", "none"])
def test_feedback_reaches_the_privileged_block(cache_dir, tmp_path, monkeypatch, judge):
    import visd_exp.algorithms.visd as module

    seen = []
    original = module.privileged_block

    def spy(answer, evidence, feedback):
        seen.append(feedback)
        return original(answer, evidence, feedback)

    monkeypatch.setattr(module, "privileged_block", spy)
    # no credit dump: its answer-only replay builds blocks without feedback on purpose (Eq. 29)
    run(
        cache_dir,
        tmp_path,
        "+experiment=ema_topk",
        f"judge={judge}",
        "trainer.max_steps=1",
        "dumps.credit_every_n_steps=0",
    )
    assert seen
    if judge == "rule":
        assert all(isinstance(f, str) and f for f in seen)
    else:
        assert all(f is None for f in seen)


def test_judge_calls_overlap_the_students_forward(cache_dir, tmp_path, monkeypatch):
    """A remote judge is asked in a background thread: its call can still be under way when the update's first
    student forward starts. Here it waits for that forward (a judge asked before the update and waited for,
    as before, would wait in vain and report it), then answers as the rule judge does."""
    import threading

    import visd_exp.algorithms.visd as visd
    from visd_exp.judge.rule import RuleJudge

    forward_started, overlapped = threading.Event(), []
    real_ask, real_judge = visd.VISDCredit.ask_judge, RuleJudge.judge_batch

    def ask(self, samples, completions):
        forward_started.clear()  # set again by the next student forward
        return real_ask(self, samples, completions)

    def judge_batch(self, items):
        overlapped.append(forward_started.wait(timeout=30))
        return real_judge(self, items)

    real_replay, hooked = visd.VISDCredit.replay, []

    def replay(self, student, *args):
        if not hooked:
            # the update's forward runs the language model without its output layer (completion_states)
            hooked.append(student.model.register_forward_pre_hook(lambda *a: forward_started.set()))
        return real_replay(self, student, *args)

    monkeypatch.setattr(visd.VISDCredit, "ask_judge", ask)
    monkeypatch.setattr(visd.VISDCredit, "replay", replay)
    monkeypatch.setattr(RuleJudge, "judge_batch", judge_batch)
    monkeypatch.setattr(RuleJudge, "overlap", True)  # the rule judge stands in for a remote one
    out = run(
        cache_dir, tmp_path, "+experiment=ema_topk", "trainer.max_steps=2", "dumps.credit_every_n_steps=1"
    )
    assert overlapped == [True, True]
    rows = read_metrics(out)
    assert all(float(r["judge/calls"]) > 0 for r in rows)  # the rule judge answered every step
    assert list((out / "credit_dumps").glob("step_*.json"))  # the dump reads the same feedback


def test_six_experiment_multirun_writes_the_summary(cache_dir, tmp_path):
    """Acceptance: the six experiments in one multirun directory, with a Table-5-style summary."""
    import csv

    experiments = "+experiment=ema_topk,no_feedback,current_topk,sync10_topk,ema_sampled,grpo"
    run_module(
        "train",
        "-m",
        experiments,
        "seed=0",
        "trainer.max_steps=2",
        "logger=csv",
        *fast("trainer.max_steps"),
        *shared_paths(cache_dir, tmp_path),
        timeout=900,
    )
    (sweep,) = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    with open(sweep / "summary.csv") as handle:
        table = list(csv.DictReader(handle))
    assert sorted(r["experiment"] for r in table) == sorted(
        ["ema_topk", "no_feedback", "current_topk", "sync10_topk", "ema_sampled", "grpo"]
    )
    assert all(r["reward"] != "nan" and r["grad_norm"] != "nan" for r in table)
    assert "| Setting | Reward | Acc |" in (sweep / "summary.md").read_text()


def test_bf16_autocast_step(cache_dir, tmp_path):
    """Optional bf16 autocast (trainer.precision=bf16-mixed): the VISD step runs and stays finite."""
    out = run(
        cache_dir, tmp_path, "+experiment=ema_topk", "trainer.precision=bf16-mixed", "trainer.max_steps=2"
    )
    rows = [r for r in read_metrics(out) if r.get("loss")]
    assert len(rows) == 2
    for r in rows:
        assert math.isfinite(float(r["loss"])) and math.isfinite(float(r["grad_norm"]))


def replay_logits(model, processor, sample, frames, block, completion, temperature):
    """[n, V] float64 logits / temperature scoring `completion` after the prompt with privileged block
    `block` (None: the student's prompt), one unpadded row encoded by the processor itself."""
    text = render_prompt(processor, sample, sample["frame_times"], sample["video_duration"], block)
    enc = processor(
        text=[text],
        images=[list(frames)],
        return_tensors="pt",
        do_resize=False,
        return_mm_token_type_ids=True,
    )
    prompt_len = enc["input_ids"].shape[1]
    ids = torch.cat([enc["input_ids"], completion[None]], dim=1)
    mm = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(completion)[None]], dim=1)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            mm_token_type_ids=mm,
            pixel_values=enc["pixel_values"],
            image_grid_thw=enc["image_grid_thw"],
            use_cache=False,
        )
    logits = out.logits[0, prompt_len - 1 : prompt_len - 1 + len(completion)]  # position t-1 scores y_t
    return logits.double() / temperature, enc["input_ids"][0]


def test_credit_dump_matches_an_independent_replay(cache_dir, tmp_path, monkeypatch):
    """Token-credit dumps (Eq. 29-31) against our own replay: per dumped rollout, three forwards of our
    own (student; answer-only teacher, r = (a*, e); feedback teacher, r = (a*, e, f)), each prompt rendered
    and encoded by the processor here, one unpadded row at a time; the common support is the feedback
    teacher's top-K plus y_t (Eq. 3 / 20), renormalised (Eq. 21). m_t (Eq. 6) and A^_t (Eq. 7) follow
    from our Delta^fb. The expected values use only the step's inputs (data, rollout tokens, judge feedback,
    A) and the two networks as they were at dump time, never the dump's numbers."""
    import copy
    import inspect
    import json

    import visd_exp.module as module

    seen = {}
    original = module.VISDModule.dump_credit

    def spy(self, *args, **kwargs):
        """Keep the dump's inputs (the step's data) and the two networks as they are at dump time."""
        if not seen:
            arguments = inspect.signature(original).bind(self, *args, **kwargs).arguments
            seen.update({k: arguments[k] for k in ("batch", "rollouts", "samples", "feedback", "advantages")})
            seen["student"] = copy.deepcopy(self.model).eval()
            seen["teacher"] = copy.deepcopy(self.teacher.model(self.model)).eval()
            seen.update(processor=self.processor, cfg=self.cfg, lam=self.lam)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(module.VISDModule, "dump_credit", spy)
    out = run(
        cache_dir,
        tmp_path,
        "+experiment=ema_topk",
        "trainer.max_steps=1",
        "dumps.credit_every_n_steps=1",
        "dumps.num_rollouts=3",
    )
    dump = json.loads((out / "credit_dumps" / "step_000000.json").read_text())
    cfg, processor, rollouts = seen["cfg"], seen["processor"], seen["rollouts"]
    k, eps_w, lam, temperature = cfg.credit.k, cfg.credit.eps_w, seen["lam"], cfg.algorithm.temperature
    G = cfg.algorithm.num_generations
    assert dump["lambda"] == lam == 0.5 and dump["credit"] == "topk" and len(dump["rollouts"]) == 3

    judge_effect = answer_effect = 0.0
    for i, r in enumerate(dump["rollouts"]):
        sample, frames, f = seen["samples"][i], seen["batch"]["frames"][i // G], seen["feedback"][i]
        n = int(rollouts.completion_mask[i].sum())
        y = rollouts.completion_ids[i, :n]
        assert r["token_ids"] == y.tolist() and len(r["tokens"]) == n > 0
        assert r["answer"] == sample["answer"] and r["feedback"] == f and isinstance(f, str) and f
        evidence = evidence_from_sample(sample)
        z_s, prompt = replay_logits(seen["student"], processor, sample, frames, None, y, temperature)
        assert prompt.tolist() == rollouts.prompt_ids[i][rollouts.prompt_mask[i].bool()].tolist()
        block_ans = privileged_block(sample["answer"], evidence, None)  # r = (a*, e): Eq. 29
        block_fb = privileged_block(sample["answer"], evidence, f)  # r = (a*, e, f): Eq. 30
        assert sample["answer"] in block_ans and f not in block_ans
        z_ans, _ = replay_logits(seen["teacher"], processor, sample, frames, block_ans, y, temperature)
        z_fb, _ = replay_logits(seen["teacher"], processor, sample, frames, block_fb, y, temperature)

        d_ans, d_fb = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        for t, token in enumerate(y.tolist()):
            support = sorted(set(z_fb[t].topk(k).indices.tolist()) | {token})  # U_t, Eq. 3 / 20
            # log p~(y_t) = z(y_t) - logsumexp_{u in U_t} z(u) for each network (Eq. 21)
            log_q_ans, log_q_fb, log_pi = (
                z[t, token] - torch.logsumexp(z[t, support], 0) for z in (z_ans, z_fb, z_s)
            )
            d_ans[t] = log_q_ans - log_pi  # Eq. 29
            d_fb[t] = log_q_fb - log_pi  # Eq. 30
        keys = ("delta_answer_only", "delta_feedback", "delta_judge", "weight", "token_advantage")
        got = {key: torch.tensor(r[key], dtype=torch.float64) for key in keys}
        torch.testing.assert_close(got["delta_answer_only"], d_ans, atol=1e-4, rtol=0)
        torch.testing.assert_close(got["delta_feedback"], d_fb, atol=1e-4, rtol=0)
        torch.testing.assert_close(got["delta_judge"], d_fb - d_ans, atol=1e-4, rtol=0)  # Eq. 31

        a = float(seen["advantages"][i])
        assert r["advantage"] == pytest.approx(a)
        sign = (a > 0) - (a < 0)
        m = torch.exp(sign * d_fb).clamp(1 - eps_w, 1 + eps_w)  # Eq. 5-6
        torch.testing.assert_close(got["weight"], m, atol=1e-4, rtol=0)
        torch.testing.assert_close(
            got["token_advantage"], a * ((1 - lam) + lam * m), atol=1e-4, rtol=0
        )  # Eq. 7
        judge_effect = max(judge_effect, (d_fb - d_ans).abs().max().item())
        answer_effect = max(answer_effect, d_ans.abs().max().item())
    assert judge_effect > 1e-3 and answer_effect > 1e-3  # both privileged contexts change the teacher
