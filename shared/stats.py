"""Order statistics of small arrays on the player's per-frame path.

``np.quantile`` and ``np.median`` are general: their wrappers cost tens of microseconds a
call, and the first call imports ``numpy.ma`` (about 10 ms of a player's start-up).
"""

from __future__ import annotations

import math

import numpy as np


def linear_quantile(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (its default, linear interpolation between the two nearest
    ranks) of a non-empty ``(n,)`` array by a partial sort: the same value, without the
    generic function's overhead. ``q`` in [0, 1]; the median is ``q = 0.5``."""
    n = values.size
    position = q * (n - 1)
    lo = int(math.floor(position))
    hi = min(lo + 1, n - 1)
    part = np.partition(values, (lo, hi) if hi > lo else lo)
    a, b, t = float(part[lo]), float(part[hi]), position - lo
    # numpy's lerp: from the nearer end (so that t = 1 gives b exactly)
    return a + (b - a) * t if t < 0.5 else b - (b - a) * (1.0 - t)
