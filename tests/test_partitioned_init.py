"""The ZeRO-3 start-up path (models/partitioned.py) on one process: the same model as `from_pretrained`.

Inside `deepspeed.zero.Init` the same functions build partitioned parameters; the 2-process run in
tests/test_deepspeed_cpu.py exercises that (its teacher starts equal to its student, its EMA checks).
Here: the original checkpoint layout maps onto transformers 5's module tree, the file-by-file load gives
exactly `from_pretrained`'s tensors (parameters and buffers, tied embeddings tied), and a file that does
not fit the model fails naming the file and the tensor.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from conftest import PROJECT_ROOT
from visd_exp.models.loading import resolve_model_path
from visd_exp.models.partitioned import empty_model, load_weights, module_name, wants_partitioned_init


@pytest.fixture(scope="module")
def tiny_dir(cache_dir):
    cfg = OmegaConf.load(PROJECT_ROOT / "conf/model/tiny.yaml")
    cfg.cache_dir, cfg.warm_start = str(cache_dir / "models"), None
    return resolve_model_path(cfg)


def test_original_layout_maps_onto_the_module_tree():
    names = {
        "model.language_model.layers.0.mlp.up_proj.weight",
        "model.visual.blocks.0.norm1.weight",
        "lm_head.weight",
    }
    assert (
        module_name("model.layers.0.mlp.up_proj.weight", names)
        == "model.language_model.layers.0.mlp.up_proj.weight"
    )
    assert module_name("visual.blocks.0.norm1.weight", names) == "model.visual.blocks.0.norm1.weight"
    assert module_name("model.visual.blocks.0.norm1.weight", names) == "model.visual.blocks.0.norm1.weight"
    assert module_name("lm_head.weight", names) == "lm_head.weight"
    assert module_name("model.layers.9.mlp.up_proj.weight", names) is None


def test_file_by_file_load_equals_from_pretrained(tiny, tiny_dir):
    reference, _ = tiny
    model = empty_model(tiny_dir, torch.float32, "sdpa")
    read = load_weights(model, tiny_dir)
    assert read == len(list(model.parameters()))
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight  # tied, as from_pretrained
    ours, theirs = model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


def test_a_file_that_does_not_fit_fails_naming_it(tmp_path, tiny_dir):
    tensors = load_file(f"{tiny_dir}/model.safetensors")
    bad = dict(tensors)
    bad["model.layers.7.mlp.up_proj.weight"] = torch.zeros(2, 2)
    (tmp_path / "extra").mkdir()
    save_file(bad, tmp_path / "extra" / "model.safetensors")
    with pytest.raises(KeyError, match=r"model.safetensors.*model\.layers\.7\.mlp\.up_proj\.weight"):
        load_weights(empty_model(tiny_dir, torch.float32, "sdpa"), tmp_path / "extra")
    short = {k: v for k, v in tensors.items() if "norm1" not in k}
    (tmp_path / "short").mkdir()
    save_file(short, tmp_path / "short" / "model.safetensors")
    with pytest.raises(KeyError, match="no weights for"):
        load_weights(empty_model(tiny_dir, torch.float32, "sdpa"), tmp_path / "short")


def test_only_deepspeed_stage_3_builds_partitioned():
    def cfg(target, stage):
        return OmegaConf.create({"trainer": {"strategy": {"_target_": target, "stage": stage}}})

    assert wants_partitioned_init(cfg("visd_exp.distributed.strategy.DeepSpeedCPUStrategy", 3))
    assert not wants_partitioned_init(cfg("visd_exp.distributed.strategy.DeepSpeedCPUStrategy", 2))
    assert not wants_partitioned_init(OmegaConf.create({"trainer": {"strategy": "auto"}}))
    whole = cfg("visd_exp.distributed.strategy.DeepSpeedCPUStrategy", 3)
    whole.model = {"partitioned_init": False}  # the model loaded whole on every rank first, as before
    assert not wants_partitioned_init(whole)
    forced = cfg("visd_exp.distributed.strategy.DeepSpeedCPUStrategy", 2)
    forced.model = {"partitioned_init": True}
    with pytest.raises(ValueError, match="needs DeepSpeed ZeRO-3"):
        wants_partitioned_init(forced)
