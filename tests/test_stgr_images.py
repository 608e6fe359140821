"""STGR's image records (`visual QA` on gqa, `image_path`) read and trained on as one-image prompts.

The fixture is an STGR file in the published shape (a JSON array; shared/notes/formats.md) holding one
gqa image record and one video record, over a jpg and an mp4 written here."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import PROJECT_ROOT, write_square_video
from published_fixtures import write_image
from test_train_e2e import fast, run_module, shared_paths

IMAGE_W, IMAGE_H = 96, 64  # W != H: an x/y mix-up in the box rescaling shows
BOX = [16, 16, 48, 48]  # the reference box, pixels of image_size
MCQ = "Which way does the square move?\nA. left\nB. right"


def stgr_records(with_reasoning: bool) -> list[dict]:
    image = {
        "id": 1,
        "source": "gqa",
        "task": "visual QA",
        "image_path": "gqa/1.jpg",
        "question": "Where is the red rectangle?",
        "answer": f"<obj>rectangle</obj><box>[{','.join(map(str, BOX))}]</box>",
        "image_size": [IMAGE_W, IMAGE_H],
    }
    video = {
        "id": 2,
        "source": "videor1_mc",
        "task": "General video QA MCQ",
        "video_path": "videos/square.mp4",
        "question": MCQ,
        "answer": "B",
    }
    if with_reasoning:  # STGR-SFT: bare text; the image record's boxes are pixels of image_size
        image["reasoning_process"] = (
            f"The <obj>rectangle</obj><box>[{','.join(map(str, BOX))}]</box> is left."
        )
        video["reasoning_process"] = "The square goes from left to right, so B."
    return [image, video]


def write_stgr(root: Path, with_reasoning: bool = False) -> Path:
    write_image(root / "gqa" / "1.jpg", IMAGE_W, IMAGE_H)  # a red box at [12, 10, 48, 32]
    if not (root / "videos" / "square.mp4").exists():
        write_square_video(root / "videos" / "square.mp4")
    path = root / ("STGR-SFT.json" if with_reasoning else "STGR-RL.json")
    path.write_text("[\n" + ",\n".join(json.dumps(r) for r in stgr_records(with_reasoning)) + "\n]\n")
    return path


def data_cfg(train_file: Path):
    cfg = OmegaConf.load(PROJECT_ROOT / "conf/data/synthetic_easy.yaml")
    cfg.synthetic = None
    cfg.train_file, cfg.val_file, cfg.test_file = str(train_file), None, None
    cfg.seed = 0
    return cfg


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny):
    """The train split of the mixed STGR-SFT file, through the data module training uses."""
    from visd_exp.data.datamodule import VideoQADataModule

    _, processor = tiny
    module = VideoQADataModule(data_cfg(write_stgr(tmp_path_factory.mktemp("stgr"), True)), processor)
    module.setup("fit")
    return module


def test_an_stgr_file_with_an_image_record_reads_both_records(tmp_path):
    from visd_exp.data.validate import validate_file

    path = write_stgr(tmp_path)
    report = validate_file(path)
    assert report.format == "stgr" and report.ok and not report.unused  # nothing skipped
    image, video = report.records
    assert image["task"] == "visual_qa" and image["image_path"] == str(tmp_path / "gqa" / "1.jpg")
    assert image["image_size"] == [IMAGE_W, IMAGE_H] and "video_path" not in image
    assert video["task"] == "multiple_choice" and video["video_path"].endswith("square.mp4")
    # the image is read at validation: a missing one is a problem naming the field and the file
    (tmp_path / "gqa" / "1.jpg").unlink()
    missing = validate_file(path)
    (problem,) = missing.problems
    assert (problem.line, problem.field) == (2, "image_path") and "1.jpg" in problem.message
    # no image_size: the image's own size is read (the answer's box is in its pixels)
    write_image(tmp_path / "gqa" / "1.jpg", 120, 80)
    records = json.loads(path.read_text())
    del records[0]["image_size"]
    path.write_text(json.dumps(records))
    assert validate_file(path).records[0]["image_size"] == [120, 80]


def test_an_image_record_is_a_prompt_with_one_image(dataset, tiny):
    _, processor = tiny
    records = [r["task"] for r in dataset.datasets["train"].records]
    image_item = dataset.datasets["train"][records.index("visual_qa")]
    video_item = dataset.datasets["train"][records.index("multiple_choice")]
    # one frame at time 0 of a zero-length "video", resized to multiples of 28 within the image bounds
    frames, sample = image_item["frames"], image_item["sample"]
    assert frames.shape[:2] == (1, 3) and frames.shape[-2] % 28 == 0 and frames.shape[-1] % 28 == 0
    width, height = sample["frame_size"]
    assert (frames.shape[-1], frames.shape[-2]) == (width, height)
    assert 3136 <= width * height <= 200704 and abs(width / height - IMAGE_W / IMAGE_H) < 0.25
    assert (sample["frame_times"], sample["video_duration"]) == ([0.0], 0.0)
    # the pixels are the file's: red inside the drawn box ([12, 10, 48, 32] of 96 x 64), dark outside
    sx, sy = width / IMAGE_W, height / IMAGE_H
    red = frames[0, :, int(20 * sy), int(30 * sx)]
    dark = frames[0, :, int(56 * sy), int(84 * sx)]
    assert red[0] > 150 and red[1] < 100 and dark.max() < 60
    # the prompt: one image, no timestamps, the image system prompt; the video prompt keeps its frames
    text = image_item["text"]
    assert text.count("<|vision_start|>") == 1 and "Frame 1 at" not in text and "seconds long" not in text
    assert "about an image" in text and image_item["image_grid_thw"].shape[0] == 1
    assert video_item["text"].count("<|vision_start|>") == len(video_item["sample"]["frame_times"]) > 1
    # the processor expanded the one image into its vision tokens
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    grid = image_item["image_grid_thw"][0]
    assert int((image_item["input_ids"] == pad).sum()) == int(grid.prod()) // 4


def test_a_correct_box_scores_what_the_visual_qa_spec_gives(dataset):
    from visd_exp.rewards import score, task_spec
    from visd_exp.rewards.config import RewardConfig
    from visd_exp.sft import sft_target

    records = [r["task"] for r in dataset.datasets["train"].records]
    sample = dataset.datasets["train"][records.index("visual_qa")]["sample"]
    sx, sy = sample["frame_size"][0] / IMAGE_W, sample["frame_size"][1] / IMAGE_H
    seen = [round(BOX[0] * sx), round(BOX[1] * sy), round(BOX[2] * sx), round(BOX[3] * sy)]
    assert seen != BOX  # the frame the model sees is not the original image's size

    def completion(box):
        tag = f"<obj>rectangle</obj><box>[{','.join(map(str, box))}]</box>"
        return f"<think>The {tag} is on the left.</think>\n<answer>{tag}</answer>"

    got = score(completion(seen), sample)
    spec = task_spec("visual_qa")
    weights = RewardConfig.from_cfg(None).weights
    assert {k for k, v in got.items() if k != "total" and v is not None} == set(spec.components)
    assert all(got[k] == pytest.approx(1.0, abs=0.02) for k in spec.components)  # rounding to pixels
    assert got["total"] == pytest.approx(sum(weights[k] for k in spec.components), abs=0.05)
    # the box in the original image's pixels is not where the model saw the object
    assert score(completion(BOX), sample)["ans_spa"] < 0.9
    # the SFT target's boxes are rescaled the same way
    assert f"<box>[{','.join(map(str, seen))}]</box>" in sft_target(sample)


def metric_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_sft_then_rl_train_on_a_file_mixing_an_image_and_a_video(cache_dir, tmp_path):
    """Two SFT steps (one epoch each, lr decaying linearly over the run's 2 real steps), then two RL
    steps from the SFT model on the same records: the image record's box reward is in the training rows."""
    sft_file = write_stgr(tmp_path / "data", with_reasoning=True)
    rl_file = write_stgr(tmp_path / "data", with_reasoning=False)
    common = [
        "data=jsonl",
        "data.batch_size=2",  # both records in every batch: a one-image prompt beside a video prompt
        "logger=csv",
        "dumps.credit_every_n_steps=0",
        *fast("model.warm_start", "data.synthetic", "trainer.max_steps"),
        *shared_paths(cache_dir, tmp_path),
    ]
    sft_dir, rl_dir = tmp_path / "sft", tmp_path / "rl"
    run_module(
        "train", "+experiment=sft", f"data.train_file={sft_file}", "trainer.max_steps=-1",
        "trainer.max_epochs=2", "algorithm.lr_decay=linear", "algorithm.min_lr_ratio=0.0",
        "optim.warmup_steps=0", *common, f"paths.output_dir={sft_dir}",
    )  # fmt: skip
    rows = metric_rows(sft_dir)
    setup = next(r for r in rows if r.get("data/train_records"))
    assert float(setup["data/train_records"]) == 2 and float(setup["data/train_unused"]) == 0
    steps = [r for r in rows if r.get("train/loss")]
    assert len(steps) == 2 and all(math.isfinite(float(r["loss"])) for r in steps)
    # lr after each step: 2e-3 x (1 - step / 2), the decay spanning the epochs' 2 optimizer steps
    assert [float(r["lr"]) for r in steps] == pytest.approx([1e-3, 0.0], rel=1e-6, abs=1e-12)

    run_module(
        "train", f"data.train_file={rl_file}", f"model.init_from={sft_dir / 'hf_model'}",
        "trainer.max_steps=2", "algorithm.num_generations=2", "algorithm.max_completion_length=24",
        *common, f"paths.output_dir={rl_dir}",
    )  # fmt: skip
    rows = metric_rows(rl_dir)
    setup = next(r for r in rows if r.get("data/train_records"))
    assert float(setup["data/train_records"]) == 2 and float(setup["data/train_unused"]) == 0
    steps = [r for r in rows if r.get("reward")]
    assert len(steps) == 2 and all(math.isfinite(float(r["loss"])) for r in steps)
    # ans_spa is the image record's box reward (the video MCQ has none): scored on every step
    assert all(math.isfinite(float(r["rewards/ans_spa/mean"])) for r in steps)
    assert all(float(r["rewards/ans_spa/masked_frac"]) == pytest.approx(0.5) for r in steps)
    assert all(float(r["data/skipped_videos"]) == 0 for r in steps)
