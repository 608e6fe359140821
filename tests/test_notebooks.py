"""The inspection notebooks, executed top to bottom with nbclient against a tiny real run, and `make report`'s
script; plus unit tests of the smoothing, the colour scale and the offline wandb reader."""

from __future__ import annotations

import html
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import PROJECT_ROOT
from test_train_e2e import FAST, compose_train, shared_paths
from visd_exp.inspect import colors, credit_dumps, curves, report, runs

NOTEBOOKS = PROJECT_ROOT / "notebooks"


@pytest.fixture(scope="module")
def dumped_run(cache_dir, tmp_path_factory) -> Path:
    """A 3-step run of the default setting (EMA teacher, rule judge) with a credit dump every step."""
    from visd_exp.train import train

    run_dir = tmp_path_factory.mktemp("nbrun")
    overrides = [o for o in FAST if not o.startswith("trainer.max_steps=")] + [
        "trainer.max_steps=3",
        "dumps.credit_every_n_steps=1",
        "save_hf_model=false",
    ]
    train(compose_train(overrides + shared_paths(cache_dir, run_dir) + [f"paths.output_dir={run_dir}"]))
    import wandb

    if wandb.run is not None:  # train() leaves the offline run open: close it so its log is complete
        wandb.finish()
    assert sorted(credit_dumps.dump_paths(run_dir)) == [0, 1, 2]
    return run_dir


def code_outputs(nb) -> list[dict]:
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


# --- unit tests -----------------------------------------------------------------------------------------


def test_smoothing_skips_nan():
    nan = math.nan
    out = curves.smooth([1.0, nan, 3.0, nan, nan, nan, 5.0], window=3)
    np.testing.assert_allclose(out[:3], [1.0, 1.0, 2.0])  # the NaN is left out of the mean
    assert out[3] == 3.0 and out[4] == 3.0  # windows with one finite value
    assert math.isnan(out[5])  # a window of NaN only stays NaN
    assert out[6] == 5.0
    np.testing.assert_allclose(curves.smooth([1.0, 2.0, 6.0], window=1), [1.0, 2.0, 6.0])


def test_colour_scale_is_white_at_zero_and_hue_follows_sign():
    assert colors.diverging_rgb(0.0, 1.0) == (255, 255, 255)
    pos, neg = colors.diverging_rgb(0.5, 1.0), colors.diverging_rgb(-0.5, 1.0)
    assert pos[2] > pos[0] and neg[0] > neg[2]  # blue above zero, red below
    assert colors.diverging_rgb(7.0, 1.0) == colors.POSITIVE  # saturates at vmax
    assert colors.diverging_rgb(-7.0, 1.0) == colors.NEGATIVE
    assert colors.diverging_rgb(math.nan, 1.0) == colors.MISSING
    cmap = colors.diverging_cmap()
    assert tuple(round(255 * c) for c in cmap(0.5)[:3]) == (255, 255, 255)


def test_default_rollout_has_the_largest_judge_mass():
    dump = {
        "step": 0,
        "rollouts": [{"delta_judge": [0.1, -0.1]}, {"delta_judge": [-2.0, 0.5]}, {"delta_judge": [1.0]}],
    }
    assert credit_dumps.pick_rollout(dump) == 1
    assert credit_dumps.pick_rollout(dump, 2) == 2


# --- on a real run --------------------------------------------------------------------------------------


def test_wandb_log_holds_the_same_metrics_as_the_csv(dumped_run, tmp_path):
    from_csv, source = runs.load_metrics(dumped_run)
    assert source == "csv" and list(from_csv["step"]) == [0, 1, 2]
    no_csv = tmp_path / "run"
    shutil.copytree(dumped_run / "wandb", no_csv / "wandb")
    from_wandb, source = runs.load_metrics(no_csv)
    assert source == "wandb" and list(from_wandb["step"]) == [0, 1, 2]
    for key in ["reward", "grad_norm", "lambda", "credit/weight_mean", "rewards/fmt/mean"]:
        np.testing.assert_allclose(from_wandb[key].to_numpy(float), from_csv[key].to_numpy(float), rtol=1e-6)


def test_inspect_curves_notebook(dumped_run, tmp_path):
    nb = report.execute_notebook(NOTEBOOKS / "inspect_curves.ipynb", dumped_run, tmp_path)
    assert not [o for o in code_outputs(nb) if o.output_type == "error"]
    assert (tmp_path / "curves.png").stat().st_size > 20_000
    for metric in curves.CURVES:
        assert (tmp_path / f"curves_{curves.slug(metric)}.png").stat().st_size > 5_000, metric
    assert "| default |" in (tmp_path / "curves_summary.md").read_text()
    assert any("image/png" in o.get("data", {}) for o in code_outputs(nb))


def test_token_credit_notebook(dumped_run, tmp_path):
    nb = report.execute_notebook(NOTEBOOKS / "token_credit.ipynb", dumped_run, tmp_path)
    assert not [o for o in code_outputs(nb) if o.output_type == "error"]
    dump = credit_dumps.load_dump(dumped_run)  # the latest step, as the notebook's default
    index = credit_dumps.pick_rollout(dump)
    page = tmp_path / f"token_credit_step{dump['step']}_rollout{index}.html"
    text = page.read_text()
    tokens = dump["rollouts"][index]["tokens"]
    assert len(tokens) > 5 and text.count('class="vc-tok"') == 3 * len(tokens)
    for token in tokens[:20]:
        assert html.escape(token.replace("\n", "↵\n") or "∅") in text
    assert "Eq. 31" in text and "linear-gradient" in text
    assert (tmp_path / f"token_credit_step{dump['step']}_rollout{index}.png").stat().st_size > 20_000
    printed = "".join(o.get("text", "") for o in code_outputs(nb) if o.output_type == "stream")
    assert dump["rollouts"][index]["question"] in printed and "advantage" in printed


def test_report_script_on_a_run_without_dumps(dumped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(dumped_run, run, ignore=shutil.ignore_patterns("credit_dumps", "checkpoints", "hf_model"))
    assert report.main([str(run)]) == 0
    curves_html = (run / "report" / "inspect_curves.html").read_text()
    credit_html = (run / "report" / "token_credit.html").read_text()
    assert "data:image/png;base64," in curves_html and "Table-5" in curves_html
    assert "No credit dumps" in credit_html and 'class="err"' not in credit_html
