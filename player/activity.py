"""Is the soloist playing? A level gate over U's observation band with a tracked noise floor.

The floor follows the quietest recent frames: it drops at once to a quieter frame and rises
slowly (``rise_db_per_s``), so room noise that changes is followed while a long legato
phrase does not become "noise". Frames before the analysis window is full, and digital
silence, never set the floor (they would put it far below the room's real noise). A frame is active when it is ``threshold_db`` above the
floor (with hysteresis) and above an absolute floor (digital silence is never active).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.spectral import AnalysisParams


@dataclass(frozen=True)
class ActivityConfig:
    """Gate settings (dB are 10*log10 of band power)."""

    threshold_db: float = 6.0
    hysteresis_db: float = 3.0
    rise_db_per_s: float = 0.5
    absolute_floor_db: float = -100.0
    hold_s: float = 0.06


class ActivityDetector:
    """Frame-by-frame soloist activity from magnitude frames ``(n_bins,)``."""

    def __init__(self, params: AnalysisParams, config: ActivityConfig | None = None) -> None:
        self.params = params
        self.config = config or ActivityConfig()
        # power of a full-scale sine in one Hann-windowed frame, so levels read as dBFS
        self._ref = (params.n_fft / 4.0) ** 2
        self._rise = self.config.rise_db_per_s * params.fine_period_s
        self._hold_frames = int(round(self.config.hold_s / params.fine_period_s))
        self._warmup = int(np.ceil(params.n_fft / params.fine_hop))  # frames until the window is full
        self.reset()

    def reset(self) -> None:
        self.floor_db = np.inf
        self.level_db = -np.inf
        self.active = False
        self._held = 0
        self._frames = 0

    def update(self, mag: np.ndarray) -> bool:
        band = mag[self.params.obs_bins]
        power = float(np.dot(band, band)) / self._ref
        level = 10.0 * np.log10(power + 1e-20)
        self.level_db = level
        cfg = self.config
        self._frames += 1
        if self._frames <= self._warmup:  # a half-empty window reads too quiet: not the room
            return False
        if level < cfg.absolute_floor_db:  # digital silence says nothing about the room's noise
            pass
        elif level < self.floor_db:
            self.floor_db = level
        else:
            self.floor_db += self._rise
        margin = cfg.threshold_db - (cfg.hysteresis_db if self.active else 0.0)
        on = level > self.floor_db + margin and level > cfg.absolute_floor_db
        if on:
            self._held = self._hold_frames
        elif self._held > 0:
            self._held -= 1
            on = True
        self.active = on
        return on
