"""Token-credit dumps for inspection (VISD appendix E.4, Eq. 29-31; Figure 8).

For M rollouts of a step, the per-token Delta_t under the feedback-conditioned teacher (Eq. 30) and under
the answer-only teacher (Eq. 29, privileged block without feedback), their difference delta^judge
(Eq. 31), the weight m_t and the token advantage A^_t used in training, with the decoded tokens.
Both teachers are compared on a COMMON support: the feedback teacher's top-K plus the realised token
(the support training uses), so the student terms cancel in Eq. 31 exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

DUMP_DIR = "credit_dumps"


def write_credit_dump(out_dir: Path, step: int, lam: float, credit_cfg, tokenizer, rows: dict) -> Path:
    """rows: tensors [M, C] (delta_feedback, delta_judge, weight, token_advantage, mask, token_ids) and lists."""
    out_dir = Path(out_dir) / DUMP_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    rollouts = []
    for i in range(rows["token_ids"].shape[0]):
        n = int(rows["mask"][i].sum())
        ids = rows["token_ids"][i, :n].tolist()
        d_fb = rows["delta_feedback"][i, :n]
        d_judge = rows["delta_judge"][i, :n]
        rollouts.append(
            {
                **rows["meta"][i],
                "token_ids": ids,
                "tokens": [tokenizer.decode([t]) for t in ids],
                "delta_feedback": d_fb.tolist(),  # Eq. 30
                "delta_answer_only": (d_fb - d_judge).tolist(),  # Eq. 29, on the common support
                "delta_judge": d_judge.tolist(),  # Eq. 31
                "weight": rows["weight"][i, :n].tolist(),  # m_t (Eq. 6)
                "token_advantage": rows["token_advantage"][i, :n].tolist(),  # A^_t (Eq. 7)
            }
        )
    payload = {
        "step": step,
        "lambda": lam,
        "credit": credit_cfg.name,
        "k": credit_cfg.get("k"),
        "eps_w": credit_cfg.eps_w,
        "rollouts": rollouts,
    }
    path = out_dir / f"step_{step:06d}.json"
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(payload))
    tmp.replace(path)
    return path
