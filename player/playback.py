"""The playback controller: from the follower's estimates to a smooth playback rate.

The follower's position moves in small steps and its tempo is noisy at note scale; playing
X at exactly that position would wobble audibly. The controller plays X at the follower's
tempo plus a bounded correction that absorbs the position error over ``catch_up_s``
(a first-order loop, so the error decays exponentially without overshoot), smooths the rate
over ``rate_smoothing_s`` so changes glide, ignores errors inside a dead band, and asks for
a jump (a crossfade in the vocoder) only when the error is too large to catch up smoothly
(the player restarted a passage or skipped ahead).

Latency: the target is where the player will be when the next output sample is *heard*,
i.e. the follower's position extrapolated at its tempo over the output latency.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.config import check_fields, field_error


@dataclass(frozen=True)
class PlaybackConfig:
    """Tuning of the rate controller.

    Attributes:
        catch_up_s: time constant (seconds) over which a position error is corrected.
        max_correction: largest correction, relative to the tempo (0.25 = +-25 %).
        deadband_s: position errors smaller than this (seconds of X) are left alone.
        rate_smoothing_s: time constant (seconds) of the rate's low-pass.
        jump_s: position errors beyond this (seconds of X) are a jump, not a drift.
        min_rate, max_rate: bounds of the playback rate (X seconds per output second).
    """

    catch_up_s: float = 0.5
    max_correction: float = 0.25
    deadband_s: float = 0.01
    rate_smoothing_s: float = 0.06
    jump_s: float = 1.0
    min_rate: float = 0.5
    max_rate: float = 2.0

    def __post_init__(self) -> None:
        check_fields(self, positive=("catch_up_s", "rate_smoothing_s", "jump_s", "min_rate"),
                     non_negative=("max_correction", "deadband_s"))
        if self.max_rate < self.min_rate:
            raise field_error(self, "max_rate", self.max_rate, f">= min_rate ({self.min_rate:g})")


class PlaybackController:
    """Turns (target position, tempo) into a playback rate, block by block."""

    def __init__(self, config: PlaybackConfig | None = None) -> None:
        self.config = config or PlaybackConfig()
        self.reset()

    def reset(self) -> None:
        """Back to rate 1 (the state at construction)."""
        self.rate = 1.0

    def step(self, heard_s: float, target_s: float, tempo: float, block_s: float) -> tuple[float, float | None]:
        """Rate for the next output block, and where to jump to (or None).

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
            return tempo, target_s
        if abs(error) <= cfg.deadband_s:
            error = 0.0
        else:
            error -= cfg.deadband_s if error > 0 else -cfg.deadband_s
        correction = max(-cfg.max_correction, min(cfg.max_correction, error / (cfg.catch_up_s * tempo)))
        wanted = min(max(tempo * (1.0 + correction), cfg.min_rate), cfg.max_rate)
        self.rate += (wanted - self.rate) * min(1.0, block_s / cfg.rate_smoothing_s)
        return self.rate, None
