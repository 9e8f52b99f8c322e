"""The room's noise, learned from the moments the soloist is silent, taken out of U's
spectrum before the follower sees it, when the room is loud enough to matter (magnitude
spectral subtraction).

The observation features compress each frame relative to its own peak (``log1p(g * mag /
max)``), which lifts steady room noise into hundreds of bins: at 10 dB SNR it outweighs a
note's partials. The activity gate already tells noise from playing: frames it calls
silent, near the room's level and spectrally flat update a slowly averaged noise
magnitude spectrum, which is subtracted from every frame, keeping at least ``keep`` of
each bin.

Sharper features make every frame's evidence stronger, so the likelihood's temper
(``FollowerConfig.kappa``) is lowered with the subtraction (``evidence_scale``), or the
relocator's margin (a log Bayes factor) is reached by repeats of a phrase. In a quiet room
the subtraction would only strip the faint floor of the features, which the recording's
templates keep: it fades in between ``snr_off_db`` and ``snr_full_db`` of the playing
level over the room's. docs/DECISIONS.md has the figures (``benchmarks.follow_eval
--noise-snr``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from player.stages import Frame
from shared.config import check_fields, field_error
from shared.spectral import spectral_subtract


@dataclass(frozen=True)
class DenoiseConfig:
    """Attributes:
        enabled: subtract the room's noise from U's spectrum.
        memory_s: time constant of the noise average (seconds of noise frames).
        level_release_db_per_s: how fast the playing level (the loudest recent frames, held)
            falls back in soft passages (dB per second).
        keep: the least fraction of each bin's magnitude kept.
        snr_full_db: at or below this playing level over the room (dB), the whole noise
            magnitude is subtracted.
        snr_off_db: at or above this, nothing is (a quiet room).
        kappa_ratio: the likelihood's temper with the whole noise subtracted, relative to
            without (scales ``FollowerConfig.kappa``; in between, linearly).
        min_playing_s: seconds of playing heard before the playing level is trusted (a
            first note's attack is soft).
    """

    enabled: bool = True
    memory_s: float = 2.0
    level_release_db_per_s: float = 1.0
    keep: float = 0.1
    snr_full_db: float = 20.0
    snr_off_db: float = 30.0
    kappa_ratio: float = 2.0 / 3.0
    min_playing_s: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self, positive=("memory_s", "kappa_ratio"), non_negative=("level_release_db_per_s",
                                                                               "min_playing_s"),
                     unit=("keep",))
        if self.snr_off_db < self.snr_full_db:
            raise field_error(self, "snr_off_db", self.snr_off_db, f">= snr_full_db ({self.snr_full_db:g})")


class NoiseProfile:
    """Running magnitude spectrum of the room ``(n_bins,)``, the playing level, and the
    subtraction."""

    def __init__(self, n_bins: int, frame_s: float, config: DenoiseConfig | None = None) -> None:
        self.config = cfg = config or DenoiseConfig()
        self.rate = min(1.0, frame_s / max(cfg.memory_s, 1e-6))
        self.release_db = cfg.level_release_db_per_s * frame_s  # per frame
        self.min_playing = max(1, int(round(cfg.min_playing_s / frame_s)))
        self.noise = np.zeros(n_bins, dtype=np.float32)
        self._out = np.zeros(n_bins, dtype=np.float32)
        self._estimate = np.zeros(n_bins, dtype=np.float32)
        self._tmp = np.zeros(n_bins, dtype=np.float32)
        self.reset()

    def reset(self) -> None:
        """Forget the room (the state at construction)."""
        self.noise[:] = 0.0
        self.frames = 0
        self.noise_db: float | None = None  # the room's level (dBFS), averaged like its spectrum
        self.playing_db: float | None = None  # level of the loudest recent playing (dBFS)
        self.playing_frames = 0
        self.weight = 0.0  # share of the noise subtracted now, in [0, 1]

    def process_frame(self, frame: Frame) -> None:
        """Learn from ``frame`` (its ``mag``, ``level_db``, ``active``, ``room_noise``) and
        set ``frame.clean`` and ``frame.evidence_scale``."""
        self.observe(frame.mag, frame.level_db, frame.active, frame.room_noise)
        frame.clean = self.clean(frame.mag)
        frame.evidence_scale = self.evidence_scale

    def observe(self, mag: np.ndarray, level_db: float, active: bool, is_noise: bool) -> None:
        """Learn from one frame: room noise (``is_noise``) or playing (``active``)."""
        if is_noise:
            self.frames += 1
            rate = max(self.rate, 1.0 / self.frames)  # a plain mean until the memory is full
            np.subtract(mag, self.noise, out=self._tmp)  # in place: this runs per block, live
            self._tmp *= np.float32(rate)
            self.noise += self._tmp
            self.noise_db = level_db if self.noise_db is None else self.noise_db + rate * (level_db - self.noise_db)
        elif active:  # a held peak: a soft attack or passage is not a loud room
            self.playing_frames += 1
            self.playing_db = level_db if self.playing_db is None else \
                max(level_db, self.playing_db - self.release_db)
        cfg = self.config
        if not cfg.enabled or self.noise_db is None or self.playing_frames < self.min_playing:
            self.weight = 0.0
        else:
            snr = self.playing_db - self.noise_db
            span = max(cfg.snr_off_db - cfg.snr_full_db, 1e-6)
            self.weight = float(min(1.0, max(0.0, (cfg.snr_off_db - snr) / span)))

    @property
    def evidence_scale(self) -> float:
        """The likelihood's temper relative to the configured one (1 with no subtraction)."""
        return 1.0 - self.weight * (1.0 - self.config.kappa_ratio)

    def clean(self, mag: np.ndarray) -> np.ndarray:
        """``mag`` minus the weighted noise (a view of an internal buffer, valid until the
        next call; ``mag`` itself when nothing is subtracted)."""
        if self.weight <= 0.0:
            return mag
        np.multiply(self.noise, np.float32(self.weight), out=self._estimate)
        return spectral_subtract(mag, self._estimate, self.config.keep, out=self._out, scratch=self._tmp)
