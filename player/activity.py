"""Is the soloist playing? A level gate over U's observation band against the room's noise.

The noise floor is estimated from the last ``window_s`` seconds of frame levels: their
``floor_percentile`` (the quiet moments: room noise in rests and between notes), but never
more than ``max_floor_below_peak_db`` under the loudest recent frame, so continuous legato
playing (no quiet moments at all) is not mistaken for noise; and that limit is never under
the room's own level once it is known. The room is learned from quiet moments that sound
like noise (median spectral flatness of the window's quietest frames above
``noise_flatness``; a held or soft note is tonal, far below it) and may grow louder by
``room_rise_db_per_s`` at most, so that a window of room noise alone (the wait before the
first note, a long rest) keeps the gate closed.
Frames before the analysis window is full and digital silence never enter the estimate.
A frame is active when it is ``threshold_db`` above the floor (with hysteresis and a
short hold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from player.stages import Frame
from shared.config import check_fields, field_error
from shared.kernels import kernel
from shared.spectral import AnalysisParams
from shared.stats import linear_quantile


@dataclass(frozen=True)
class ActivityConfig:
    """Gate settings (dB are 10*log10 of band power re. a full-scale sine, i.e. dBFS)."""

    threshold_db: float = 6.0
    hysteresis_db: float = 3.0
    window_s: float = 10.0
    floor_percentile: float = 10.0
    max_floor_below_peak_db: float = 30.0
    noise_flatness: float = 0.02
    room_rise_db_per_s: float = 0.5
    quiet_span_db: float = 3.0
    absolute_floor_db: float = -100.0
    hold_s: float = 0.06

    def __post_init__(self) -> None:
        check_fields(self, positive=("window_s", "noise_flatness"),
                     non_negative=("threshold_db", "hysteresis_db", "max_floor_below_peak_db", "room_rise_db_per_s",
                                   "quiet_span_db", "hold_s"))
        if not 0.0 <= self.floor_percentile <= 100.0:
            raise field_error(self, "floor_percentile", self.floor_percentile, "within [0, 100]")


class ActivityDetector:
    """Frame-by-frame soloist activity from magnitude frames ``(n_bins,)``."""

    def __init__(self, params: AnalysisParams, config: ActivityConfig | None = None) -> None:
        self.params = params
        self.config = config or ActivityConfig()
        self._ref = (params.n_fft / 4.0) ** 2  # power of a full-scale sine in one Hann frame
        self._hold_frames = int(round(self.config.hold_s / params.fine_period_s))
        self._warmup = int(np.ceil(params.n_fft / params.fine_hop))  # frames until the window is full
        self._levels = np.empty(max(8, int(round(self.config.window_s / params.fine_period_s))), dtype=np.float64)
        self._flatness = np.empty_like(self._levels)  # spectral flatness of the same frames
        self._every = 5  # re-estimate the floor every few frames (a percentile of a few hundred values)
        self._band_stats = np.zeros(2)  # the band's power and mean log magnitude (scratch)
        self.reset()

    def reset(self) -> None:
        """Forget the room and the soloist (the state at construction)."""
        self.floor_db = self.config.absolute_floor_db
        self.room_db: float | None = None  # the room's noise level (dBFS), once heard
        self.level_db = -np.inf
        self.flatness = 0.0  # of the latest frame's band (geometric over arithmetic mean)
        self.active = False
        self.room_noise = False  # the latest frame is the room alone (silent, quiet and flat)
        self._held = 0
        self._frames = 0
        self._count = 0

    def warm_up(self) -> None:
        """Load the compiled kernel now, not in the first audio callback (see
        :meth:`player.follower.Follower.warm_up`); the gate's state is unchanged."""
        _band_power(np.ones(self.params.n_bins, dtype=np.float32), 0, 1, np.zeros(2))

    def release(self) -> None:
        """Close the gate now (drop its hold); the noise floor, a property of the room, stays."""
        self._held = 0
        self.active = False

    def _update_floor(self) -> None:
        n = min(self._count, self._levels.size)
        recent = self._levels[:n]
        k = int(self.config.floor_percentile / 100.0 * (n - 1))
        quiet = float(np.partition(recent, k)[k])
        cfg = self.config
        quietest = recent <= quiet + cfg.quiet_span_db
        if self.room_db is not None:
            self.room_db = min(self.room_db, quiet)  # the room is at most as loud as this
        if linear_quantile(self._flatness[:n][quietest], 0.5) > cfg.noise_flatness:
            # the quiet moments sound like noise: the room (which may get noisier, but not
            # suddenly: a breathy soft note can look like noise too)
            rise = cfg.room_rise_db_per_s * self._every * self.params.fine_period_s
            self.room_db = quiet if self.room_db is None else min(quiet, self.room_db + rise)
        limit = float(recent.max()) - cfg.max_floor_below_peak_db
        self.floor_db = min(quiet, limit if self.room_db is None else max(limit, self.room_db))

    def process_frame(self, frame: Frame) -> None:
        """Gate ``frame.mag``: sets ``frame.active``, ``level_db``, ``floor_db`` and
        ``room_noise``."""
        frame.active = self.update(frame.mag)
        frame.level_db, frame.floor_db, frame.room_noise = self.level_db, self.floor_db, self.room_noise

    def update(self, mag: np.ndarray) -> bool:
        """Take one magnitude frame ``(n_bins,)``; True while the soloist is playing."""
        band = self.params.obs_bins
        stats = self._band_stats
        _band_power(mag, band.start, band.stop, stats)
        power = float(stats[0])
        level = 10.0 * math.log10(power / self._ref + 1e-20)
        self.level_db = level
        cfg = self.config
        self._frames += 1
        if self._frames <= self._warmup:  # a half-empty window reads too quiet: not the room
            return False
        if level >= cfg.absolute_floor_db:  # digital silence says nothing about the room
            slot = self._count % self._levels.size
            self._levels[slot] = level
            # geometric over arithmetic mean of the band's power: ~0.3 for room noise,
            # ~0.001 for a note
            self.flatness = math.exp(2.0 * float(stats[1])) * (band.stop - band.start) / (power + 1e-30)
            self._flatness[slot] = self.flatness
            self._count += 1
            if self._count % self._every == 1:
                self._update_floor()
        margin = cfg.threshold_db - (cfg.hysteresis_db if self.active else 0.0)
        on = level > self.floor_db + margin and level > cfg.absolute_floor_db
        if on:
            self._held = self._hold_frames
        elif self._held > 0:
            self._held -= 1
            on = True
        self.active = on
        room = self.room_db if self.room_db is not None else self.floor_db
        self.room_noise = (not on and self.flatness > cfg.noise_flatness
                           and level <= room + cfg.quiet_span_db)
        return on


@kernel("void(float32[::1], int64, int64, float64[::1])")
def _band_power(mag, lo, hi, out):  # pragma: no cover (numba)
    """The power of ``mag[lo:hi]`` (sum of squares: float32 squares, as numpy's float32 dot,
    summed in float64) into ``out[0]`` and its mean log magnitude (``log(mag + 1e-12)``)
    into ``out[1]``."""
    power = 0.0
    logs = 0.0
    for i in range(lo, hi):
        m = mag[i]
        power += m * m
        logs += math.log(m + 1e-12)
    out[0] = power
    out[1] = logs / (hi - lo)
