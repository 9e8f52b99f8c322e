"""The playback controller: from the scheduled position to a playback rate and seeks.

The output must land X's notes where the soloist will play them, and it must not wobble.
Two tools, each used where it is least audible:

- **The rate**, between and inside notes: X plays at the follower's tempo plus a bounded
  correction that absorbs the position error over ``catch_up_s`` (a first-order loop: the
  error decays without overshoot), errors inside a dead band left alone. The rate slews by
  at most ``max_slew`` (relative) per second, so it never changes by more than
  ``max_slew / 10`` (10 %) within any 100 ms: a glide, never a wobble.
- **A seek at a note's onset** (``onsets_s``, X's onset times): when the output is about to
  play the next onset of X (within ``seek_lead_s``) and is more than ``seek_s`` away from
  where the schedule wants it, it seeks there (the vocoder crossfades) in the last moment of
  the previous note's decay, so the onset itself lands on time; a rate bounded as above
  could take half a second to absorb the same error. Never past the onset: a late output
  plays the onset at once rather than skipping it.
- A **jump** (a seek anywhere) when the error is too large to catch up either way (the
  player restarted a passage or skipped ahead).

Latency: the target is where the player will be when the next output sample is *heard*,
i.e. the schedule extrapolated at its tempo over the output latency (the engine's job).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shared.config import check_fields, field_error


@dataclass(frozen=True)
class PlaybackConfig:
    """Tuning of the rate controller.

    Attributes:
        catch_up_s: time constant (seconds) over which a position error is corrected.
        max_correction: largest correction, relative to the tempo (0.25 = +-25 %).
        deadband_s: position errors smaller than this (seconds of X) are left alone.
        integral_s: time constant (seconds) of the integral term, which learns the rate the
            follower's tempo misses (a tempo estimate 5 % off would otherwise leave the output
            ``0.05 * catch_up_s`` behind for good). 0 disables it.
        max_slew: largest change of the rate per second, relative to it (1.0: 10 % per 100 ms).
        seek_s: at an onset of X, errors beyond this (seconds of X) are removed by a seek.
            0 disables the onset seeks.
        seek_lead_s: how far ahead of an onset (seconds of X) the seek may happen: the
            vocoder's crossfade should be over when the onset plays.
        onset_strength: X's onset strength (in [0, 1]) a peak must reach to count as an
            onset the controller may seek at (0.15: most of the accompaniment's notes,
            docs/DECISIONS.md).
        jump_s: position errors beyond this (seconds of X) are a jump, wherever they fall.
        min_rate, max_rate: bounds of the playback rate (X seconds per output second).
    """

    catch_up_s: float = 0.5
    max_correction: float = 0.25
    deadband_s: float = 0.01
    integral_s: float = 2.0
    max_slew: float = 1.0
    seek_s: float = 0.015
    seek_lead_s: float = 0.1
    onset_strength: float = 0.15
    jump_s: float = 1.0
    min_rate: float = 0.5
    max_rate: float = 2.0

    def __post_init__(self) -> None:
        check_fields(self, positive=("catch_up_s", "max_slew", "jump_s", "min_rate"),
                     non_negative=("max_correction", "deadband_s", "integral_s", "seek_s", "seek_lead_s"),
                     unit=("onset_strength",))
        if self.max_rate < self.min_rate:
            raise field_error(self, "max_rate", self.max_rate, f">= min_rate ({self.min_rate:g})")


class PlaybackController:
    """Turns (target position, tempo) into a playback rate and seeks, block by block.

    Args:
        config: tuning.
        onsets_s: X's onset times (seconds, ascending); empty: no onset seeks.
    """

    def __init__(self, config: PlaybackConfig | None = None, onsets_s: np.ndarray | None = None) -> None:
        self.config = config or PlaybackConfig()
        self.onsets_s = np.sort(np.asarray(onsets_s if onsets_s is not None else [], dtype=np.float64))
        self.reset()

    def reset(self) -> None:
        """Back to rate 1 (the state at construction)."""
        self.rate = 1.0
        self._bias = 0.0  # the integral term: relative rate the tempo misses
        self._sought = float("nan")  # the onset last sought for: one seek per onset, no stutter

    def next_onset(self, x_s: float) -> float:
        """X's first onset after ``x_s`` (seconds; inf if none)."""
        i = int(np.searchsorted(self.onsets_s, x_s, side="right"))
        return float(self.onsets_s[i]) if i < self.onsets_s.size else float("inf")

    def step(self, heard_s: float, target_s: float, tempo: float, block_s: float) -> tuple[float, float | None]:
        """Rate for the next output block, and where to seek first (or None).

        Args:
            heard_s: X time (s) at the output head (what plays next).
            target_s: X time (s) the output head should be at.
            tempo: the player's tempo (X seconds per U second).
            block_s: duration of the next output block (s).
        """
        cfg = self.config
        tempo = min(max(tempo, cfg.min_rate), cfg.max_rate)
        error = target_s - heard_s
        if abs(error) > cfg.jump_s:
            self.rate = tempo
            self._bias = 0.0
            return tempo, target_s
        seek_to = None
        if cfg.seek_s > 0.0 and abs(error) > cfg.seek_s:
            onset = self.next_onset(heard_s)
            # the onset plays within this block or the seek lead: seek now, in the decay before it
            if onset - heard_s <= self.rate * block_s + cfg.seek_lead_s and onset != self._sought:
                self._sought = onset
                seek_to = min(target_s, onset - 1e-3)
                if abs(seek_to - heard_s) > cfg.seek_s:
                    error = target_s - seek_to
                    heard_s = seek_to
                else:
                    seek_to = None
        if abs(error) <= cfg.deadband_s:
            error = 0.0
        else:
            error -= cfg.deadband_s if error > 0 else -cfg.deadband_s
        relative = error / (cfg.catch_up_s * tempo)
        if cfg.integral_s > 0.0:
            self._bias = max(-cfg.max_correction, min(cfg.max_correction,
                                                      self._bias + relative * block_s / cfg.integral_s))
        correction = max(-cfg.max_correction, min(cfg.max_correction, relative + self._bias))
        wanted = min(max(tempo * (1.0 + correction), cfg.min_rate), cfg.max_rate)
        slew = cfg.max_slew * block_s * self.rate
        self.rate = min(max(wanted, self.rate - slew), self.rate + slew)
        return self.rate, seek_to
