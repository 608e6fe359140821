"""The diverging colour scale of token credit, shared by the HTML spans and the PNG bars.

Symmetric around 0: 0 is white, positive values shade to blue (the teacher puts more mass on the token
than the reference, Delta_t > 0), negative values to red; |value| >= vmax is fully saturated.
"""

from __future__ import annotations

import math

import numpy as np

WHITE = (255, 255, 255)
NEGATIVE = (178, 24, 43)  # red
POSITIVE = (33, 102, 172)  # blue
MISSING = (221, 221, 221)  # NaN


def diverging_rgb(value: float, vmax: float) -> tuple[int, int, int]:
    """RGB of `value` on the scale [-vmax, vmax]: white at 0, linear towards red (<0) or blue (>0)."""
    if value is None or math.isnan(value):
        return MISSING
    t = max(-1.0, min(1.0, value / vmax)) if vmax > 0 else 0.0
    end = POSITIVE if t > 0 else NEGATIVE
    return tuple(round(w + abs(t) * (e - w)) for w, e in zip(WHITE, end))


def to_hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def text_colour(rgb: tuple[int, int, int]) -> str:
    """Black or white, whichever reads better on `rgb` (relative luminance)."""
    r, g, b = (c / 255 for c in rgb)
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.5 else "#ffffff"


def symmetric_limit(*arrays, quantile: float = 0.98, floor: float = 1e-6) -> float:
    """vmax for the scale: the `quantile` of |values| over all arrays (robust to one outlier token)."""
    values = np.abs(np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays] or [np.zeros(1)]))
    values = values[np.isfinite(values)]
    return max(float(np.quantile(values, quantile)) if values.size else 0.0, floor)


def diverging_cmap():
    """The same scale as a matplotlib colormap on [0, 1] (use with Normalize(-vmax, vmax))."""
    from matplotlib.colors import LinearSegmentedColormap

    stops = [tuple(c / 255 for c in rgb) for rgb in (NEGATIVE, WHITE, POSITIVE)]
    cmap = LinearSegmentedColormap.from_list("visd_credit", stops, N=255)  # odd N: 0.5 is exactly white
    return cmap.with_extremes(bad=tuple(c / 255 for c in MISSING))
