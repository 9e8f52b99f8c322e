"""How alike two places of the recording sound: a jump between look-alikes needs more evidence.

A whole piece repeats itself: a phrase played twice with a varied accompaniment, a
sequence, a recapitulation. When the soloist plays one of two such places, the playing
explains both almost equally; which one leads over a second or two is decided by what the
model gets wrong (the accompaniment under the same notes, the soloist's timbre), not by
where the player is. The relocator therefore asks a place that looks like the one the
player is followed at for more evidence than its distance alone costs: continuity decides
between look-alikes, and a player who really went to the other one is followed there as
soon as the two places part (the main track then loses at once, by far).

The measure is X's own: the symmetric Kullback-Leibler divergence between the two places'
templates (probability spectra) over the ``span_s`` seconds of X leading up to each,
each template averaged with its neighbours over ``smooth_states`` states (a varied repeat
does not put its notes on the same 100-ms grid), at the best of a few relative shifts (up
to ``max_shift_states``: the two places are known to within a few tenths of a second).
Measured on ``long_tune`` (docs/DECISIONS.md, session 33), between the main track's place
and the place it jumped to: 0.39 and 0.44 nats at the two false jumps to a varied repeat a
few seconds back, 1.16-2.0 at the 20 right re-locks after restarts and skips.

Units: places in states of X (``coarse_period_s`` apart); divergences in nats per state.
"""

from __future__ import annotations

import numpy as np

from shared.spectral import QuantizedTemplates


class LookAlike:
    """The divergence between places of X (see the module docstring).

    Args:
        templates: X's quantised log templates ``(n_detune, n_states, n_bins)`` (the middle
            detune variant is used: the places' likeness does not depend on the player's tuning).
        coarse_period_s: seconds of X per state.
        span_s: seconds of X compared, leading up to each place.
        smooth_states: states each template is averaged over.
        max_shift_states: the largest relative shift tried, each way (states).
    """

    def __init__(self, templates: QuantizedTemplates, coarse_period_s: float, span_s: float = 4.0,
                 smooth_states: int = 3, max_shift_states: int = 3) -> None:
        self.templates = templates
        self.n_states = templates.q.shape[1]
        self._variant = templates.q.shape[0] // 2
        self._span = max(1, int(round(span_s / coarse_period_s)))
        self._smooth = max(1, int(smooth_states))
        self._shift = max(0, int(max_shift_states))

    def _smoothed(self, state: float, extra: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Probability templates (float64 ``(k, n_bins)``, averaged over ``smooth_states``)
        and their logs over the span before ``state`` plus ``extra`` states each side; and
        the row of ``state`` in them."""
        end = min(self.n_states, int(round(state)) + extra + 1)
        start = max(0, int(round(state)) - self._span - extra - self._smooth + 1)
        p = np.exp(self.templates.dequantize(self._variant, slice(start, end)).astype(np.float64))
        csum = np.cumsum(np.vstack([np.zeros((1, p.shape[1])), p]), axis=0)
        k = min(self._smooth, p.shape[0])
        p = (csum[k:] - csum[:-k]) / k  # row i: states start + i .. start + i + k - 1
        row = int(round(state)) - start - (k - 1)
        return p, np.log(p + 1e-12), row

    def divergence(self, a: float, b: float) -> float:
        """The symmetric KL divergence (nats per state) between X before place ``a`` and
        before place ``b`` (states), at the best relative shift; ``inf`` where either place
        has less than the span before it."""
        pa, la, ia = self._smoothed(a, 0)
        pb, lb, ib = self._smoothed(b, self._shift)
        n = self._span
        if ia - n + 1 < 0:
            return float("inf")
        pa, la = pa[ia - n + 1: ia + 1], la[ia - n + 1: ia + 1]
        best = float("inf")
        for shift in range(-self._shift, self._shift + 1):
            lo = ib - n + 1 + shift
            if lo < 0 or ib + shift + 1 > pb.shape[0]:
                continue
            d = float(((pa - pb[lo: ib + shift + 1]) * (la - lb[lo: ib + shift + 1])).sum(axis=1).mean())
            best = min(best, d)
        return best
