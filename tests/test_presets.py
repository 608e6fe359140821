"""The paper's stages as presets: +experiment=paper_7b_sft (Open-o3-Video's SFT script) and paper_7b's
RL length in epochs, with sigma's and lambda's annealing over the run's real optimizer steps, and its 16
prompts per optimizer step landing as one batch per rank (one rollout call) whatever the layout."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from test_configs import CONF, composed
from test_train_e2e import compose_train, fast, read_all_metrics, read_metrics, shared_paths
from visd_exp.callbacks.lambda_schedule import LambdaSchedule, annealing_steps, lambda_at
from visd_exp.utils.recipe import RecipeError, check_prompts_per_step
from visd_exp.utils.run_length import planned_optimizer_steps


# -- the SFT preset --------------------------------------------------------------------------------------
def test_paper_7b_sft_is_open_o3_videos_sft_script():
    """run_sft_video.sh: Qwen2.5-VL-7B-Instruct, lr 1e-6, one epoch, clip 5, 8 GPUs x 1 x 1, ZeRO-2, bf16,
    no scheduler flag (linear to 0, no warm-up), no weight decay flag (0), save every 500 steps."""
    cfg = composed("+experiment=paper_7b_sft", "data.train_file=x")
    assert cfg.algorithm.name == "sft" and cfg.teacher.name == "none" and cfg.task_name == "sft"
    assert cfg.model.pretrained_model_name_or_path == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert cfg.model.init_from is None and cfg.model.warm_start is None
    assert (cfg.model.dtype, cfg.model.attn_implementation, cfg.model.gradient_checkpointing) == (
        "bfloat16",
        "flash_attention_2",
        True,
    )
    optim, trainer = cfg.optim, cfg.trainer
    assert (optim.lr, optim.max_grad_norm, optim.weight_decay, optim.warmup_steps) == (1e-6, 5.0, 0.0, 0)
    assert (cfg.algorithm.lr_decay, cfg.algorithm.min_lr_ratio) == ("linear", 0.0)
    assert (trainer.max_epochs, trainer.max_steps, trainer.precision) == (1, -1, "bf16-mixed")
    assert "DeepSpeed" in trainer.strategy._target_ and trainer.strategy.stage == 2
    assert cfg.callbacks.model_checkpoint.every_n_train_steps == 500
    # frames and image bounds of Open-o3-Video's vision_process.py
    data = cfg.data
    assert (data.fps, data.min_frames, data.max_frames, data.min_pixels, data.max_pixels) == (
        2.0,
        4,
        16,
        128 * 28 * 28,
        128 * 28 * 28,
    )
    assert (data.image_record_min_pixels, data.image_record_max_pixels) == (4 * 28 * 28, 256 * 28 * 28)
    # 8 GPUs x batch 1 x accumulation 1: `auto` resolves to 1 on 1 x 8, to 2 on 1 x 4
    assert (trainer.devices, trainer.num_nodes, data.batch_size) == (8, 1, "auto")
    assert check_prompts_per_step(cfg) == 8 and cfg.data.batch_size == 1
    four = composed("+experiment=paper_7b_sft", "data.train_file=x", "trainer.devices=4")
    assert check_prompts_per_step(four) == 8 and four.data.batch_size == 2


@pytest.mark.parametrize("name", ["paper_7b_sft", "paper_7b"])
def test_every_number_of_a_preset_names_its_source(name):
    """Each `key: <number>` line carries a comment, inline or on the lines just above it."""
    lines = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()
    number = re.compile(r"^\s*[a-z_]+:\s*-?[0-9][0-9.e+-]*\s*(#.*)?$")
    bare = []
    for i, line in enumerate(lines):
        if number.match(line) and "#" not in line and not lines[i - 1].lstrip().startswith("#"):
            bare.append(line.strip())
    assert not bare, f"{name}.yaml: numbers without a source: {bare}"


# -- the RL preset's length and layout ---------------------------------------------------------------------
def test_paper_7b_trains_one_epoch_with_its_sampling_and_schedules(tmp_path):
    cfg = composed(
        "+experiment=paper_7b", "model.init_from=x", "data.train_file=x", f"paths.output_dir={tmp_path}"
    )
    assert (cfg.trainer.max_epochs, cfg.trainer.max_steps) == (1, -1)
    assert (cfg.algorithm.temperature, cfg.algorithm.top_p, cfg.algorithm.top_k) == (1.0, 0.95, 0)
    # Table 8's 600 annealing steps as written; a fraction of the real run is one override away
    assert (cfg.schedule.steps, cfg.schedule.fraction) == (600, None)
    scaled = composed("+experiment=paper_7b", "model.init_from=x", "schedule.fraction=0.5").schedule
    assert annealing_steps(scaled, 2250) == 1125 and annealing_steps(cfg.schedule, 2250) == 600
    # the step-1,200 student (C.2's main result) is kept whatever the rotation deletes
    import hydra

    checkpoint = hydra.utils.instantiate(cfg.callbacks.model_checkpoint)
    assert list(checkpoint.keep_steps) == [1200] and checkpoint.keep_last == 3


def test_paper_7b_on_one_node_is_batch_2_with_accumulation_1():
    """16 prompts per optimizer step on 1 x 8 GPUs: one batch of 2 per rank (one rollout call), not two."""
    cfg = composed("+experiment=paper_7b", "model.init_from=x", "data.train_file=x", "trainer.num_nodes=1")
    assert check_prompts_per_step(cfg) == 16
    assert (cfg.data.batch_size, cfg.optim.accumulate_grad_batches) == (2, 1)
    two_nodes = composed("+experiment=paper_7b", "model.init_from=x", "data.train_file=x")
    assert check_prompts_per_step(two_nodes) == 16 and two_nodes.data.batch_size == 1
    # devices unknown until the trainer resolves them: left `auto`, then resolved with the real count
    later = composed("+experiment=paper_7b", "model.init_from=x", "trainer.devices=-1")
    assert check_prompts_per_step(later) is None and later.data.batch_size == "auto"
    assert check_prompts_per_step(later, devices=4, num_nodes=1) == 16 and later.data.batch_size == 4
    # a layout 16 does not split into is refused with the arithmetic
    with pytest.raises(RecipeError, match=r"prompts_per_step=16 does not split into 3 devices x 2 nodes"):
        check_prompts_per_step(composed("+experiment=paper_7b", "model.init_from=x", "trainer.devices=3"))
    with pytest.raises(RecipeError, match="data.batch_size=auto needs algorithm.prompts_per_step"):
        check_prompts_per_step(composed("data.batch_size=auto"))


# -- the run's real length -----------------------------------------------------------------------------
def fake_trainer(max_steps, max_epochs, batches):
    return SimpleNamespace(
        max_steps=max_steps, max_epochs=max_epochs, train_dataloader=object(), num_training_batches=batches
    )


def test_planned_optimizer_steps_is_the_stopping_rule():
    assert planned_optimizer_steps(fake_trainer(-1, 1, 2250)) == 2250  # one epoch, one batch per step
    assert planned_optimizer_steps(fake_trainer(-1, 2, 11), accumulate=2) == 11  # 22 batches / 2
    assert planned_optimizer_steps(fake_trainer(1200, 1, 2250)) == 1200  # max_steps comes first
    assert planned_optimizer_steps(fake_trainer(1200, 3, 500), accumulate=2) == 750  # the epochs do
    assert planned_optimizer_steps(fake_trainer(100, -1, 7)) == 100  # no epoch limit
    assert planned_optimizer_steps(fake_trainer(-1, -1, 7)) is None  # no end at all
    assert planned_optimizer_steps(None) is None


def test_lambda_fraction_of_the_run():
    frac = OmegaConf.create({"name": "linear", "start": 0.5, "end": 0.0, "steps": 600, "fraction": 0.25})
    assert [lambda_at(s, frac, 40) for s in (0, 5, 10, 20)] == pytest.approx([0.5, 0.25, 0.0, 0.0])
    with pytest.raises(ValueError, match="schedule.fraction=0.25 needs the run's length"):
        lambda_at(3, frac, None)
    with pytest.raises(ValueError, match=r"schedule.fraction must be in \(0, 1\]"):
        lambda_at(0, OmegaConf.merge(frac, {"fraction": 1.5}), 40)
    step = OmegaConf.create({"name": "step", "start": 0.5, "end": 0.1, "steps": 3, "fraction": 0.5})
    assert [lambda_at(s, step, 10) for s in (4, 5)] == [0.5, 0.1]
    # the callback resolves the fraction against the trainer's real length once, on the first batch
    cb, module = LambdaSchedule(frac), SimpleNamespace(accumulate_grad_batches=2)
    trainer = fake_trainer(-1, 1, 80)  # 80 batches / accumulation 2 = 40 optimizer steps
    for step, expected in ((0, 0.5), (5, 0.25), (10, 0.0)):
        trainer.global_step = step
        cb.on_train_batch_start(trainer, module, None, 0)
        assert module.lam == pytest.approx(expected)
    assert cb.total_steps == 40 and not module.teacher_active


def test_an_epoch_run_anneals_sigma_and_lambda_over_its_real_steps(cache_dir, tmp_path):
    """max_epochs=1, max_steps=-1, batch 2 x accumulation 2: the run takes records // 2 // 2 optimizer steps
    (records as logged after filtering), `progress` (Eq. 12's p) reaches 1 at its last step, and a
    schedule.fraction of 0.5 anneals lambda over half of them."""
    from visd_exp.train import train

    cfg = compose_train(
        fast("trainer.max_steps", "model.warm_start", "callbacks.model_checkpoint")
        + shared_paths(cache_dir, tmp_path)
        + [
            f"paths.output_dir={tmp_path}",
            "logger=csv",
            "model.warm_start=null",
            "trainer.max_steps=-1",
            "trainer.max_epochs=1",
            "data.tasks=[temporal_grounding]",
            "data.batch_size=2",
            "optim.accumulate_grad_batches=2",
            "algorithm.max_completion_length=16",
            "schedule.fraction=0.5",
            "callbacks.model_checkpoint=null",
            "dumps.credit_every_n_steps=0",
            "save_hf_model=false",
        ]
    )
    train(cfg)
    setup = next(r for r in read_all_metrics(tmp_path) if r.get("data/train_records"))
    batches = int(float(setup["data/train_records"])) // 2  # drop_last batches of 2 in the epoch
    total = batches // 2  # optimizer steps: two batches each
    assert total >= 2
    rows = read_metrics(tmp_path)  # one row per batch: row i is in optimizer step i // 2
    assert len(rows) == batches  # the epoch, not trainer.max_steps, ended the run
    assert [float(r["progress"]) for r in rows] == pytest.approx(
        [min(1.0, (i // 2 + 1) / total) for i in range(batches)]
    )
    assert float(rows[2 * total - 1]["progress"]) == 1.0  # sigma fully annealed at the last step
    half = round(0.5 * total)
    assert [float(r["lambda"]) for r in rows] == pytest.approx(
        [0.5 * max(0.0, 1 - (i // 2) / half) for i in range(batches)]
    )
