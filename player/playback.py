"""Playback of X along the follower's path (simple variable-rate resampling).

A stand-in for the phase vocoder: it reads X from the bundle at a rate that follows the
player's tempo and glides towards the follower's position (no jumps), so the output is in
time with the player, but its pitch moves with the rate.
"""

from __future__ import annotations

import numpy as np

from shared.bundle import BundleAudio


class PathPlayback:
    """Renders blocks of X that follow a target position.

    Args:
        audio: X's audio in the bundle.
        catch_up_s: time constant (seconds) over which a position error is corrected.
        max_rate, min_rate: bounds on the playback rate (X seconds per output second).
    """

    def __init__(self, audio: BundleAudio, catch_up_s: float = 0.5, min_rate: float = 0.5, max_rate: float = 2.0):
        self.audio = audio
        self.sr = audio.sr
        self.catch_up_s = catch_up_s
        self.min_rate, self.max_rate = min_rate, max_rate
        self.position_s = 0.0
        self.rate = 1.0

    def seek(self, x_s: float) -> None:
        self.position_s = float(x_s)

    def render(self, n: int, target_s: float, tempo: float, playing: bool = True) -> np.ndarray:
        """Next ``n`` output samples ``(n, channels)`` float32; silence when not playing."""
        if not playing or n == 0:
            return np.zeros((n, self.audio.channels), dtype=np.float32)
        block_s = n / self.sr
        error = target_s - self.position_s
        if abs(error) > 2.0:  # the player jumped: go there
            self.position_s = target_s
            error = 0.0
        rate = float(np.clip(tempo + error / max(self.catch_up_s, block_s), self.min_rate, self.max_rate))
        t = self.position_s * self.sr + np.arange(n) * rate
        first = int(np.floor(t[0]))
        src = self.audio.read(first, int(np.ceil(t[-1])) - first + 2)
        local = t - first
        i = local.astype(np.int64)
        frac = (local - i)[:, None].astype(np.float32)
        out = src[i] * (1.0 - frac) + src[i + 1] * frac
        self.position_s += n * rate / self.sr
        self.rate = rate
        return out.astype(np.float32)
