"""Every config group option and every experiment composes (lightning-hydra-template style)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"
EXPERIMENTS = [
    "ema_topk", "no_feedback", "current_topk", "sync10_topk", "ema_sampled", "grpo",
    "tgrpo", "ffr", "tgrpo_visd", "ffr_visd",
]  # fmt: skip


def composed(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", [*EXPERIMENTS, "sft"])
def test_experiments_compose_and_only_compose(experiment):
    cfg = composed(f"+experiment={experiment}")
    assert experiment in cfg.tags
    text = (CONF / "experiment" / f"{experiment}.yaml").read_text()
    assert "_target_" not in text  # experiments choose options; they define nothing new


def test_experiment_settings():
    assert (
        composed("+experiment=grpo").teacher.name == "none"
        and composed("+experiment=grpo").schedule.value == 0
    )
    assert composed("+experiment=no_feedback").judge.name == "none"
    assert composed("+experiment=sync10_topk").teacher.every_n_steps == 10
    assert composed("+experiment=ema_sampled").credit.name == "sampled_token"
    main = composed("+experiment=ema_topk")
    assert (main.teacher.name, main.teacher.rate, main.credit.k, main.credit.eps_w) == ("ema", 0.01, 16, 0.2)
    assert (main.schedule.start, main.schedule.end, main.schedule.steps) == (0.5, 0.0, 600)


@pytest.mark.parametrize(
    "group",
    [
        "data",
        "model",
        "algorithm",
        "reward",
        "judge",
        "teacher",
        "credit",
        "schedule",
        "trainer",
        "logger",
        "callbacks",
        "debug",
    ],
)
def test_every_group_option_composes(group):
    for option in options(group):
        cfg = composed(f"{group}={option}")
        if group != "debug":  # debug options are global overrides, not a node
            assert cfg[group] is not None


def test_default_is_the_tiny_offline_main_setting():
    cfg = composed()
    assert cfg.model.tiny is not None and cfg.model.pretrained_model_name_or_path is None
    assert cfg.data.synthetic.preset == "easy" and cfg.judge.name == "rule" and cfg.teacher.name == "ema"
    assert "experiment" not in cfg


def test_real_checkpoints_use_the_same_loading_fields():
    for name in ("qwen2_5_vl_3b", "qwen2_5_vl_7b"):
        cfg = composed(f"model={name}")
        assert cfg.model.tiny is None and "Qwen2.5-VL" in cfg.model.pretrained_model_name_or_path
        assert cfg.model.dtype == "bfloat16" and cfg.model.attn_implementation == "flash_attention_2"


def test_deepspeed_strategy_constructs_on_cpu():
    pytest.importorskip("deepspeed", reason="the deepspeed extra is not installed")
    import hydra
    from lightning.pytorch.strategies import DeepSpeedStrategy

    for name, stage in (("deepspeed", 3), ("deepspeed_cpu", 3), ("deepspeed", 2)):
        cfg = composed(f"trainer={name}", f"trainer.strategy.stage={stage}")
        strategy = hydra.utils.instantiate(cfg.trainer.strategy)
        assert isinstance(strategy, DeepSpeedStrategy)
        assert strategy.config["zero_optimization"]["stage"] == stage
        # the clip lives in the DeepSpeed config (Lightning refuses gradient_clip_val in manual mode)
        assert strategy.config["gradient_clipping"] == cfg.optim.max_grad_norm == 5.0


def test_advantage_std_defaults_to_open_o3_video():
    """Eq. 14's sigma_G: torch's unbiased std and eps 1e-4 by default (Open-o3-Video's trainer)."""
    import torch

    from visd_exp.objectives import check_advantage_config, group_advantages

    algo = composed().algorithm
    assert (algo.std, algo.adv_eps) == ("unbiased", 1e-4)
    for experiment in EXPERIMENTS:
        a = composed(f"+experiment={experiment}").algorithm
        check_advantage_config(a.num_generations, a.std, a.adv_eps)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    for std, sigma in (("unbiased", (1 / 3) ** 0.5), ("population", 0.5)):
        a = composed(f"algorithm.std={std}", "algorithm.adv_eps=0.0").algorithm
        adv = group_advantages(rewards, 4, eps=a.adv_eps, std=a.std)
        torch.testing.assert_close(adv, (rewards - 0.5) / sigma)
    bad = composed("algorithm.std=sample").algorithm
    with pytest.raises(ValueError, match="algorithm.std"):
        check_advantage_config(bad.num_generations, bad.std, bad.adv_eps)


def test_paper_7b_is_table_8_as_written(tmp_path):
    """+experiment=paper_7b with the tiny model swapped in composes on CPU and holds every Table 8 value."""
    from visd_exp.utils.recipe import check_prompts_per_step, check_required_values

    cfg = composed("+experiment=paper_7b", "model=tiny", f"model.init_from={tmp_path}", "data.train_file=x")
    assert cfg.model.tiny is not None and cfg.model.init_from == str(tmp_path)  # the tiny model, swapped in
    assert "paper_7b" in cfg.tags
    algo, optim, trainer = cfg.algorithm, cfg.optim, cfg.trainer
    assert (algo.num_generations, algo.max_completion_length, cfg.data.max_prompt_length) == (4, 768, 16384)
    assert (optim.lr, optim.weight_decay, optim.max_grad_norm) == (1e-6, 0.01, 5.0)
    assert trainer.precision == "bf16-mixed" and cfg.model.dtype == "bfloat16"
    assert (cfg.teacher.name, cfg.teacher.rate) == ("ema", 0.01)
    assert (cfg.credit.name, cfg.credit.k, cfg.credit.eps_w) == ("topk", 16, 0.2)
    assert (cfg.schedule.name, cfg.schedule.start, cfg.schedule.end, cfg.schedule.steps) == (
        "linear",
        0.5,
        0.0,
        600,
    )
    assert (trainer.max_epochs, trainer.max_steps) == (1, -1)  # one epoch (the step-1,200 student of it)
    # 16 prompts per optimizer step = 8 devices x 2 nodes x batch 1 x accumulation 1, checked at start-up
    # (data.batch_size: auto, resolved there: tests/test_presets.py)
    assert algo.prompts_per_step == 16 and check_prompts_per_step(cfg) == 16
    assert (trainer.devices, trainer.num_nodes, cfg.data.batch_size, optim.accumulate_grad_batches) == (
        8,
        2,
        1,
        1,
    )
    # ZeRO-3 and FlashAttention-2
    assert "DeepSpeed" in trainer.strategy._target_ and trainer.strategy.stage == 3
    assert cfg.model.attn_implementation == "flash_attention_2" and cfg.model.gradient_checkpointing
    # frames as Open-o3-Video samples them: 2 fps, 4-16 frames, 128x28x28 per frame, 401,408 per image
    data = cfg.data
    assert (data.fps, data.min_frames, data.max_frames) == (2.0, 4, 16)
    assert (data.max_pixels, data.image_max_pixels, data.total_pixels) == (128 * 28 * 28, 401408, None)
    # no KL and no distillation loss: the config has no such term to switch on
    keys = [k.lower() for group in ("algorithm", "credit", "optim", "teacher") for k in cfg[group]]
    assert not [k for k in keys if "kl" in k or "distill" in k or k in ("beta", "ref_model")]
    check_required_values(cfg)  # nothing left unset


def test_paper_7b_requires_init_from():
    """Without model.init_from: reading it fails naming the key, and train.py's first check lists it."""
    from omegaconf.errors import InterpolationResolutionError

    from visd_exp.utils.recipe import RecipeError, check_required_values

    cfg = composed("+experiment=paper_7b", "model=tiny", "data.train_file=x")
    with pytest.raises(InterpolationResolutionError, match=r"model.init_from is required .*<run>/hf_model"):
        _ = cfg.model.init_from
    with pytest.raises(RecipeError, match=r"requires model.init_from, not set.*\n  model.init_from=\.\.\.$"):
        check_required_values(cfg)
    # the real-model experiment as shipped needs the SFT checkpoint and the data, both named
    with pytest.raises(RecipeError, match=r"requires data.train_file, model.init_from"):
        check_required_values(composed("+experiment=paper_7b"))


def test_train_stops_before_loading_when_init_from_is_missing(tmp_path):
    from visd_exp.train import train
    from visd_exp.utils.recipe import RecipeError

    cfg = composed("+experiment=paper_7b", "model=tiny", "data.train_file=x", f"paths.output_dir={tmp_path}")
    with pytest.raises(RecipeError, match="model.init_from"):
        train(cfg)
    assert not any(tmp_path.iterdir())  # nothing written, nothing loaded
    from visd_exp.models.loading import InitFromError

    wrong = tmp_path / "sft" / "hf_model"
    cfg = composed(
        "+experiment=paper_7b",
        "model=tiny",
        f"model.init_from={wrong}",
        "data.train_file=x",
        f"paths.output_dir={tmp_path}",
    )
    with pytest.raises(InitFromError, match=rf"model.init_from={wrong}: no such directory"):
        train(cfg)
    assert not any(tmp_path.iterdir())


def test_prompts_per_step_mismatch_fails_with_the_arithmetic():
    from visd_exp.utils.recipe import RecipeError, check_prompts_per_step

    cfg = composed(
        "+experiment=paper_7b", "model=tiny", "model.init_from=x", "trainer.num_nodes=1", "data.batch_size=1"
    )
    expected = (
        r"algorithm.prompts_per_step=16 but this run takes 8 devices x 1 nodes x data.batch_size 1 x "
        r"optim.accumulate_grad_batches 1 = 8 prompts"
    )
    with pytest.raises(RecipeError, match=expected):
        check_prompts_per_step(cfg)
    fixed = composed(
        "+experiment=paper_7b",
        "model=tiny",
        "model.init_from=x",
        "trainer.num_nodes=1",
        "data.batch_size=1",
        "optim.accumulate_grad_batches=2",
    )
    assert check_prompts_per_step(fixed) == 16
    with pytest.raises(
        RecipeError, match="4 devices x 4 nodes x data.batch_size 1 x optim.accumulate_grad_batches 2 = 32"
    ):
        check_prompts_per_step(fixed, devices=4, num_nodes=4)
    # devices -1 / auto: unknown until the trainer resolves it (train.py checks again then)
    assert (
        check_prompts_per_step(composed("+experiment=paper_7b", "trainer.devices=-1", "model.init_from=x"))
        is None
    )
    # a config that states nothing is never checked
    assert composed().algorithm.prompts_per_step is None and check_prompts_per_step(composed()) is None
