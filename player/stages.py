"""The interfaces between the engine's stages.

One analysis frame of U (``fine_period_s``, 20 ms) travels through the stages as a
:class:`Frame`: each stage reads what the stages before it wrote and writes its own
result, in this order (:class:`player.engine.Engine` wires them)::

    samples -> SpectrumStage       -> mag               (shared.spectral.OnlineSpectrum)
            -> LeakCanceller       -> mag               (the engine's own output removed)
            -> ActivityDetector    -> active, level_db, floor_db, room_noise
            -> NoiseProfile        -> clean, evidence_scale   (the room's noise removed)
            -> ObservationStage    -> obs, onset        (what the follower compares with X)
            -> Follower            -> its state (position, tempo, confidence, detune)
            -> SoloPresence        -> how surely the soloist sounds (for the separation)
            -> Relocator           -> moves the follower after a verified jump

Every stage is a :class:`FrameStage`: one per-frame method, ``process_frame(frame)``, and
``reset()``, which returns it to its state at construction. The tracks the relocator
drives (the main follower and its shadows) are :class:`Track`\\ s. Stages are stateful and
allocate nothing per frame on the live path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from player.follower import FollowerState

_EMPTY = np.zeros(0, dtype=np.float32)


@dataclass(eq=False)
class Frame:
    """One analysis frame of U on its way through the stages (the engine reuses one
    instance; a stage's arrays may be views of its own buffers, valid until its next
    frame).

    Attributes:
        samples: float32 ``(fine_hop,)`` the frame's new samples at the analysis rate.
        end_s: U time of the frame's last sample (seconds).
        now_s: U time at which the belief is reported (seconds, >= ``end_s``: the end of the
            input block, later when the input path buffers).
        mag: float32 ``(n_bins,)`` magnitude spectrum (after the leak canceller).
        level_db: level of the observation band (dBFS).
        floor_db: the activity gate's noise floor (dBFS).
        active: whether the soloist is playing.
        room_noise: the frame is the room alone (silent, quiet and spectrally flat).
        clean: float32 ``(n_bins,)`` magnitude with the room's noise subtracted.
        evidence_scale: multiplies the follower's likelihood temper (below 1 when denoised).
        obs: float32 ``(n_obs_bins,)`` normalised observation (sums to 1).
        onset: onset strength in [0, 1].
        evidence_before: the main track's log evidence before this frame (nats).
        position_before: the main track's position before this frame (states).
    """

    samples: np.ndarray = field(default_factory=lambda: _EMPTY)
    end_s: float = 0.0
    now_s: float = 0.0
    mag: np.ndarray = field(default_factory=lambda: _EMPTY)
    level_db: float = -np.inf
    floor_db: float = -np.inf
    active: bool = False
    room_noise: bool = False
    clean: np.ndarray = field(default_factory=lambda: _EMPTY)
    evidence_scale: float = 1.0
    obs: np.ndarray = field(default_factory=lambda: _EMPTY)
    onset: float = 0.0
    evidence_before: float = 0.0
    position_before: float = 0.0


@runtime_checkable
class FrameStage(Protocol):
    """A stage of the per-frame chain (see the module docstring)."""

    def process_frame(self, frame: Frame) -> None:
        """Read this stage's inputs from ``frame``, update the stage, write its outputs."""

    def reset(self) -> None:
        """Forget everything heard: the state at construction."""


@runtime_checkable
class Track(Protocol):
    """A follower the relocator drives: the main track, the home track or a candidate's
    shadow (all :class:`player.follower.Follower` in the engine; scripted in tests).

    Attributes:
        log_evidence: ``sum log p(u_t | u_<t)`` over the frames since its last reset (nats).
        position_states: its position (fractional state index).
        started: whether it is following (it has heard the soloist, or was placed).
        last_change: Hellinger distance of its last observation to the one before (None
            after a reset): large at a note's onset.
        state: what it believes after its last frame (``tempo``, ``detune_cents``, ...).
    """

    log_evidence: float
    state: FollowerState
    started: bool
    last_change: float | None

    @property
    def position_states(self) -> float: ...

    def process_frame(self, frame: Frame) -> None:
        """Take one frame (``obs``, ``active``, ``end_s``, ``now_s``, ``evidence_scale``,
        ``onset``)."""

    def relocate(self, state: float, spread_states: float = 2.0, tempo: float | None = None) -> None:
        """Move its belief to ``state``, spread by ``spread_states``, optionally at ``tempo``."""

    def adopt(self, other: Track) -> None:
        """Take over ``other``'s belief (position, posterior, tempo, detune)."""
