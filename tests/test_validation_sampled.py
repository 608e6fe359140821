"""Validation (callbacks/validation.py): greedy val/* and, beside it, val/sampled/*, G completions per
prompt drawn as the rollouts are, from a fixed seed, without moving training's RNG."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT
from visd_exp.callbacks import ValidationCallback
from visd_exp.evaluation import predict

SAMPLING = {"num_generations": 3, "temperature": 1.0, "top_p": 1.0, "top_k": 0}


@pytest.fixture(scope="module")
def datamodule(tiny, cache_dir):
    from visd_exp.data.datamodule import VideoQADataModule

    _, processor = tiny
    cfg = OmegaConf.load(PROJECT_ROOT / "conf/data/synthetic_easy.yaml")
    cfg.synthetic.num_videos = 6
    cfg.synthetic.out_dir = str(cache_dir / "data" / "validation")
    cfg.train_file, cfg.test_file = None, None
    cfg.val_file = f"{cfg.synthetic.out_dir}/val.jsonl"
    cfg.seed, cfg.batch_size = 0, 2
    dm = VideoQADataModule(cfg, processor)
    dm.prepare_data()
    dm.datasets["val"] = dm.build_split("val")
    return dm


def test_sampled_predict_gives_g_rows_per_prompt_in_order_and_repeats_under_a_seed(tiny, datamodule):
    model, processor = tiny
    batches = list(datamodule.val_dataloader())[:2]
    ids = [s["id"] for b in batches for s in b["samples"]]

    def run(seed):
        torch.manual_seed(seed)
        return list(predict(model, processor, batches, 24, SAMPLING))

    rows = run(0)
    assert [r["id"] for r in rows] == [i for i in ids for _ in range(3)]  # prompt order, G rows each
    assert [r["prediction"] for r in run(0)] == [r["prediction"] for r in rows]
    assert [r["prediction"] for r in run(1)] != [r["prediction"] for r in rows]
    # the random-weight model samples differently within a group: these are draws, not one greedy text
    assert len({r["prediction"] for r in rows[:3]}) > 1
    greedy = list(predict(model, processor, batches, 24))
    assert [r["id"] for r in greedy] == ids


def test_validation_logs_sampled_metrics_from_a_fixed_seed_and_keeps_trainings_rng(tiny, datamodule):
    model, processor = tiny
    trainer = SimpleNamespace(datamodule=datamodule)
    module = SimpleNamespace(model=model, processor=processor, device=torch.device("cpu"))
    callback = ValidationCallback(max_samples=3, max_completion_length=24, sampled={**SAMPLING, "seed": 7})

    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = callback.validate(trainer, module)
    assert torch.equal(torch.get_rng_state(), before)  # training's stream did not move
    assert first["val/num_samples"] == 3.0 and first["val/sampled/num_samples"] == 9.0  # 3 prompts x G
    assert {"val/reward/total", "val/sampled/reward/total", "val/sampled/reward/fmt"} <= set(first)
    torch.manual_seed(999)  # another training state: the sampled draw is still the seed's own
    assert callback.validate(trainer, module) == first

    other_seed = ValidationCallback(max_samples=3, max_completion_length=24, sampled={**SAMPLING, "seed": 8})
    assert other_seed.validate(trainer, module)["val/reward/total"] == first["val/reward/total"]  # greedy
    off = ValidationCallback(max_samples=3, max_completion_length=24, sampled={"num_generations": 0})
    assert not any(k.startswith("val/sampled/") for k in off.validate(trainer, module))
    # its own prompts per generate call (3 here, data.batch_size 2): the same val prompts, greedy alike
    wide = ValidationCallback(max_samples=3, max_completion_length=24, batch_size=3, sampled={**SAMPLING})
    got = wide.validate(trainer, module)
    assert got["val/num_samples"] == 3.0 and got["val/sampled/num_samples"] == 9.0
    assert got["val/reward/total"] == pytest.approx(first["val/reward/total"], abs=1e-6)
    with pytest.raises(ValueError, match="training order"):
        datamodule.loader("val", shuffle=True, batch_size=3)


def test_a_run_without_a_val_split_says_so(tiny, caplog):
    model, processor = tiny
    trainer = SimpleNamespace(datamodule=SimpleNamespace(datasets={}), global_step=0, loggers=[])
    module = SimpleNamespace(model=model, processor=processor, device=torch.device("cpu"))
    with caplog.at_level("WARNING", logger="visd_exp.callbacks.validation"):
        ValidationCallback(every_n_steps=50).on_train_start(trainer, module)
    assert "no val split" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="visd_exp.callbacks.validation"):
        ValidationCallback(every_n_steps=0).on_train_start(trainer, module)  # off: nothing to say
    assert caplog.text == ""


def test_unknown_sampling_keys_are_refused():
    with pytest.raises(ValueError, match="unknown keys \\['temprature'\\]"):
        ValidationCallback(sampled={"num_generations": 2, "temprature": 0.7})


def test_the_default_config_samples_as_the_rollouts_do():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["algorithm.temperature=0.7", "algorithm.top_p=0.9"])
    sampled = cfg.callbacks.validation.sampled
    assert (sampled.temperature, sampled.top_p, sampled.top_k) == (0.7, 0.9, cfg.algorithm.top_k)
    assert sampled.num_generations > 0
