"""V-STAR summary metrics: arithmetic mean (AM) and logarithmic geometric mean (LGM) of a chain.

A chain ("what-when-where" = chain 1, "what-where-when" = chain 2) is summarised by three fractions in
[0, 1]: answer accuracy ``acc``, mean temporal IoU ``m_tiou`` and mean visual IoU ``m_viou`` (a key frame
with no predicted box counts IoU 0). V-STAR reports them as percentages; here everything stays in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# ln(1 - x) is -inf at x = 1; each term is clamped to at most 1 - LGM_EPS, so a perfect score gives a
# large finite LGM (-ln(1e-6) = 13.8 per term) instead of inf.
LGM_EPS = 1e-6

CHAIN_KEYS = ("acc", "m_tiou", "m_viou")


def _check_fraction(name: str, x: float) -> float:
    x = float(x)
    if not (0.0 <= x <= 1.0):
        raise ValueError(f"{name} must be a fraction in [0, 1], got {x!r} (percentages? divide by 100)")
    return x


def am(acc: float, m_tiou: float, m_viou: float) -> float:
    """AM_c = (Acc + mTIoU_c + mVIoU_c) / 3."""
    terms = [_check_fraction(k, v) for k, v in zip(CHAIN_KEYS, (acc, m_tiou, m_viou))]
    return sum(terms) / 3.0


def lgm(acc: float, m_tiou: float, m_viou: float, eps: float = LGM_EPS) -> float:
    """LGM_c = -[ln(1 - Acc) + ln(1 - mTIoU_c) + ln(1 - mVIoU_c)] / 3, each term clamped to <= 1 - eps."""
    terms = [_check_fraction(k, v) for k, v in zip(CHAIN_KEYS, (acc, m_tiou, m_viou))]
    return -sum(math.log(1.0 - min(x, 1.0 - eps)) for x in terms) / 3.0


def vstar_summary(chain1: Mapping[str, float], chain2: Mapping[str, float]) -> dict[str, float]:
    """AM and LGM of both chains and their means mAM, mLGM.

    Each chain is a mapping with keys ``acc``, ``m_tiou``, ``m_viou`` (fractions in [0, 1]).
    """
    out: dict[str, float] = {}
    for i, chain in ((1, chain1), (2, chain2)):
        missing = [k for k in CHAIN_KEYS if k not in chain]
        if missing:
            raise KeyError(f"chain{i} is missing {missing}; expected keys {CHAIN_KEYS}")
        vals = [chain[k] for k in CHAIN_KEYS]
        out[f"am_chain{i}"] = am(*vals)
        out[f"lgm_chain{i}"] = lgm(*vals)
    out["mAM"] = (out["am_chain1"] + out["am_chain2"]) / 2.0
    out["mLGM"] = (out["lgm_chain1"] + out["lgm_chain2"]) / 2.0
    return out
