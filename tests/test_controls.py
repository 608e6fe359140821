"""Video-dependence controls (controls.py): swap_frames shows another sample's frames, shuffle_frames
shows a sample's own frames in another order, both with the sample's own question and ground truth; and
`evaluate control=all` reports them next to the normal run."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT
from visd_exp.controls import ControlDataset, derangement, non_identity_order


def test_derangement_and_orders_never_keep_the_original():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 7):
        for _ in range(20):
            order = derangement(n, g)
            assert sorted(order) == list(range(n)) and all(i != j for i, j in enumerate(order))
            frames = non_identity_order(n, g)
            assert sorted(frames) == list(range(n)) and frames != list(range(n))
    with pytest.raises(ValueError, match="at least 2 samples"):
        derangement(1, g)


@pytest.fixture(scope="module")
def dataset(tiny, cache_dir):
    from visd_exp.data.datamodule import VideoQADataModule

    _, processor = tiny
    cfg = OmegaConf.load(PROJECT_ROOT / "conf/data/synthetic_easy.yaml")
    cfg.synthetic.num_videos = 6
    cfg.synthetic.out_dir = str(cache_dir / "data" / "controls")
    cfg.train_file, cfg.val_file = None, None
    cfg.test_file = f"{cfg.synthetic.out_dir}/test.jsonl"
    cfg.seed = 0
    dm = VideoQADataModule(cfg, processor)
    dm.prepare_data()
    ds = dm.build_split("test")
    ds.records, ds.plans = ds.records[:4], ds.plans[:4]
    return ds


def test_swap_frames_shows_another_samples_frames_with_its_own_question(dataset):
    control = ControlDataset(dataset, "swap_frames", seed=0)
    for i in range(len(dataset)):
        item, other = control[i], control.source[i]
        assert other != i
        assert torch.equal(item["frames"], dataset[other]["frames"])
        assert torch.equal(item["pixel_values"], dataset[other]["pixel_values"])
        sample = item["sample"]
        assert sample["id"] == dataset.records[i]["id"] and sample["answer"] == dataset.records[i]["answer"]
        assert sample["control"] == "swap_frames"


def test_shuffle_frames_shows_its_own_frames_out_of_order_under_the_same_text(dataset):
    control = ControlDataset(dataset, "shuffle_frames", seed=0)
    for i in range(len(dataset)):
        item, own = control[i], dataset[i]
        order = control.orders[i]
        assert order != sorted(order)
        assert torch.equal(item["frames"], own["frames"][order])
        assert not torch.equal(item["frames"], own["frames"])
        assert torch.equal(item["input_ids"], own["input_ids"])  # the same prompt text and timestamps


@pytest.mark.slow
def test_evaluate_reports_the_controls_next_to_the_normal_run(cache_dir, tmp_path):
    from hydra import compose, initialize_config_dir

    from visd_exp.evaluate import evaluate

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            config_name="evaluate",
            overrides=[
                "control=all",
                "max_samples=4",
                "max_completion_length=24",
                "model.warm_start=null",
                "data.synthetic.num_videos=6",
                f"paths.cache_dir={cache_dir}",
                f"paths.data_dir={cache_dir / 'data'}",
                f"paths.output_dir={tmp_path}",
            ],
        )
    report = evaluate(cfg)
    assert set(report["controls"]) == {"normal", "swap_frames", "shuffle_frames"}
    assert json.loads((tmp_path / "report.json").read_text())["controls"] == report["controls"]
    assert (tmp_path / "predictions_swap_frames.jsonl").read_text().count("\n") == 4
    assert "| run | Acc | tIoU | R1@0.5 | sIoU | reward |" in (tmp_path / "report.md").read_text()
