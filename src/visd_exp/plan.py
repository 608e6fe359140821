"""Plan a run before starting it: per-GPU memory item by item, host RAM, disk per checkpoint and step time.

    python -m visd_exp.plan +experiment=paper_7b trainer.devices=8 trainer.num_nodes=1
    python -m visd_exp.plan +experiment=paper_7b teacher=current --json plan.json --assume gpu=h100 mfu=0.2

Every argument that is not `--json PATH` or `--assume key=value ...` is a Hydra override, composed onto
conf/train.yaml exactly as `python -m visd_exp.train` composes it. Assumptions (bandwidths, MFU, GPU
memory, ...) are listed in the output; a `plan:` node in the config (`+plan.mfu=0.2`) sets them too.
Nothing is loaded or downloaded: parameters are counted on the meta device (planning/models.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from visd_exp.utils.setup import find_project_root


def compose_config(overrides: list[str]):
    """conf/train.yaml with the overrides, as the training entry point composes it (not resolved)."""
    from hydra import compose, initialize_config_dir

    root = Path(os.environ.setdefault("PROJECT_ROOT", str(find_project_root())))
    with initialize_config_dir(config_dir=str(root / "conf"), version_base="1.3", job_name="plan"):
        return compose(config_name="train", overrides=overrides)


def split_arguments(argv: list[str]) -> tuple[list[str], str | None, list[str]]:
    """(Hydra overrides, --json path, --assume items) from the command line."""
    from dataclasses import fields

    from visd_exp.planning.assumptions import Assumptions

    names = {f.name for f in fields(Assumptions)}
    overrides, assume, json_path = [], [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--json" or arg.startswith("--json="):
            json_path = arg.split("=", 1)[1] if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else None)
            if not json_path:
                raise ValueError("--json needs a path")
            i += 1 if "=" in arg else 2
        elif arg == "--assume" or arg.startswith("--assume="):
            if "=" in arg.split("--assume", 1)[1]:
                assume.append(arg.split("=", 1)[1])
            i += 1
            while i < len(argv) and "=" in argv[i] and argv[i].split("=", 1)[0] in names:
                assume.append(argv[i])
                i += 1
        elif arg in ("-h", "--help"):
            raise SystemExit(__doc__)
        else:
            overrides.append(arg)
            i += 1
    return overrides, json_path, assume


def make_plan(overrides: list[str], assume_items: list[str] | None = None) -> dict:
    """The plan of the run these overrides describe (the dict --json writes)."""
    return plan_config(compose_config(overrides), assume_items, overrides)


def plan_config(cfg, assume_items: list[str] | None = None, overrides: list[str] | None = None) -> dict:
    """The plan of a composed config (e.g. a run's config_resolved.yaml, loaded with OmegaConf)."""
    from omegaconf import OmegaConf

    from visd_exp.planning.assumptions import build_assumptions, parse_assume
    from visd_exp.planning.memory import setting_from
    from visd_exp.planning.models import model_spec
    from visd_exp.planning.report import build_plan
    from visd_exp.planning.shapes import build_shapes

    plan_node = OmegaConf.to_container(cfg.plan, resolve=True) if cfg.get("plan") is not None else {}
    assume = build_assumptions(plan_node, parse_assume(assume_items))
    spec = model_spec(cfg.model)
    shapes = build_shapes(cfg, spec, assume)
    return build_plan(cfg, spec, shapes, setting_from(cfg, shapes), assume, list(overrides or []))


def main(argv: list[str] | None = None) -> int:
    from visd_exp.planning.report import render

    overrides, json_path, assume = split_arguments(sys.argv[1:] if argv is None else argv)
    plan = make_plan(overrides, assume)
    print(render(plan))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(plan, indent=2))
        print(f"\nwritten: {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
