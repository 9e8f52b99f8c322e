"""Leak cancelling: the player knows what it just played; remove it from what it hears.

With speakers instead of headphones the accompaniment the player renders comes back into
the microphone, delayed (device buffers, the air) and coloured by the room. Left in, it
opens the soloist gate during rests, pulls the follower towards wherever the output is
(its own belief, confirmed by its own output) and makes the separation treat the
accompaniment as solo. The canceller keeps the magnitude spectra of the engine's output on
the analysis axis, one per analysis hop, and per input frame subtracts

    leak(f) = gain * max over lags l*-1..l*+1 of |Y_{t-l}(f)|

(a spectral subtraction, over-subtracted by ``over``), floored at ``floor`` times the
input so the solo's own harmonics are never wiped out. The lag ``l*`` (frames) is where
the log-energy envelopes of input and output correlate best over the last ``window_s``;
the gain is a low percentile of the input/output magnitude ratio at that lag (frames
where the soloist is quiet show the leak alone; the solo only adds). Without a leak (no
lag whose similarity stands out by ``min_prominence``, e.g. with headphones) nothing is
subtracted.

In the engine, :meth:`LeakCanceller.push_played` takes each block the engine returned
(X's rate and channels) and analyses it like the input, one spectrum per analysis hop,
into a short queue; :meth:`LeakCanceller.process_frame` takes the next one of them for
each input frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from player.hops import HopStream
from player.stages import Frame
from shared.audio import to_mono
from shared.config import check_fields, field_error
from shared.kernels import kernel
from shared.spectral import AnalysisParams, OnlineSpectrum, spectral_subtract
from shared.stats import linear_quantile


@dataclass(frozen=True)
class LeakConfig:
    """Tuning of the leak canceller.

    Attributes:
        enabled: cancel the leak at all.
        max_lag_s: longest loop delay considered (output -> speakers -> microphone), seconds.
        window_s: history (seconds) over which the lag and gain are estimated.
        every_s: re-estimation period (seconds).
        min_prominence: how far the best lag's mean cosine must stand above the median lag's.
        gain_percentile: percentile of input/output magnitude ratios taken as the leak gain.
        over: over-subtraction factor.
        floor: at least this fraction of the input magnitude is kept in every bin.
    """

    enabled: bool = True
    max_lag_s: float = 0.5
    window_s: float = 6.0
    every_s: float = 0.5
    min_prominence: float = 0.05
    gain_percentile: float = 10.0
    over: float = 1.5
    floor: float = 0.05

    def __post_init__(self) -> None:
        check_fields(self, positive=("max_lag_s", "window_s", "every_s", "over"), non_negative=("min_prominence",),
                     unit=("floor",))
        if not 0.0 <= self.gain_percentile <= 100.0:
            raise field_error(self, "gain_percentile", self.gain_percentile, "within [0, 100]")


class LeakCanceller:
    """Subtracts the expected leak of the player's own output from input spectra.

    Args:
        params: analysis parameters (spectra are ``(n_bins,)`` on the analysis axis).
        config: tuning.
        played_sr: sample rate (Hz) of the blocks given to :meth:`push_played` (X's).
    """

    #: Spectra of played hops queued for the input frames (more means the input stalled:
    #: the oldest are dropped).
    QUEUE_FRAMES = 8

    def __init__(self, params: AnalysisParams, config: LeakConfig | None = None, played_sr: int | None = None) -> None:
        self.config = cfg = config or LeakConfig()
        self.params = params
        self._played = HopStream(played_sr or params.sr, params.sr, params.fine_hop)
        self._played_spectrum = OnlineSpectrum(params)
        self._queue = np.zeros((self.QUEUE_FRAMES, params.n_bins), dtype=np.float32)
        self._silence = np.zeros(params.n_bins, dtype=np.float32)
        period = params.fine_period_s
        self.n_lags = max(2, int(round(cfg.max_lag_s / period)) + 2)
        self.n_hist = max(self.n_lags + 8, int(round(cfg.window_s / period)))
        self._every = max(1, int(round(cfg.every_s / period)))
        self._out = np.zeros((self.n_lags + 1, params.n_bins), dtype=np.float32)  # ring of output spectra
        band = params.obs_bins
        self._out_c = np.zeros((self.n_lags + 1, band.stop - band.start), dtype=np.float32)  # sqrt, in band
        self._out_norm = np.zeros(self.n_lags + 1)
        self._similarity = np.zeros(self.n_lags)  # running mean cosine per lag
        self._root = np.empty(band.stop - band.start, dtype=np.float32)  # sqrt of the input's band (scratch)
        self._ratio = np.full(self.n_hist, np.nan)  # input/output band magnitude at the current lag
        self._leak = np.empty(params.n_bins, dtype=np.float32)
        self._cleaned = np.empty(params.n_bins, dtype=np.float32)  # cancel()'s result
        self._kept = np.empty(params.n_bins, dtype=np.float32)  # scratch of the subtraction
        self._band = params.obs_bins
        self.reset()

    def warm_up(self) -> None:
        """Load the compiled kernels now, not in the first audio callback (see
        :meth:`player.follower.Follower.warm_up`); the canceller's state is unchanged."""
        self._played_spectrum.warm_up()
        _band_root(self._silence, self._band.start, self._out_c[0].copy())
        _track_similarity(self._silence, self._band.start, self._root, self._out_c, self._out_norm, 0,
                          self._similarity.copy(), 1)

    def reset(self) -> None:
        """Forget what was played and the loop's estimate (the state at construction)."""
        self._played.reset()
        self._played_spectrum.reset()
        self._queued = self._taken = 0
        self._out[:] = 0.0
        self._out_c[:] = 0.0
        self._out_norm[:] = 0.0
        self._similarity[:] = 0.0
        self._ratio[:] = np.nan
        self.frames = 0
        self.lag = -1  # frames; -1: no leak detected
        self.gain = 0.0
        self.prominence = 0.0

    def push_played(self, block: np.ndarray) -> None:
        """Queue the spectra of a block the engine played (``(n, channels)`` at
        ``played_sr``), one per completed analysis hop."""
        if not self.config.enabled:
            return
        queue = self._queue
        for hop_samples in self._played.push(to_mono(block)):
            if self._queued - self._taken >= queue.shape[0]:  # the input stalled: drop the oldest
                self._taken += 1
            queue[self._queued % queue.shape[0]] = self._played_spectrum.push(hop_samples)
            self._queued += 1

    def process_frame(self, frame: Frame) -> None:
        """Remove the expected leak from ``frame.mag``, after taking the next queued
        played spectrum (silence if none) as this hop's output."""
        if not self.config.enabled:
            return
        if self._taken < self._queued:
            played = self._queue[self._taken % self._queue.shape[0]]
            self._taken += 1
        else:
            played = self._silence
        self.push_output(played)
        frame.mag = self.cancel(frame.mag)

    def push_output(self, out_mag: np.ndarray) -> None:
        """The magnitude spectrum ``(n_bins,)`` of what the player emitted during this hop."""
        slot = self.frames % self._out.shape[0]
        self._out[slot] = out_mag
        self._out_norm[slot] = _band_root(out_mag, self._band.start, self._out_c[slot])

    def cancel(self, in_mag: np.ndarray) -> np.ndarray:
        """The input spectrum ``(n_bins,)`` of this hop without the expected leak: ``in_mag``
        itself when nothing is subtracted, else a view of an internal buffer, valid until
        the next call (no allocation per hop on the live path). Call once per hop, after
        :meth:`push_output`."""
        cfg = self.config
        if not cfg.enabled:
            return in_mag
        t = self.frames
        slot = t % self.n_hist
        band = self._band
        e_in = _track_similarity(in_mag, band.start, self._root, self._out_c, self._out_norm, self.frames,
                                 self._similarity, min(self.frames + 1, self.n_hist))
        self.frames += 1
        if self.frames % self._every == 0 and self.frames >= self.n_hist:
            self._estimate()
        if self.lag < 0:
            return in_mag
        leak = self._lagged_max(self.lag)
        e_leak = float(np.dot(leak[band], leak[band]))
        if e_leak > 1e-12:
            self._ratio[slot] = np.sqrt(e_in / e_leak)
        if self.gain <= 0.0:
            return in_mag
        np.multiply(leak, cfg.over * self.gain, out=self._leak)
        return spectral_subtract(in_mag, self._leak, cfg.floor, out=self._cleaned, scratch=self._kept)

    def _lagged_max(self, lag: int) -> np.ndarray:
        """Max of the output spectra ``lag - 1 .. lag + 1`` frames ago (timing tolerance)."""
        n = self._out.shape[0]
        t = self.frames - 1
        rows = [(t - k) % n for k in range(max(0, lag - 1), min(self.n_lags, lag + 2))]
        return self._out[rows].max(axis=0)

    def _estimate(self) -> None:
        """Lag = the lag whose spectra resemble the input most, if it stands out; gain = a low
        percentile of the magnitude ratios measured at that lag."""
        cfg = self.config
        sim = self._similarity[: self.n_lags - 1]
        best_lag = int(np.argmax(sim))
        self.prominence = float(sim[best_lag] - linear_quantile(sim, 0.5))
        if self.prominence < cfg.min_prominence:
            self.lag, self.gain = -1, 0.0
            return
        if best_lag != self.lag:  # ratios were measured at another lag
            self._ratio[:] = np.nan
            self.lag = best_lag
            self.gain = 0.0
            return
        ratios = self._ratio[np.isfinite(self._ratio)]
        if ratios.size >= self.n_hist // 4:
            self.gain = linear_quantile(ratios, cfg.gain_percentile / 100.0)


@kernel("float64(float32[::1], int64, float32[::1])")
def _band_root(mag, lo, root):  # pragma: no cover (numba)
    """``root = sqrt(mag[lo:lo + root.size])``; returns its norm."""
    acc = 0.0
    for i in range(root.size):
        r = np.float32(math.sqrt(mag[lo + i]))
        root[i] = r
        acc += r * r
    return math.sqrt(acc)


@kernel("float64(float32[::1], int64, float32[::1], float32[:, ::1], float64[::1], int64, float64[::1], int64)")
def _track_similarity(in_mag, lo, root, out_c, out_norm, frames, similarity, count):  # pragma: no cover (numba)
    """Update the running mean (over ``count`` frames) ``similarity`` ``(n_lags,)`` of the
    cosine between the input frame's band (``sqrt`` of ``in_mag[lo:lo + root.size]``, into
    ``root``) and each lagged output's (``out_c`` row ``(frames - lag) % rows``, norms
    ``out_norm``; a silent pair counts 0). Returns the input band's power."""
    rows = out_c.shape[0]
    power = 0.0
    for i in range(root.size):
        m = in_mag[lo + i]
        power += m * m  # (float32 squares, summed in float64)
    norm = _band_root(in_mag, lo, root)
    for lag in range(similarity.size):
        row = (frames - lag) % rows
        scale = out_norm[row] * norm
        now = 0.0
        if scale > 1e-9:  # silent frames say nothing (and tiny norms overflow)
            dot = 0.0
            for i in range(root.size):
                dot += out_c[row, i] * root[i]
            now = dot / scale
        similarity[lag] += (now - similarity[lag]) / count
    return power
