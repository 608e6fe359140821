"""The miniature reproduction (visd_exp.miniature): the analysis on hand-made runs, checked by hand, and
the whole pipeline (SFT start, multirun from it, results page) at a test size so it cannot rot."""

from __future__ import annotations

import csv
import math

import pytest
import yaml

from visd_exp.miniature import analyse, run


def fake_run(
    job, experiment: str, seed: int, rewards: list[float], accuracy: float = 0.5, val: dict | None = None
) -> None:
    """A run directory as training writes it; `val` = {step: greedy val reward} (logged on those steps only)."""
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"+experiment={experiment}", f"seed={seed}"])
    )
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    (job / "csv" / "version_0").mkdir(parents=True)
    with open(job / "csv" / "version_0" / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["step", "loss", "reward", "rewards/ans/mean", "grad_norm", "val/reward/total"]
        )
        writer.writeheader()
        for step, r in enumerate(rewards):
            writer.writerow(
                {"step": step, "loss": 0.1, "reward": r, "rewards/ans/mean": accuracy, "grad_norm": 1.0}
            )
        for step, v in (val or {}).items():
            writer.writerow({"step": step, "val/reward/total": v})


def test_analysis_by_hand(tmp_path):
    # 20 steps: the final window is 2 steps (10%), the smoothing window 2 steps
    flat = [0.5] * 20
    rising = [0.1 * i for i in range(20)]  # final window mean (1.8 + 1.9) / 2 = 1.85
    fake_run(tmp_path / "0", "grpo", 0, [0.0] * 10 + flat[10:])
    fake_run(tmp_path / "1", "grpo", 1, [0.0] * 10 + [0.7] * 10)  # grpo final reward: mean(0.5, 0.7) = 0.6
    fake_run(tmp_path / "2", "ema_topk", 0, rising)
    fake_run(tmp_path / "3", "ema_topk", 1, rising)
    fake_run(tmp_path / "4", "no_feedback", 0, [2.0] * 20, accuracy=0.9)
    result = analyse(tmp_path)
    table = result["table"]
    assert table["grpo"]["reward"] == pytest.approx(0.6) and table["grpo"]["reward_std"] == pytest.approx(0.1)
    assert table["ema_topk"]["reward"] == pytest.approx(1.85) and table["ema_topk"]["reward_std"] == 0.0
    assert table["no_feedback"]["accuracy"] == pytest.approx(0.9)
    assert math.isnan(table["grpo"]["temporal_iou"])  # not logged: n/a, not 0
    # smoothed (2-step trailing mean) rising curve: step i -> 0.1 i - 0.05; first >= 0.6 at step 7 (0.65)
    assert table["ema_topk"]["steps_to_grpo_final"] == 7 and table["ema_topk"]["reaches_grpo_final"] == "2/2"
    feedback = result["claims"][0]
    assert feedback.startswith("- feedback beats answer-only: did NOT hold here") and "-0.150" in feedback
    assert "seed spread unknown with one seed" in feedback  # no_feedback ran once
    assert "not measured" in result["claims"][1]  # current_topk missing
    assert "first reaches GRPO's final 0.600 at step 7" in result["claims"][-1]
    page = (tmp_path / "results.md").read_text()
    assert "| ema_topk | 2 | 20 | 1.850 ± 0.000 |" in page and "figure3_reward.png" in page
    assert (tmp_path / "figure3_reward.png").stat().st_size > 1000
    assert (tmp_path / "results.csv").read_text().startswith("experiment,")


def test_greedy_validation_columns_and_claims(tmp_path):
    # validation at steps 0 and 10: the last value is the run's, the first its start
    fake_run(tmp_path / "0", "ema_topk", 0, [1.0] * 10, val={0: 2.0, 5: 2.5, 10: 2.2})
    fake_run(tmp_path / "1", "ema_topk", 1, [1.0] * 10, val={0: 2.0, 10: 2.4})
    fake_run(tmp_path / "2", "no_feedback", 0, [1.0] * 10, val={0: 2.0, 10: 2.0})
    fake_run(tmp_path / "3", "no_feedback", 1, [1.0] * 10, val={0: 2.0, 10: 2.1})
    result = analyse(tmp_path)
    ema, nofb = result["table"]["ema_topk"], result["table"]["no_feedback"]
    assert ema["val_reward"] == pytest.approx(2.3) and ema["val_reward_std"] == pytest.approx(0.1)
    assert ema["val_reward_start"] == pytest.approx(2.0) and nofb["val_reward"] == pytest.approx(2.05)
    # 2.3 - 2.05 = 0.25 against a spread of 0.1 + 0.05
    val_claim = [c for c in result["claims"] if "val_reward" in c][0]
    assert val_claim.startswith("- feedback beats answer-only: held here") and "+0.250" in val_claim
    assert "exceeds the seed spread 0.150" in val_claim
    assert "| ema_topk | 2.300 ± 0.100 (2.000) |" in (tmp_path / "results.md").read_text()


def test_convergence_is_not_claimed_when_grpos_rise_is_within_its_seed_spread(tmp_path):
    def sweep(name, grpo_finals):
        for seed, final in enumerate(grpo_finals):
            fake_run(tmp_path / name / str(seed), "grpo", seed, [1.0] * 10 + [final] * 10)
        fake_run(tmp_path / name / "9", "ema_topk", 0, [1.0] * 5 + [1.3] * 15)
        return analyse(tmp_path / name)["claims"][-1]

    # GRPO's first window 1.0, finals 1.1 and 1.3: 1.2 ± 0.1, a rise of 0.2 beyond its spread
    assert "first reaches GRPO's final 1.200 at step 6" in sweep("clear", [1.1, 1.3])
    # the same rise with finals 0.9 and 1.5 (± 0.3): not measurable
    line = sweep("noisy", [0.9, 1.5])
    assert "not measurable here (GRPO's reward rose 0.200" in line and "seed spread 0.300" in line


def test_convergence_is_not_claimed_when_grpo_never_rose(tmp_path):
    fake_run(tmp_path / "0", "grpo", 0, [0.5] * 10 + [0.3] * 10)
    fake_run(tmp_path / "1", "ema_topk", 0, [0.5] * 20)
    assert "not measurable here" in analyse(tmp_path)["claims"][-1]


@pytest.mark.slow
def test_the_pipeline_at_test_size(tmp_path, cache_dir):
    """SFT start (2 steps), then grpo and ema_topk for 2 steps from it, then the results page."""
    extra = [
        f"paths.cache_dir={cache_dir}",
        f"paths.data_dir={cache_dir / 'data'}",
        f"paths.log_dir={tmp_path / 'logs'}",
        "data.synthetic.num_videos=12",
        "data.batch_size=2",
        "algorithm.max_completion_length=24",
        "callbacks.validation.every_n_steps=0",
    ]
    sweep = run(
        tmp_path / "mini", steps=2, sft_steps=2, seeds=[0], experiments=["grpo", "ema_topk"], extra=extra
    )
    assert (tmp_path / "mini" / "sft" / "hf_model" / "model.safetensors").is_file()
    page = (sweep / "results.md").read_text()
    assert "| grpo | 1 | 2 |" in page and "| ema_topk | 1 | 2 |" in page
    resolved = yaml.safe_load((sweep / "0" / ".hydra" / "config.yaml").read_text())
    assert resolved["model"]["init_from"].endswith("sft/hf_model") and resolved["schedule"]["steps"] == 1
