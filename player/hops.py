"""From blocks of any size and rate to whole analysis hops."""

from __future__ import annotations

import numpy as np
import soxr


class HopStream:
    """Mono blocks at any rate in, whole analysis hops out: a streaming resampler to the
    analysis rate and a FIFO that keeps the remainder for the next block.

    Args:
        sr_in: rate of the blocks pushed (Hz).
        sr: the analysis rate (Hz).
        hop: samples per hop at ``sr``.
    """

    def __init__(self, sr_in: int, sr: int, hop: int) -> None:
        self.sr_in, self.sr, self.hop = int(sr_in), int(sr), int(hop)
        self.reset()

    def reset(self) -> None:
        """Drop the buffered samples and the resampler's history."""
        self._resampler = (None if self.sr_in == self.sr else
                           soxr.ResampleStream(self.sr_in, self.sr, 1, dtype="float32", quality="LQ"))
        self._fifo = np.zeros(0, dtype=np.float32)

    def push(self, mono: np.ndarray) -> np.ndarray:
        """Take float32 ``(n,)`` samples at ``sr_in``; return the completed hops
        ``(k, hop)`` at ``sr`` (``k`` may be 0)."""
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        fifo = np.concatenate([self._fifo, mono]) if self._fifo.size else mono
        k = fifo.size // self.hop
        self._fifo = fifo[k * self.hop:].copy()
        return fifo[: k * self.hop].reshape(k, self.hop)
