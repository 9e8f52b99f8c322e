"""Where the accompaniment should be: the follower's belief, dead-reckoned through held notes.

The follower's belief is sharp just after the soloist starts a note: the spectrum changes and
the onset term pins the new note's beginning. Through the note that follows it has nothing
to time by (a held note's spectrum is the same at every place of it) and it drifts ahead of
the soloist: the forward transitions push its mass on, and the recording's places where the
accompaniment under the same pitch is thinner (the end of the note, usually) explain the
solo spectrum better. Measured on the corpus, the belief is 5-30 ms ahead of the soloist
in the first 50 ms after an onset and 30-120 ms ahead 0.4 s into a note (docs/DECISIONS.md).

So the position the output is scheduled by is the belief *anchored* at each detected onset
of the soloist (a peak of U's onset strength, ``anchor_delay_frames`` later, when the belief
has moved onto the new note) and carried on from there until the next onset or ``hold_s``
of playing (dead reckoning; through a rest, until the soloist plays again). While the
soloist plays it goes at a tempo of its own: a regression of the belief on the last
``tempo_memory_s`` of playing, shrunk towards the recording's tempo, or the one the player said they practise at
(``tempo_prior_weight``).
The follower's tempo, a regression over six seconds that keeps its motion prior steady,
lags a tempo that changes (a slow movement's *a tempo* after a deep ritardando left the
reckoning 15-20 % slow and the accompaniment late at every note); through a rest the
reckoning goes at the follower's (which fades to the recording's in a tutti). The belief
can still hold the schedule back (the soloist is slower: the next note's spectrum has not
come, the belief waits at the end of the note) but not push it ahead, except by more than
``max_lead_s``: then the belief moved for a reason the onsets did not show (a relocation,
a restart, a player far ahead) and it is followed at once.

Units: positions in seconds of X; times in seconds of U; tempo in X seconds per U second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from player.follower import TempoTracker
from player.stages import Frame
from shared.config import check_fields


@dataclass(frozen=True)
class AnticipateConfig:
    """Tuning of :class:`Anticipator`.

    Attributes:
        onset_threshold: U onset strength (in [0, 1]) a peak must reach to count as the
            soloist starting a note. 0 disables the anchoring (the belief is used as is).
        anchor_delay_frames: frames after the onset's peak at which the belief is taken as
            the anchor (it needs a frame or two to move onto the new note).
        hold_s: longest dead reckoning (seconds of U the soloist plays, at the recording's
            tempo; ``hold_s / tempo`` for a player expected at another) without a new
            onset; then the anchor follows the belief again. A rest does not count: the
            belief has nothing but the tempo to go by there either, and a note's release
            (its tail matched to the music after it) can move it without cause.
        max_lead_s: the belief may run ahead of the dead reckoning by this much (seconds of
            X) before it is taken as right.
        tempo_memory_s: time constant (seconds of playing) of the regression of the
            belief on time that gives the tempo the reckoning goes at while the soloist
            plays (through a rest it goes at the follower's).
        tempo_prior_weight: pull of that tempo towards the recording's (seconds of
            regression data, as :class:`player.follower.TempoTracker`).
    """

    onset_threshold: float = 0.4
    anchor_delay_frames: int = 2
    hold_s: float = 1.0
    max_lead_s: float = 0.5
    tempo_memory_s: float = 1.5
    tempo_prior_weight: float = 10.0

    def __post_init__(self) -> None:
        check_fields(self, positive=("hold_s", "max_lead_s", "tempo_memory_s"),
                     non_negative=("anchor_delay_frames", "tempo_prior_weight"),
                     unit=("onset_threshold",), integers=("anchor_delay_frames",))


class Anticipator:
    """Per frame: the position (seconds of X, at the frame's report time) the accompaniment
    is scheduled by (:attr:`x_s`), from the follower's belief and U's onset strength.

    Call :meth:`process_frame` after the follower with the frame (reads ``onset``,
    ``active``, ``now_s``) and the follower's state (``x_s``; ``tempo``, which the reckoning
    goes at through a rest).

    Args:
        config: tuning.
        frame_s: the analysis frame period (seconds; the tempo regression's step).
        min_tempo, max_tempo: bounds of the reckoning's tempo (X seconds per U second).
        tempo: the tempo the player is expected to play at (the regression's prior; see
            :class:`player.follower.Follower`); a slower player's notes last longer, so the
            reckoning holds as long in the recording's music (``hold_s / tempo``).
    """

    def __init__(self, config: AnticipateConfig | None = None, frame_s: float = 0.02,
                 min_tempo: float = 0.5, max_tempo: float = 2.0, tempo: float = 1.0) -> None:
        self.config = cfg = config or AnticipateConfig()
        self._tempo = TempoTracker(cfg.tempo_memory_s, cfg.tempo_prior_weight, min_tempo, max_tempo, frame_s,
                                   centre=min(max(tempo, min_tempo), max_tempo))
        self._hold_s = cfg.hold_s / self._tempo.centre
        self.reset()

    def reset(self) -> None:
        """Forget the anchor, the onset history and the tempo (a restart, a relocation)."""
        self.x_s = math.nan
        self._tempo.reset(self._tempo.centre)
        self._reckoned = math.nan  # the anchor carried on at the tempo (seconds of X); NaN: no anchor
        self._last_s = math.nan  # U time of the previous frame
        self._playing_s = 0.0  # seconds of playing since the anchor
        self._prev = (0.0, 0.0)  # onset strength of the last two frames (older first)
        self._countdown = -1  # frames until the anchor is taken; -1: none pending

    def process_frame(self, frame: Frame, belief_x_s: float, tempo: float) -> float:
        """Update with one frame; return (and keep in :attr:`x_s`) the scheduled position."""
        cfg = self.config
        older, last = self._prev
        onset = float(frame.onset) if frame.active else 0.0
        if cfg.onset_threshold > 0.0 and last >= cfg.onset_threshold and last >= older and last > onset:
            self._countdown = max(0, cfg.anchor_delay_frames - 1)  # the peak was the last frame
        self._prev = (last, onset)
        now = frame.now_s
        step_s = now - self._last_s if math.isfinite(self._last_s) else 0.0
        self._last_s = now
        # carried on at the soloist's recent tempo while they play; through a rest at the
        # follower's (fading to the recording's in a tutti), with nothing else to time by
        if frame.active:
            tempo = self._tempo.add(now, belief_x_s)
            self._playing_s += step_s
        self._reckoned += self.reckoning_tempo(frame, tempo) * step_s
        if self._countdown == 0 or not math.isfinite(self._reckoned) or self._playing_s > self._hold_s:
            self._reckoned, self._playing_s = self.anchor_position(frame, belief_x_s), 0.0
        if self._countdown >= 0:
            self._countdown -= 1
        if belief_x_s - self._reckoned > cfg.max_lead_s:  # the belief moved for a reason of its own
            self._reckoned, self._playing_s = belief_x_s, 0.0
        self.x_s = min(belief_x_s, self._reckoned) if self.belief_holds_back else self._reckoned
        return self.x_s

    # seams for benchmarks.heard_oracles, which puts the truth here to measure what each part costs
    belief_holds_back = True  # the schedule never runs ahead of the belief (see the module docstring)

    def anchor_position(self, frame: Frame, belief_x_s: float) -> float:
        """Where the reckoning starts again at an anchor (seconds of X): the belief."""
        return belief_x_s

    def reckoning_tempo(self, frame: Frame, tempo: float) -> float:
        """The tempo the reckoning goes at over this frame (X seconds per U second)."""
        return tempo
