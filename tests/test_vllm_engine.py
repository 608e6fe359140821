"""`rollout.engine=vllm` against the HF path, on vLLM's CPU build (run in `.venv-vllm`: `pytest -m vllm`).

One engine per test session serves the unit tests (its start-up is paid once); the training and evaluation
runs build their own, as a user's run does. All in fp32, where both engines compute the same numbers up to
kernel rounding: greedy tokens must be EQUAL, log-probs within the tolerances stated at each assertion.
"""

from __future__ import annotations

import copy
import csv
import glob
import json

import pytest
import torch
from omegaconf import OmegaConf

from visd_exp.rollout.vllm_compat import prepare_vllm

prepare_vllm()
pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm

from conftest import PROJECT_ROOT, write_square_video  # noqa: E402
from test_logprob_consistency import make_batch  # noqa: E402
from test_train_e2e import compose_train, fast, run_module, shared_paths  # noqa: E402
from visd_exp.models import load_model_and_processor, vision_token_ids  # noqa: E402
from visd_exp.rollout.generation import generate_rollouts, policy_logprobs  # noqa: E402
from visd_exp.rollout.vllm_engine import StaleEngineError, VLLMEngine, collapse_image_runs  # noqa: E402

GREEDY = OmegaConf.create({"num_generations": 1, "do_sample": False, "max_completion_length": 32})
SAMPLED = OmegaConf.create(
    {"num_generations": 3, "temperature": 0.7, "top_p": 1.0, "top_k": 0, "max_completion_length": 24}
)


@pytest.fixture(scope="session")
def warm():
    """The shipped warm start (greedy decoding of a trained model has no near-ties for rounding to flip)."""
    path = glob.glob(str(PROJECT_ROOT / "assets/warm_starts/*"))[0]
    cfg = OmegaConf.create(
        {
            "pretrained_model_name_or_path": path,
            "tiny": None,
            "dtype": "float32",
            "attn_implementation": "sdpa",
        }
    )
    model, processor = load_model_and_processor(cfg)
    return model.eval(), processor


@pytest.fixture(scope="session")
def engine(warm):
    model, processor = warm
    vcfg = OmegaConf.load(PROJECT_ROOT / "conf/rollout/default.yaml").vllm
    limits = {"max_images": 16, "max_model_len": 2048, "max_num_seqs": 16}
    eng = VLLMEngine(vcfg, model, processor, precision="32-true", limits=limits)
    eng.sync(model, 0)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def batch(warm, tmp_path_factory):
    _, processor = warm
    return make_batch(processor, write_square_video(tmp_path_factory.mktemp("v") / "v.mp4"))


def suppress(processor):
    return vision_token_ids(processor.tokenizer)


def perturbed(model, scale=0.05, only: str | None = None):
    other = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in other.named_parameters():
            if only is None or only in name:
                p.add_(scale * torch.randn_like(p))
    return other


def test_the_engine_gets_the_hf_paths_prompt_ids_and_frames_and_decodes_the_same(warm, engine, batch):
    model, processor = warm
    hf = generate_rollouts(model, processor, batch, GREEDY, suppress(processor))
    out = engine.generate(model, processor, batch, GREEDY, suppress(processor))
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for request, ids, mask, frames in zip(
        engine.last_requests, batch["input_ids"], batch["attention_mask"], batch["frames"]
    ):
        assert request["prompt_token_ids"] == collapse_image_runs(ids[mask.bool()].tolist(), pad)
        images = request["multi_modal_data"]["image"]
        assert len(images) == len(frames) and all(torch.equal(a, b) for a, b in zip(images, frames))
    # the engine checks the ids it expanded against ours on every call; greedy tokens equal HF's exactly
    assert out.completion_ids.shape[1] > 8
    assert torch.equal(out.completion_ids, hf.completion_ids)
    assert torch.equal(out.completion_mask, hf.completion_mask)
    assert out.texts == hf.texts and torch.equal(out.truncated, hf.truncated)
    assert torch.equal(out.pixel_values, hf.pixel_values) and out.images_per_row == hf.images_per_row


def test_sampled_logprobs_are_the_policys_at_the_temperature(warm, engine, batch):
    model, processor = warm
    torch.manual_seed(0)
    out = engine.generate(model, processor, batch, SAMPLED, suppress(processor))
    torch.manual_seed(0)
    again = engine.generate(model, processor, batch, SAMPLED, suppress(processor))
    assert torch.equal(out.completion_ids, again.completion_ids)  # seeds drawn from the trainer's RNG
    assert len({tuple(r) for r in out.completion_ids.tolist()}) > 1  # n = G distinct samples
    with torch.no_grad():
        trainer, _ = policy_logprobs(model, out, SAMPLED.temperature)
        at_one, _ = policy_logprobs(model, out, 1.0)
    valid = out.completion_mask.bool()
    diff = (out.engine_logprobs - trainer).abs()[valid]
    # fp32 on both sides: kernel rounding only (measured ~2e-5 at most); temperature 1 would be far off
    assert diff.max() < 1e-3, float(diff.max())
    assert (out.engine_logprobs - at_one).abs()[valid].mean() > 50 * diff.mean()


def test_a_push_after_perturbing_every_parameter_makes_vllm_follow_hf(warm, engine, batch):
    model, processor = warm
    sup = suppress(processor)
    before = engine.generate(model, processor, batch, GREEDY, sup)  # caches these frames' vision features
    for only in (None, "visual"):  # everything (LM, vision tower, tied head); then the vision tower alone
        new = perturbed(model, only=only)
        hf_new = generate_rollouts(new, processor, batch, GREEDY, sup)
        assert not torch.equal(hf_new.completion_ids, before.completion_ids), (
            "the perturbation changed nothing"
        )
        stale = engine.generate(model, processor, batch, GREEDY, sup)
        assert torch.equal(stale.completion_ids, before.completion_ids)  # not pushed yet: old weights
        engine.sync(new, engine.version + 1)
        after = engine.generate(new, processor, batch, GREEDY, sup)  # same frames, new weights
        assert torch.equal(after.completion_ids, hf_new.completion_ids), only
        engine.verify(new, 0)  # the sync check passes on the pushed weights ...
        engine.sync(model, engine.version + 1)
    engine.verify(model, 0)
    with pytest.raises(StaleEngineError, match="weight push did not reach"):
        engine.verify(perturbed(model), 0)  # ... and fails on weights that were never pushed


def test_tgrpo_shuffled_frames_reach_the_engine_permuted(warm, engine, batch):
    from visd_exp.algorithms import Policy, build_algorithm
    from visd_exp.utils.steps import Stopwatch

    model, processor = warm
    video = dict(batch)
    torch.manual_seed(0)
    video["frames"] = [torch.randint(0, 256, f.shape, dtype=torch.uint8) for f in batch["frames"]]  # distinct
    video["samples"] = [dict(s, frame_times=[float(i) for i in range(len(f))], video_duration=8.0,
                             answer="B", segment=[2.0, 5.0]) for s, f in zip(batch["samples"], batch["frames"])]  # fmt: skip
    calls = []

    class Recording:
        def generate(self, *args):
            out = engine.generate(*args)
            calls.append((args[2], copy.deepcopy(engine.last_requests)))
            return out

    algo = build_algorithm(compose_train(["algorithm=tgrpo", "algorithm.max_completion_length=8"]))
    algo.step(Policy(model, processor, suppress(processor), Recording()), video, 0.0, Stopwatch())
    assert len(calls) == 2
    shuffled, requests = calls[1]
    for j, request in enumerate(requests):
        original = video["frames"][j]
        images = request["multi_modal_data"]["image"]
        order = [next(i for i, f in enumerate(original) if torch.equal(f, image)) for image in images]
        assert sorted(order) == list(range(len(original))) and order != list(range(len(original)))
        # the pixel blocks the update sees follow the same order as the frames the engine encoded
        blocks = video["pixel_values"][j].split(video["image_grid_thw"][j].prod(1).tolist())
        got = shuffled["pixel_values"][j].split(shuffled["image_grid_thw"][j].prod(1).tolist())
        assert all(torch.equal(g, blocks[k]) for g, k in zip(got, order))


def test_ffr_patched_prompts_reach_the_engine_patched(warm, engine, batch):
    from visd_exp.algorithms.ffr import patched_prompts
    from visd_exp.algorithms.ffr_patch import Diagnosis

    model, processor = warm
    for s, f in zip(batch["samples"], batch["frames"]):
        s.update({"frame_times": [float(i) for i in range(len(f))], "video_duration": 8.0})
    patch = "Re-examine the frames between 0 s and 7 s."
    prompts = patched_prompts(processor, batch, [1], [Diagnosis("temporal", patch)], G=2)
    out = engine.generate(model, processor, prompts, GREEDY, suppress(processor))
    text = processor.tokenizer.decode(engine.last_requests[0]["prompt_token_ids"])
    assert patch in text and out.num_rollouts == 1


# -- training and evaluation runs ---------------------------------------------------------------------
def train_run(cache_dir, out, *extra: str, steps: int = 3):
    from visd_exp.train import train

    cfg = compose_train(
        fast("trainer.max_steps", "callbacks.model_checkpoint")
        + shared_paths(cache_dir, out)
        + [
            f"paths.output_dir={out}",
            f"trainer.max_steps={steps}",
            "+experiment=ema_topk",
            "logger=csv",
            "callbacks.model_checkpoint=null",
            "callbacks.validation.every_n_steps=0",
            "dumps.credit_every_n_steps=0",
            *extra,
        ]
    )
    train(cfg)
    with open(out / "csv" / "version_0" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("loss")]


def test_greedy_training_is_the_same_with_either_engine(cache_dir, tmp_path, monkeypatch):
    import visd_exp.algorithms.grpo as grpo

    seen: dict[str, list] = {}
    real = grpo.Policy.generate

    def recording(self, batch, how):
        out = real(self, batch, how)
        seen.setdefault(self.engine.name, []).append(out.completion_ids.clone())
        return out

    monkeypatch.setattr(grpo.Policy, "generate", recording)
    greedy = ["+algorithm.do_sample=false", "algorithm.old_logprobs=recompute"]
    rows = {e: train_run(cache_dir, tmp_path / e, f"rollout.engine={e}", *greedy) for e in ("hf", "vllm")}
    assert len(seen["hf"]) == len(seen["vllm"]) == 3
    for a, b in zip(seen["hf"], seen["vllm"]):
        assert torch.equal(a, b)  # the same completions at every step (the weights pushed after each)
    for hf, vllm in zip(rows["hf"], rows["vllm"]):
        for key in ("reward", "completions/mean_length", "loss", "entropy"):
            # the same tokens through the same trainer: equal up to the forward's float rounding
            assert float(vllm[key]) == pytest.approx(float(hf[key]), abs=1e-5), key
        assert float(vllm["timing/weight_sync"]) > 0 and float(hf["timing/weight_sync"]) == 0


def test_a_sampled_vllm_run_logs_the_engine_metrics_and_corrects_its_mismatch(cache_dir, tmp_path):
    rows = train_run(
        cache_dir, tmp_path / "run", "rollout.engine=vllm", "algorithm.rollout_correction.enabled=true"
    )
    assert len(rows) == 3
    for r in rows:
        assert 0 <= float(r["rollout/logprob_diff_mean"]) < 1e-3  # fp32: kernel rounding
        assert float(r["rollout/logprob_diff_max"]) >= float(r["rollout/logprob_diff_mean"])
        assert float(r["timing/weight_sync"]) > 0
        assert abs(float(r["rollout/is_weight_mean"]) - 1.0) < 1e-2
    assert float(rows[0]["rollout/sync_check_diff_mean"]) < 1e-3  # the step-0 check ran


def test_a_run_whose_push_never_happens_stops_at_the_first_sync_check(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(VLLMEngine, "push_weights", lambda self, model: None)  # the test hook
    with pytest.raises(StaleEngineError, match="at step 0.*weight push did not reach"):
        train_run(cache_dir, tmp_path / "run", "rollout.engine=vllm")


def test_evaluate_with_vllm_writes_the_hf_report(cache_dir, tmp_path):
    from hydra import compose, initialize_config_dir

    from visd_exp.evaluate import evaluate

    reports = {}
    for name in ("hf", "vllm"):
        with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                config_name="evaluate",
                overrides=[
                    f"rollout.engine={name}",
                    f"paths.output_dir={tmp_path / name}",
                    f"paths.cache_dir={cache_dir}",
                    f"paths.data_dir={cache_dir / 'data'}",
                    "data.synthetic.num_videos=12",
                    "max_completion_length=64",
                    *[o for o in fast() if o.startswith("model.")],
                ],
            )
        evaluate(cfg)
        reports[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert reports["hf"]["num_samples"] >= 4 and len(reports["hf"]["tasks"]) >= 2
    assert reports["hf"] == reports["vllm"]


def test_two_ranks_under_zero3_each_with_its_engine_pass_the_sync_check(cache_dir, tmp_path):
    import os

    result = run_module(
        "train",
        "+experiment=ema_topk",
        "trainer=deepspeed_cpu",
        "trainer.devices=2",
        "trainer.strategy.stage=3",
        "trainer.max_steps=3",
        *fast("trainer.max_steps", "callbacks.model_checkpoint"),
        *shared_paths(cache_dir, tmp_path),
        f"paths.output_dir={tmp_path}",
        "logger=csv",
        "callbacks.model_checkpoint=null",
        "callbacks.validation.every_n_steps=0",
        "dumps.credit_every_n_steps=0",
        "rollout.engine=vllm",
        "rollout.vllm.verify_every=1",
        env={
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "DS_ACCELERATOR": "cpu",
            "TOKENIZERS_PARALLELISM": "false",
        },
        timeout=900,
    )
    log = result.stdout + result.stderr
    for rank in (0, 1):
        for step in (0, 1, 2):
            assert f"sync check passed at step {step} on rank {rank}" in log, (rank, step, log[-3000:])
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    assert len(rows) == 3 and all(float(r["timing/weight_sync"]) > 0 for r in rows)


def test_bench_rollout_engines_quick(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    subprocess.run(
        [sys.executable, "bench/rollout_engines.py", "--quick", "--out", str(out)],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    result = json.loads(out.read_text())
    row = result["rollouts"]["tiny"]["rollouts"]["8"]
    for engine in ("hf", "vllm"):  # 8 rollouts x 16 tokens, each checked to be exactly 16 long
        assert row[f"{engine}_tokens_per_s"] == pytest.approx(8 * 16 / row[f"{engine}_s"])
    assert result["rollouts"]["tiny"]["push_s"] > 0
    train = result["training"]
    assert train["hf"]["steps"] == train["vllm"]["steps"] == 2
    assert train["hf"]["timing/weight_sync"] == 0 and train["vllm"]["timing/weight_sync"] > 0
