"""The SFT stage as a user runs it: targets, the loss mask, the data checks, a command-line SFT run that
RL then starts from (model.init_from), and the tiny model's warm start built through the same module."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT, write_square_video
from visd_exp.sft import SFTDataModule, lr_factor, sft_loss, sft_target

TARGET = (
    "<think><obj>red square</obj><box>[8,8,32,32]</box>at<t>3.0</t>s The red square is visible "
    "from 2.0 s to 5.0 s.</think>\n<answer>From <t>2.0</t>s to <t>5.0</t>s</answer>"
)
DATA_CFG = {
    "fps": 1.0,
    "min_frames": 4,
    "max_frames": 16,
    "min_pixels": 3136,
    "max_pixels": 100352,
    "image_max_pixels": 401408,
    "total_pixels": None,
}


def record(video: str, i: int = 0, **extra) -> dict:
    base = {
        "id": f"r{i}",
        "task": "temporal_grounding",
        "source": "test",
        "video_path": video,
        "question": "When is the red square visible?" + " Look closely." * i,
        "answer": "From <t>2.0</t>s to <t>5.0</t>s",
        "segment": [2.0, 5.0],
        "key_frames": [{"idx": 12, "time": 3.0}],
        "key_items": {"12": {"red square": [[8, 8, 32, 32]]}},
        "image_size": [56, 56],
        "duration": 8.0,
        "reasoning_process": TARGET,
    }
    return {**base, **extra}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def data_cfg(train_file, **extra):
    files = {
        "train_file": str(train_file),
        "val_file": None,
        "test_file": None,
        "synthetic": None,
        "tasks": None,
    }
    loading = {"seed": 0, "batch_size": 2, "num_workers": 0, "max_prompt_length": 16384}
    return OmegaConf.merge(DATA_CFG, files, loading, extra)


# -- the target -------------------------------------------------------------------------------------
def test_target_boxes_rescaled_from_image_size_to_frame_size():
    text = "<think><obj>car</obj><box>[320,240,640,480]</box>at<t>1.0</t>s</think>\n<answer>A</answer>"
    sample = {"reasoning_process": text, "image_size": [640, 480], "frame_size": [56, 42]}
    assert sft_target(sample) == text.replace("[320,240,640,480]", "[28,21,56,42]")
    # no image_size, or the same size: the text exactly as written (spacing of the box kept)
    spaced = text.replace("[320,240,640,480]", "[320, 240, 640, 480]")
    assert sft_target({"reasoning_process": spaced, "frame_size": [56, 42]}) == spaced
    assert sft_target({"reasoning_process": spaced, "image_size": [56, 42], "frame_size": [56, 42]}) == spaced
    with pytest.raises(ValueError, match="reasoning_process"):
        sft_target({"id": "x", "answer": "A"})  # no silent fallback to the answer


# -- the data module ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return write_square_video(tmp_path_factory.mktemp("sft") / "videos" / "square.mp4")


def test_records_without_a_target_are_dropped_and_counted(tiny, tmp_path, video):
    _, processor = tiny
    rows = [record(str(video), 0), record(str(video), 1, reasoning_process=None), record(str(video), 2)]
    rows[1].pop("reasoning_process")
    dm = SFTDataModule(data_cfg(write_jsonl(tmp_path / "train.jsonl", rows)), processor)
    dm.setup("fit")
    assert dm.stats["data/train_no_target"] == 1 and len(dm.datasets["train"]) == 2
    assert dm.stats["data/train_records"] == 2
    # over-long targets: dropped and counted, never truncated
    dm = SFTDataModule(data_cfg(tmp_path / "train.jsonl"), processor, max_target_length=10)
    with pytest.raises(ValueError, match="max_target_length=10"):
        dm.setup("fit")
    none = write_jsonl(
        tmp_path / "none.jsonl", [{k: v for k, v in rows[0].items() if k != "reasoning_process"}]
    )
    with pytest.raises(ValueError, match=r"none\.jsonl.*reasoning_process"):
        SFTDataModule(data_cfg(none), processor).setup("fit")


# -- the loss -----------------------------------------------------------------------------------------
def test_loss_is_the_token_mean_over_target_tokens_only(tiny, tmp_path, video):
    """Two prompts of different lengths (left padding) and targets of different lengths (right padding):
    the loss equals -log p averaged over each target's tokens and end token, from unpadded single-row
    forwards; the prompt positions carry no loss."""
    model, processor = tiny
    tok = processor.tokenizer
    rows = [record(str(video), 0), record(str(video), 3, reasoning_process="<answer>From 2 to 5</answer>")]
    dm = SFTDataModule(data_cfg(write_jsonl(tmp_path / "train.jsonl", rows)), processor)
    dm.setup("fit")
    items = [dm.datasets["train"][i] for i in range(2)]
    from visd_exp.data.datamodule import collate_prompts

    batch = collate_prompts(items, tok.pad_token_id)
    assert batch["attention_mask"][0].eq(0).any(), "the first prompt must be left-padded"
    with torch.no_grad():
        out = sft_loss(model, processor, batch)
        nll, count = 0.0, 0
        for item in items:
            target = tok(item["sample"]["reasoning_process"], add_special_tokens=False)["input_ids"]
            target = torch.tensor(target + [tok.eos_token_id])
            prompt = item["input_ids"][0]
            ids = torch.cat([prompt, target])[None]
            logits = model(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                mm_token_type_ids=torch.cat([item["mm_token_type_ids"][0], torch.zeros_like(target)])[None],
                pixel_values=item["pixel_values"],
                image_grid_thw=item["image_grid_thw"],
                use_cache=False,
            ).logits[0]
            logp = torch.log_softmax(logits.float(), dim=-1)
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(target) - 1)  # predict the target
            nll -= logp[positions, target].sum().item()
            count += len(target)
    assert out.target_tokens.tolist() == [
        len(tok(r["reasoning_process"], add_special_tokens=False)["input_ids"]) + 1 for r in rows
    ]
    assert out.loss.item() == pytest.approx(nll / count, abs=1e-4)


# -- the stage from the command line, then RL from its hf_model ----------------------------------------
class RecordInitialWeights(L.Callback):
    """Saves the student's state dict when training starts (used by the RL subprocess below)."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        torch.save({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}, self.path)


def run_train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [sys.executable, "-m", "visd_exp.train", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def common(cache_dir: Path, log_dir: Path, train_file: Path) -> list[str]:
    return [
        f"paths.cache_dir={cache_dir}",
        f"paths.data_dir={cache_dir / 'data'}",
        f"paths.log_dir={log_dir}",
        "data=jsonl",
        f"data.train_file={train_file}",
        "data.fps=1.0",
        "data.batch_size=2",
        "logger=csv",
        "callbacks.progress_bar=null",
        "dumps.credit_every_n_steps=0",
    ]


def the_run(log_dir: Path, task: str) -> Path:
    (run,) = list((log_dir / task / "runs").iterdir())
    return run


def metric_rows(run: Path) -> list[dict]:
    with open(run / "csv" / "version_0" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_sft_run_from_the_command_line_then_rl_from_its_hf_model(cache_dir, tmp_path, video):
    from transformers import Qwen2_5_VLForConditionalGeneration

    rows = [record(str(video), i) for i in range(4)] + [{**record(str(video), 9), "reasoning_process": None}]
    train_file = write_jsonl(tmp_path / "sft.jsonl", rows)
    run_train("+experiment=sft", "trainer.max_steps=3", *common(cache_dir, tmp_path / "logs", train_file))
    sft = the_run(tmp_path / "logs", "sft")
    assert (sft / "checkpoints" / "last.ckpt").is_file()
    assert (sft / "hf_model" / "model.safetensors").is_file() and (
        sft / "hf_model" / "tokenizer_config.json"
    ).is_file()
    metrics = metric_rows(sft)
    steps = [r for r in metrics if r.get("train/loss")]
    assert [int(r["step"]) for r in steps] == [0, 1, 2]
    for key in ("loss", "lr", "grad_norm", "sft/target_tokens", "sft/token_accuracy"):
        assert all(r[key] != "" for r in steps), key
    # logged after each optimizer step: warm-up over 10 steps times a cosine over the run's 3 steps
    expected_lr = [2e-3 * lr_factor(s + 1, 10, 3, "cosine", 0.1) for s in range(3)]
    assert [float(r["lr"]) for r in steps] == pytest.approx(expected_lr, rel=1e-5)
    setup = [r for r in metrics if r.get("data/train_no_target")]
    assert (
        setup
        and float(setup[0]["data/train_no_target"]) == 1.0
        and float(setup[0]["data/train_records"]) == 4
    )
    checkpoint = torch.load(sft / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 3 and checkpoint["visd_state"]["batches_seen"] == 3

    # resumable like any run: ckpt_path=last finds the newest SFT run's last.ckpt and goes on from step 3
    resumed = tmp_path / "resumed"
    run_train(
        "+experiment=sft",
        "trainer.max_steps=4",
        "ckpt_path=last",
        f"hydra.run.dir={resumed}",
        *common(cache_dir, tmp_path / "logs", train_file),
    )
    assert [int(r["step"]) for r in metric_rows(resumed) if r.get("train/loss")] == [3]
    checkpoint = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 4 and checkpoint["visd_state"]["batches_seen"] == 4

    # RL starts from the SFT weights: the student at on_train_start equals <sft>/hf_model
    snapshot = tmp_path / "rl_init.pt"
    run_train(
        "+experiment=grpo",
        f"model.init_from={sft / 'hf_model'}",
        "trainer.max_steps=2",
        "algorithm.num_generations=2",
        "algorithm.max_completion_length=12",
        f"+callbacks.init_weights._target_={__name__}.RecordInitialWeights",
        f"+callbacks.init_weights.path={snapshot}",
        *common(cache_dir, tmp_path / "logs", train_file),
    )
    rl = the_run(tmp_path / "logs", "train")
    assert (rl / "hf_model" / "model.safetensors").is_file()
    start = torch.load(snapshot)
    expected = Qwen2_5_VLForConditionalGeneration.from_pretrained(sft / "hf_model").state_dict()
    assert start.keys() == expected.keys()
    assert all(torch.equal(start[k], expected[k]) for k in expected)
    # and those are not the random tiny model's weights: SFT changed them
    from visd_exp.models.loading import resolve_model_path

    cfg = OmegaConf.load(PROJECT_ROOT / "conf/model/tiny.yaml")
    cfg.cache_dir, cfg.warm_start = str(cache_dir / "models"), None
    base = Qwen2_5_VLForConditionalGeneration.from_pretrained(resolve_model_path(cfg)).state_dict()
    assert sum(not torch.equal(base[k], expected[k]) for k in expected) > len(expected) // 2


def test_sft_experiment_composes():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["+experiment=sft"])
    assert cfg.algorithm.name == "sft" and "sft" in cfg.tags and cfg.task_name == "sft"
    assert cfg.teacher.name == "none" and cfg.judge.name == "none"
    assert cfg.model.warm_start is None  # an SFT run starts from the random tiny model (or model.init_from)
    assert cfg.callbacks.validation.max_completion_length == cfg.algorithm.max_completion_length


# -- the tiny model's warm start: the same SFT module, fitted by a Lightning Trainer -------------------
def test_warm_start_builds_through_the_sft_module(cache_dir):
    import random

    from safetensors.torch import load_file

    from visd_exp.models import warm_start
    from visd_exp.models.loading import resolve_model_path

    cfg = OmegaConf.load(PROJECT_ROOT / "conf/model/tiny.yaml")
    cfg.cache_dir = str(cache_dir / "models")
    cfg.warm_start.merge_with({"steps": 3, "batch_size": 2, "data": {"num_videos": 4}})
    cfg.warm_start.data_dir = str(cache_dir / "data" / "synthetic")
    cfg.warm_start.shipped_dir = None  # build it
    data = OmegaConf.create({**DATA_CFG, "max_prompt_length": 16384})
    base_dir = Path(resolve_model_path(OmegaConf.merge(cfg, {"warm_start": None})))  # the random tiny model
    torch.manual_seed(123)
    random.seed(123)
    before = torch.get_rng_state(), random.getstate()
    path = Path(resolve_model_path(cfg, data))
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]  # RNG untouched
    info = json.loads((path / "warm_start.json").read_text())
    assert info["version"] == warm_start.WARM_START_VERSION == 2 and len(info["losses"]) == 3
    assert info["sft"]["algorithm"]["name"] == "sft"
    assert path.name.endswith(warm_start.warm_start_key(base_dir, cfg.warm_start, data))
    # the version is part of the key: an old (version 1) cache is never reused
    old = warm_start.WARM_START_VERSION
    try:
        warm_start.WARM_START_VERSION = 1
        assert warm_start.warm_start_key(base_dir, cfg.warm_start, data) not in path.name
    finally:
        warm_start.WARM_START_VERSION = old
    base = load_file(base_dir / "model.safetensors")
    trained = load_file(path / "model.safetensors")
    assert sum(not torch.equal(base[k], trained[k]) for k in base) > len(base) // 2
    assert Path(resolve_model_path(cfg, data)) == path  # cached: reused, not rebuilt


def test_a_shipped_start_is_copied_not_built_and_keys_do_not_depend_on_placement(
    cache_dir, tmp_path, monkeypatch
):
    from visd_exp.models import warm_start
    from visd_exp.models.loading import resolve_model_path

    cfg = OmegaConf.load(PROJECT_ROOT / "conf/model/tiny.yaml")
    cfg.cache_dir = str(cache_dir / "models")
    cfg.warm_start.merge_with({"steps": 3, "batch_size": 2, "data": {"num_videos": 4}})
    cfg.warm_start.data_dir = str(cache_dir / "data" / "synthetic")
    cfg.warm_start.shipped_dir = None
    data = OmegaConf.create({**DATA_CFG, "max_prompt_length": 16384})
    built = Path(resolve_model_path(cfg, data))  # the test above's build, cached (or built here)
    base_dir = Path(resolve_model_path(OmegaConf.merge(cfg, {"warm_start": None})))
    key = warm_start.warm_start_key(base_dir, cfg.warm_start, data)
    moved = OmegaConf.merge(
        cfg.warm_start, {"data_dir": "/elsewhere/data", "shipped_dir": "/elsewhere/assets"}
    )
    assert warm_start.warm_start_key(base_dir, moved, data) == key  # the same in every clone
    assert warm_start.warm_start_key(base_dir, OmegaConf.merge(cfg.warm_start, {"steps": 4}), data) != key

    root = Path(cfg.warm_start.data_dir).parents[1]  # a "project root" that holds the data directory
    shipped = warm_start.ship(built, tmp_path / "assets", root)
    record = (shipped / "warm_start.json").read_text()
    assert str(root) + "/" not in record and "data/synthetic/easy-n4-s1000/train.jsonl" in record

    def no_build(*args, **kwargs):
        raise AssertionError("built although a shipped copy exists")

    monkeypatch.setattr(warm_start, "build_warm_start", no_build)
    fresh = OmegaConf.merge(
        cfg,
        {"cache_dir": str(tmp_path / "fresh_cache"), "warm_start": {"shipped_dir": str(tmp_path / "assets")}},
    )
    copied = Path(resolve_model_path(fresh, data))
    assert copied.parent == tmp_path / "fresh_cache" and copied.name == built.name
    assert (copied / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()
    elsewhere = OmegaConf.merge(fresh, {"cache_dir": str(tmp_path / "other"), "warm_start": {"steps": 4}})
    with pytest.raises(AssertionError, match="built although"):  # another key: no shipped copy, so a build
        resolve_model_path(elsewhere, data)


def test_the_default_warm_start_is_shipped_with_the_defaults_settings():
    """Changing the default's warm-start or frame settings without shipping its start fails here (ship it:
    python -m visd_exp.models.warm_start), so a fresh clone never trains a start nobody measured."""
    from visd_exp.models import warm_start
    from visd_exp.models.tiny import TinySpec

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train")
    base = f"tiny-qwen2_5_vl-{TinySpec(**cfg.model.tiny).key()}"
    key = warm_start.warm_start_key(Path(base), cfg.model.warm_start, cfg.data)
    shipped = Path(cfg.model.warm_start.shipped_dir) / f"{base}-sft-{key}"
    assert shipped == PROJECT_ROOT / "assets" / "warm_starts" / shipped.name
    record = json.loads((shipped / "warm_start.json").read_text())
    assert record["version"] == warm_start.WARM_START_VERSION
    assert len(record["losses"]) == cfg.model.warm_start.steps
    assert record["sft"]["optim"]["lr"] == cfg.model.warm_start.lr
    assert record["config"]["batch_size"] == cfg.model.warm_start.batch_size
    assert record["config"]["synthetic"]["num_videos"] == cfg.model.warm_start.data.num_videos
    assert all(record["config"][k] == cfg.data[k] for k in warm_start.FRAME_KEYS)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in shipped.iterdir()}
