"""The Table-5 summary: final-window means per run, then mean and std over seeds."""

from __future__ import annotations

import csv

import pytest
import yaml

from visd_exp.summarize import final_window, summarize


def fake_job(root, num, experiment, seed, rewards, grad=1.0):
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump([f"+experiment={experiment}", f"seed={seed}"])
    )
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    (job / "csv" / "version_0").mkdir(parents=True)
    with open(job / "csv" / "version_0" / "metrics.csv", "w", newline="") as handle:
        fields = [
            "step",
            "loss",
            "reward",
            "rewards/ans/mean",
            "grad_norm",
            "rewards/ans_tmp/mean",
            "val/accuracy",
        ]
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for step, r in enumerate(rewards):
            ans = "nan" if step % 2 else r / 2
            writer.writerow(
                {"step": step, "loss": 0.1, "reward": r, "rewards/ans/mean": ans, "grad_norm": grad}
            )
            if step % 5 == 4:  # validation is logged in a row of its own: it must not count as a step
                writer.writerow({"step": step, "val/accuracy": 0.5})


def test_final_window():
    assert [final_window(n) for n in (1, 10, 100, 1000, 1200)] == [1, 1, 10, 100, 100]


def test_summary_by_hand(tmp_path):
    # 20 steps -> final window 2 steps
    fake_job(tmp_path, 0, "grpo", 0, [0.0] * 18 + [1.0, 3.0])  # window mean reward 2.0
    fake_job(tmp_path, 1, "grpo", 1, [0.0] * 18 + [3.0, 5.0])  # 4.0
    fake_job(tmp_path, 2, "ema_topk", 0, [9.0] * 20, grad=2.0)
    table = {r["experiment"]: r for r in summarize(tmp_path)}
    assert table["grpo"]["reward"] == pytest.approx(3.0) and table["grpo"]["reward_std"] == pytest.approx(1.0)
    # accuracy skips the nan rows: only step 18 in each window -> (0.5 + 1.5) / 2
    assert table["grpo"]["accuracy"] == pytest.approx(1.0)
    assert table["ema_topk"]["grad_norm"] == 2.0 and table["grpo"]["runs"] == 2
    md = (tmp_path / "summary.md").read_text()
    assert "| grpo | 3.000 ± 1.000 |" in md and "n/a" in md  # tIoU was never logged
