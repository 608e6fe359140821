"""Find, Fix, Reason (algorithms/ffr.py, ffr_teacher.py, rollout/merge.py): the leak check, RIR, the rule
teacher, merging rows sampled under different prompts, the OpenAI-compatible teacher over loopback HTTP,
the unit's step on the tiny model, and a short training run."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from omegaconf import OmegaConf

from visd_exp.algorithms.ffr import FFR, patch_block, patched_prompts, robust_improvement_reward
from visd_exp.algorithms.ffr_teacher import Diagnosis, RuleTeacher, build_ffr_teacher, leak_reason

FRAME_TIMES = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5]


def record(task: str, **extra) -> dict:
    """A synthetic-style record as the data module hands it over (frame_times, video_duration, frame_size)."""
    base = {
        "id": f"v0_{task}",
        "task": task,
        "question": "When is the red square visible in the video?",
        "options": None,
        "answer": "From <t>2.0</t>s to <t>5.0</t>s",
        "segment": [2.0, 5.0],
        "key_frames": [{"idx": 8, "time": 2.0}, {"idx": 14, "time": 3.5}, {"idx": 20, "time": 5.0}],
        "key_items": {k: {"red square": [[4, 6, 28, 30]]} for k in ("8", "14", "20")},
        "image_size": [56, 56],
        "frame_size": [56, 56],
        "duration": 8.0,
        "frame_times": FRAME_TIMES,
        "video_duration": 8.0,
    }
    return {**base, **extra}


MC = record(
    "multiple_choice",
    question="In which direction does the red square move?\nA. up\nB. down\nC. left\nD. right",
    options=["A. up", "B. down", "C. left", "D. right"],
    answer="C",
)


# ------------------------------------------------------------------------------------------ leak check


@pytest.mark.parametrize(
    "sample, patch, reason",
    [
        (MC, "C", "option letter"),
        (MC, "Look again: (C).", "option letter"),
        (MC, "Consider option C carefully.", "option letter"),
        (MC, "The answer is C.", "option letter"),
        (MC, "Track the square: it moves left.", "option text"),
        ({**MC, "answer": "(C)"}, "It is C.", "option letter"),  # the reference written "(C)"
        (record("temporal_grounding"), "The square shows from 2.0 s to 5.0 s.", "interval"),
        (record("temporal_grounding"), "Check frames between 2 and 5.1 seconds.", "interval"),
        (MC, "Evidence lies within [2.1, 4.9].", "interval"),  # any record with a GT segment
        (
            record("free_form", answer="the small red square"),
            "Look for the small red square.",
            "answer string",
        ),
        (record("free_form", answer="red"), "Its colour is red.", "answer string"),
        (record("numerical", answer="3"), "There are exactly 3 squares.", "answer string"),
        (
            record("spatio_temporal_grounding", answer="<obj>x</obj>"),
            "It sits at [5, 6, 28, 31].",
            "answer box",
        ),
    ],
)
def test_leak_check_rejects_patches_that_carry_the_answer(sample, patch, reason):
    assert leak_reason(patch, sample) == reason


@pytest.mark.parametrize(
    "sample, patch",
    [
        (MC, "Examine the frames between 1 s and 7 s: track the direction of motion yourself."),
        (MC, "Look at the upper part of the frame across frames 2-7."),
        (MC, "A region near the top of the frame deserves a second look; answer a question only after that."),
        (record("numerical", answer="3"), "Recount within frames 3-6."),
        (record("temporal_grounding"), "The event lies somewhere between 0 s and 7 s (frames 1-7)."),
        (
            record("free_form", answer="red"),
            "Observe the colour of the object that moves, in the centred region.",
        ),
        (record("spatio_temporal_grounding", answer="<obj>x</obj>"), "Re-locate it around [0, 0, 56, 56]."),
    ],
)
def test_leak_check_passes_honest_patches(sample, patch):
    assert leak_reason(patch, sample) is None


# ------------------------------------------------------------------------------------------ RIR (Eq. 8)


def test_strict_repair_and_patch_tax_by_hand():
    kappa = 0.3
    # total = ans + fmt + thk_tmp (unit weights): outcome = total - fmt
    good = {"ans": 1.0, "fmt": 1.0, "thk_tmp": 0.5, "total": 2.5}
    bad = {"ans": 0.0, "fmt": 0.5, "thk_tmp": 0.8, "total": 1.3}
    assert robust_improvement_reward(good, True, True, kappa, 1.0) == pytest.approx(1.5 - 0.3 + 1.0)
    assert robust_improvement_reward(bad, True, False, kappa, 1.0) == pytest.approx(0.5)  # format only
    assert robust_improvement_reward(bad, False, False, kappa, 1.0) == pytest.approx(1.3)  # the total
    assert robust_improvement_reward(good, False, True, kappa, 1.0) == pytest.approx(2.5)
    # a format weight of 2: the total holds 2 x fmt, the outcome is the rest
    weighted = {"ans": 1.0, "fmt": 0.5, "total": 1.0 + 2 * 0.5}
    assert robust_improvement_reward(weighted, True, True, kappa, 2.0) == pytest.approx(1.0 - 0.3 + 1.0)
    assert robust_improvement_reward(weighted, True, False, kappa, 2.0) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ rule teacher


def test_rule_teacher_error_type_from_components():
    teacher = RuleTeacher(threshold=0.5)
    assert teacher.error_type({"fmt": 1.0, "ans_tmp": 0.1, "thk_tmp": 0.9, "ans": None}) == "temporal"
    assert teacher.error_type({"fmt": 1.0, "ans_spa": 0.2, "thk_spa": 0.6, "thk_tmp": 0.9}) == "spatial"
    assert teacher.error_type({"fmt": 1.0, "ans_spa": 0.3, "thk_tmp": 0.1}) == "temporal"  # the lower one
    assert teacher.error_type({"fmt": 1.0, "ans": 0.0}) == "misconception"  # no grounding terms
    assert teacher.error_type({"fmt": 1.0, "ans": 0.0, "thk_tmp": 0.9, "thk_spa": 0.7}) == "misconception"


@pytest.mark.parametrize(
    "segment",
    [(2.0, 5.0), (0.0, 3.0), (5.0, 8.0), (2.5, 3.5), (0.0, 7.5), (1.0, 7.0), (3.0, 3.0), (0.0, 8.0)],
)
def test_rule_teacher_windows_never_give_the_interval(segment):
    from visd_exp.metrics import temporal_iou

    teacher = RuleTeacher(threshold=0.5)
    sample = record(
        "temporal_grounding",
        segment=list(segment),
        answer=f"From <t>{segment[0]}</t>s to <t>{segment[1]}</t>s",
    )
    window = teacher.window(sample)
    if (segment[1] - segment[0]) / 8.0 >= 0.5:
        assert window is None  # even the whole video, answered verbatim, would count as correct
    else:
        lo, hi = window
        assert lo <= segment[0] and hi >= segment[1] and (lo, hi) != segment
        assert lo == int(lo) and hi == int(hi)  # whole seconds
        assert temporal_iou((lo, hi), segment) < 0.5  # answered verbatim, the window is still wrong
    for kind, score in [
        ("temporal", {"fmt": 1.0, "ans_tmp": 0.0, "thk_tmp": 0.0}),
        ("misconception", {"fmt": 0.0, "ans_tmp": 0.0}),
    ]:
        diagnosis = teacher.diagnose(sample, {**score, "ans_tmp": 0.0 if kind == "temporal" else 0.9}, "")
        assert diagnosis is not None and diagnosis.error_type == kind
        assert leak_reason(diagnosis.patch, sample) is None


@pytest.mark.parametrize("task", ["multiple_choice", "free_form", "spatio_temporal_grounding"])
def test_rule_teacher_spatial_patch_names_a_region_not_the_object(task):
    sample = {**MC, "task": task} if task == "multiple_choice" else record(task, answer="red")
    diagnosis = RuleTeacher().diagnose(
        sample, {"fmt": 1.0, "ans_spa": 0.0, "thk_spa": 0.0, "thk_tmp": 1.0}, ""
    )
    assert diagnosis.error_type == "spatial"
    assert "upper left" in diagnosis.patch or task == "multiple_choice"  # "left" is MC's right option text
    assert "red" not in diagnosis.patch and "square" not in diagnosis.patch
    assert leak_reason(diagnosis.patch, sample) is None


# ------------------------------------------------------------------------------------------ OpenAI-compatible teacher


class _ChatServer:
    """A chat-completions endpoint on loopback that replies with `self.reply` and keeps the requests."""

    def __init__(self):
        self.reply = {"error_type": "temporal", "patch": "x"}
        self.requests: list[tuple[dict, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((dict(self.headers), body))
                payload = json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": json.dumps(outer.reply)}}]}
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_openai_teacher_over_loopback_http(monkeypatch):
    server = _ChatServer()
    monkeypatch.setenv("FFR_TEST_TEACHER_KEY", "sk-test-123")
    cfg = OmegaConf.create(
        {"kind": "openai", "base_url": server.base_url, "model": "teacher-x",
         "api_key_env": "FFR_TEST_TEACHER_KEY", "timeout_s": 10, "max_tokens": 128}
    )  # fmt: skip
    teacher = build_ffr_teacher(cfg, threshold=0.5)
    sample = record("temporal_grounding")
    try:
        honest = "Re-examine the frames between 0 s and 7 s and find the span yourself."
        server.reply = {"error_type": "temporal", "patch": honest}
        [diagnosis] = teacher.diagnose_batch([sample], [{"ans_tmp": 0.0}], ["<answer>From 6 to 7</answer>"])
        assert diagnosis == Diagnosis("temporal", honest)
        assert leak_reason(diagnosis.patch, sample) is None
        headers, body = server.requests[-1]
        assert headers["Authorization"] == "Bearer sk-test-123" and body["model"] == "teacher-x"
        system, user = (m["content"] for m in body["messages"])
        assert "Never leak the answer" in system and "error_type" in system
        assert sample["question"] in user and sample["answer"] in user and "From 6 to 7" in user
        assert '"segment": [2.0, 5.0]' in user  # the evidence

        server.reply = {"error_type": "spatial", "patch": "The square is visible from 2.0 s to 5.0 s."}
        [leaky] = teacher.diagnose_batch([sample], [{"ans_tmp": 0.0}], ["<answer>From 1 to 2</answer>"])
        assert leaky.error_type == "spatial" and leak_reason(leaky.patch, sample) == "interval"

        server.reply = {"error_type": "sideways", "patch": "look again"}  # not a known error type
        assert teacher.diagnose_batch([sample], [{}], ["<answer>x</answer>"]) == [None]
    finally:
        teacher.close()
        server.close()


# ------------------------------------------------------------------------------------------ tiny model: merge, step


@pytest.fixture(scope="module")
def video_batch(tiny, tmp_path_factory):
    """A collated batch of two prompts (temporal grounding, multiple choice) over a real 8 s video."""
    from conftest import write_square_video
    from visd_exp.data.datamodule import collate_prompts, encode_prompt, prompt_text
    from visd_exp.data.frames import decode_frames, plan_frames, probe_video

    _, processor = tiny
    video = write_square_video(tmp_path_factory.mktemp("ffr") / "v.mp4")
    items = []
    for rec, fps in ((record("temporal_grounding"), 1.0), (MC, 0.5)):
        plan_cfg = OmegaConf.create(
            {"fps": fps, "min_frames": 1, "max_frames": 16, "min_pixels": 784, "max_pixels": 100352,
             "total_pixels": 401408}
        )  # fmt: skip
        plan = plan_frames(probe_video(video), plan_cfg)
        frames = decode_frames(video, plan)
        sample = {**rec, "frame_times": list(plan.times), "video_duration": plan.duration,
                  "frame_size": list(plan.frame_size)}  # fmt: skip
        text = prompt_text(processor, sample, plan)
        items.append(
            {**encode_prompt(processor, text, frames), "sample": sample, "frames": frames, "text": text}
        )
    return collate_prompts(items, processor.tokenizer.pad_token_id)


def _algo(G: int, length: int):
    return OmegaConf.create(
        {"num_generations": G, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_completion_length": length}
    )


def test_merged_rows_keep_the_logprobs_of_their_own_prompts(tiny, video_batch):
    from visd_exp.models import vision_token_ids
    from visd_exp.rollout.generation import generate_rollouts, policy_logprobs
    from visd_exp.rollout.merge import merge_rows

    model, processor = tiny
    suppress = vision_token_ids(processor.tokenizer)
    torch.manual_seed(0)
    first = generate_rollouts(model, processor, video_batch, _algo(2, 6), suppress)
    diagnoses = [Diagnosis("temporal", "Look between 0 s and 7 s " * 4), Diagnosis("spatial", "Upper half.")]
    patched = patched_prompts(processor, video_batch, [1, 2], diagnoses, G=2)
    # the patched prompt is the original with the block after the question, nothing else changed
    for k, row in ((0, 1), (1, 2)):
        block = "\n" + patch_block(diagnoses[k]).strip()
        assert block in patched["texts"][k]
        assert patched["texts"][k].replace(block, "") == video_batch["texts"][row // 2]
    second = generate_rollouts(model, processor, patched, _algo(1, 12), suppress)
    assert second.prompt_ids.shape[1] > first.prompt_ids.shape[1]
    assert second.completion_ids.shape[1] != first.completion_ids.shape[1]

    picks = [(0, 0), (1, 0), (1, 1), (0, 3)]
    merged = merge_rows([first, second], picks, processor.tokenizer.pad_token_id)
    assert merged.num_rollouts == 4 and merged.images_per_row == [
        first.images_per_row[0],
        *second.images_per_row,
        first.images_per_row[3],
    ]
    with torch.no_grad():
        out, _ = policy_logprobs(model, merged, 1.0)
        alone = [policy_logprobs(model, b, 1.0)[0] for b in (first, second)]
    for k, (b, r) in enumerate(picks):
        source = (first, second)[b]
        n = int(source.completion_mask[r].sum())
        assert torch.equal(merged.completion_mask[k, :n], source.completion_mask[r, :n])
        assert merged.completion_mask[k, n:].sum() == 0
        assert torch.equal(merged.old_logprobs[k, :n], source.old_logprobs[r, :n])
        assert merged.texts[k] == source.texts[r] and bool(merged.truncated[k]) == bool(source.truncated[r])
        # the row's own prompt, left-padded
        own = source.prompt_ids[r][source.prompt_mask[r].bool()]
        assert torch.equal(merged.prompt_ids[k][merged.prompt_mask[k].bool()], own)
        diff = (out[k, :n] - alone[b][r, :n]).abs().max().item()
        assert diff < 1e-5, (k, diff)


class _StubTeacher:
    def __init__(self, by_row):
        self.by_row, self.calls = by_row, []

    def diagnose_batch(self, samples, scores, completions):
        self.calls.append(len(samples))
        return [self.by_row.pop(0) for _ in samples]

    def close(self):
        pass


def test_step_chooses_patched_rows_with_their_prompts_and_rir(tiny, video_batch, monkeypatch):
    """Eq. 4-10 wired: six rollouts (2 prompts x G = 3) with hand-made scores; two patched, one leak."""
    from hydra import compose, initialize_config_dir

    from conftest import PROJECT_ROOT
    from visd_exp.algorithms import Policy
    from visd_exp.models import vision_token_ids
    from visd_exp.rollout import generation
    from visd_exp.utils.steps import Stopwatch

    model, processor = tiny
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "algorithm=ffr", "algorithm.num_generations=3", "algorithm.max_completion_length=6"])  # fmt: skip
    ffr = FFR(cfg)
    honest = Diagnosis("temporal", "Re-examine the frames between 0 s and 7 s.")
    # failed rows 1..4: 1 honest patch, 2 a leaking one, 3 no diagnosis, 4 honest
    ffr.teacher = _StubTeacher(
        [
            honest,
            Diagnosis("spatial", "It is visible from 2.0 s to 5.0 s."),
            None,
            Diagnosis("misconception", "Re-read the question."),
        ]
    )
    calls = []
    real = generation.generate_rollouts

    def recording(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(generation, "generate_rollouts", recording)

    def s(acc, fmt, thk):
        return {"ans": acc, "fmt": fmt, "ans_tmp": None, "ans_spa": None, "thk_tmp": thk, "thk_spa": None,
                "total": acc + fmt + thk}  # fmt: skip

    first = [
        s(1.0, 1.0, 0.5),
        s(0.0, 1.0, 0.2),
        s(0.0, 0.5, 0.1),
        s(0.0, 0.0, 0.0),
        s(0.2, 1.0, 0.3),
        s(0.5, 1.0, 1.0),
    ]
    again = [s(1.0, 0.5, 0.9), s(0.0, 1.0, 1.0)]  # row 1 repaired, row 4 not
    scored = iter([first, again])
    monkeypatch.setattr(ffr, "score", lambda texts, samples, progress: next(scored)[: len(texts)])

    torch.manual_seed(0)
    watch = Stopwatch()
    out = ffr.step(Policy(model, processor, vision_token_ids(processor.tokenizer)), video_batch, 0.1, watch)
    assert ffr.teacher.calls == [4]
    first_pass, repaired = calls
    assert repaired.num_rollouts == 2 and repaired.images_per_row == [
        first_pass.images_per_row[1],
        first_pass.images_per_row[4],
    ]
    expected = [2.5, 1.9 - 0.3 + 0.5, 0.6, 0.0, 1.0, 2.5]
    assert out.rewards.tolist() == pytest.approx(expected)
    assert out.scores[1] is again[0] and out.scores[4] is again[1] and out.scores[2] is first[2]
    decode = processor.tokenizer.decode
    for k in range(6):
        prompt = decode(out.rollouts.prompt_ids[k][out.rollouts.prompt_mask[k].bool()])
        assert ("Hint from a reviewer" in prompt) == (k in (1, 4)), k
        source, r = (repaired, [1, 4].index(k)) if k in (1, 4) else (first_pass, k)
        n = int(source.completion_mask[r].sum())
        assert torch.equal(out.rollouts.old_logprobs[k, :n], source.old_logprobs[r, :n])
        assert out.rollouts.texts[k] == source.texts[r]
    assert out.metrics["ffr/failed_frac"] == pytest.approx(4 / 6)
    assert out.metrics["ffr/patched_frac"] == pytest.approx(2 / 6)
    assert out.metrics["ffr/repair_rate"] == pytest.approx(0.5)
    assert out.metrics["ffr/leak_rejected"] == 1.0 and out.metrics["ffr/teacher_failed"] == 1.0
    assert [out.metrics[f"ffr/error_type/{t}"] for t in ("temporal", "spatial", "misconception")] == [
        1.0,
        1.0,
        1.0,
    ]
    assert {"ffr_teacher", "ffr_patch"} <= set(watch.seconds)

    # a step where every rollout is correct: nothing patched, the same keys, repair_rate nan
    scored = iter([[s(1.0, 1.0, 1.0)] * 6])
    ffr.teacher = _StubTeacher([])
    quiet = ffr.step(
        Policy(model, processor, vision_token_ids(processor.tokenizer)), video_batch, 0.1, Stopwatch()
    )
    assert quiet.metrics.keys() == out.metrics.keys() and math.isnan(quiet.metrics["ffr/repair_rate"])
    assert quiet.rewards.tolist() == [3.0] * 6 and ffr.teacher.calls == []


# ------------------------------------------------------------------------------------------ training run


def test_train_ffr_logs_its_metrics(cache_dir, tmp_path):
    """`algorithm=ffr` on the tiny default (VISD's credit on top), 3 steps, from random weights so rollouts
    fail and get patched."""
    from test_train_e2e import compose_train, fast, read_metrics, shared_paths
    from visd_exp.train import train

    overrides = [
        "algorithm=ffr",
        "trainer.max_steps=3",
        "model.warm_start=null",
        "algorithm.max_completion_length=24",
        "logger=csv",
        *fast("trainer.max_steps", "model.warm_start", "algorithm.max_completion_length"),
        *shared_paths(cache_dir, tmp_path),
        f"paths.output_dir={tmp_path}",
    ]
    train(compose_train(overrides))
    rows = read_metrics(tmp_path)
    assert len(rows) == 3
    keys = ["ffr/failed_frac", "ffr/patched_frac", "ffr/repair_rate", "ffr/leak_rejected", "ffr/teacher_failed",
            "ffr/error_type/temporal", "ffr/error_type/spatial", "ffr/error_type/misconception",
            "timing/ffr_teacher", "timing/ffr_patch"]  # fmt: skip
    for key in keys:
        assert all(key in r and r[key] != "" for r in rows), key
    assert any(float(r["ffr/patched_frac"]) > 0 for r in rows)
