"""X's observation templates pooled into bands: a cheaper likelihood for screening a long piece.

The follower's observation model is a multinomial over ``n_obs_bins`` linear STFT bins (455
at the default settings). Pooling bins into bands (linear bins at the bottom, where a bin is
wider than the band's fraction of an octave, then ``per_octave`` bands an octave) gives the
same model for a coarser observation: the log-likelihood of U's band energies under the
band masses of X's template, ``sum_b U[b] log sum_{k in b} T[k]``. At 24 bands an octave it
costs a quarter of the full one and ranks the places of a piece nearly as the full one does
(docs/DECISIONS.md, session 32): :class:`player.search.GlobalSearch` screens a long piece
with it and scores the few places it keeps at full resolution.
"""

from __future__ import annotations

import numpy as np

from shared.spectral import AnalysisParams, QuantizedTemplates


def band_starts(params: AnalysisParams, per_octave: int) -> np.ndarray:
    """First observation bin of each band, int64 ``(n_bands,)``, ascending from 0.

    A bin is a band of its own below the frequency where ``per_octave`` bands an octave
    become wider than one bin; above it, bands are ``1 / per_octave`` octave wide.
    """
    hz_per_bin = params.sr / params.n_fft
    freqs = (np.arange(params.n_obs_bins) + params.obs_bins.start) * hz_per_bin
    linear_below = hz_per_bin / (2.0 ** (1.0 / per_octave) - 1.0)
    lin = np.arange(params.n_obs_bins, dtype=np.float64)
    above = freqs >= linear_below
    label = np.where(above, np.count_nonzero(~above) + np.floor(per_octave * np.log2(np.maximum(freqs, 1e-9) / linear_below)),
                     lin)
    return np.flatnonzero(np.diff(label, prepend=-1.0) != 0).astype(np.int64)


class BandTemplates:
    """X's log templates pooled into bands, computed when first asked for, one variant at a time.

    ``log P[s, b] = log sum_{k in b} T[s, k]`` for the variant last asked for; a state's rows
    are computed on first use and again after a change of variant (the follower's variant
    changes rarely; the rows of every variant of a 40-minute piece would cost 56 MB).

    Args:
        templates: X's quantised log templates (a state's penalty lowers its bands alike).
        params: the bundle's analysis parameters.
        per_octave: bands an octave above the linear region (see :func:`band_starts`).
    """

    def __init__(self, templates: QuantizedTemplates, params: AnalysisParams, per_octave: int) -> None:
        self.templates = templates
        self.starts = band_starts(params, per_octave)
        self.n_bands = int(self.starts.size)
        # exp(log T - offset) of each code: pooling adds probabilities, not logs
        self._mass = np.exp(templates.step * np.arange(256, dtype=np.float64)).astype(np.float32)
        self._rows = np.empty((templates.n_states, self.n_bands), dtype=np.float32)
        self._variant = np.full(templates.n_states, -1, dtype=np.int64)

    def rows(self, detune: int, lo: int, hi: int) -> np.ndarray:
        """Band log templates of states ``[lo, hi)`` for variant ``detune``: float32 view
        ``(hi - lo, n_bands)`` (valid until the next call for another variant)."""
        stale = self._variant[lo:hi] != detune
        if stale.any():
            first = lo + int(np.argmax(stale))
            last = lo + stale.size - int(np.argmax(stale[::-1]))
            mass = self._mass[self.templates.q[detune, first:last]]  # (states, n_obs_bins)
            pooled = np.add.reduceat(mass, self.starts, axis=1)
            np.log(pooled, out=pooled)
            pooled += np.float32(self.templates.offset)
            if self.templates.penalty is not None:
                pooled -= self.templates.penalty[first:last, None]
            self._rows[first:last] = pooled
            self._variant[first:last] = detune
        return self._rows[lo:hi]

    def pool(self, u: np.ndarray) -> np.ndarray:
        """Band energies of observations ``(..., n_obs_bins)``: ``(..., n_bands)`` float32."""
        return np.add.reduceat(np.asarray(u, dtype=np.float32), self.starts, axis=-1)
