"""Every config group option and every experiment composes (lightning-hydra-template style)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"
EXPERIMENTS = ["ema_topk", "no_feedback", "current_topk", "sync10_topk", "ema_sampled", "grpo"]


def composed(*overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
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

    cfg = composed("trainer=deepspeed")
    strategy = hydra.utils.instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ == "DeepSpeedStrategy"


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
