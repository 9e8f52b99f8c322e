"""How likely a jump is: the prior the relocator weighs a far place's evidence against.

Musicians restart a few bars back, skip a passage or go to the start of a movement; they
do not teleport to a place twenty minutes away that sounds alike (a repeat, a sequence, a
transposed recapitulation). In a whole piece the global search finds thousands of such
places, and some explain a few seconds of playing as well as the right one or better. So
a jump is a rare event with a prior (log odds, nats, against staying):

- a jump of ``d`` seconds costs nothing beyond the relocator's margin up to ``free_s``
  (a restart a bar or two back), and ``far_nats * log2(1 + (|d| - free_s) / near_s)``
  nats beyond (at most ``max_nats``), ``near_s`` being ``near_back_s`` back and
  ``near_ahead_s`` ahead: a power law in the distance. A skip over a passage costs a few
  nats, a place twenty minutes back (80 nats) three and a half times as much as one a
  minute back;
- the start of a section (X's music after a silence of ``section_gap_s`` or more:
  movements, the piece's start) costs at most ``section_nats``, however far:
  musicians start movements. So does a place the player would have reached from a
  section's start since they last paused (``pause_s`` or more): the search proves a
  place only seconds after the player began there;
- a player who has not yet been followed for ``tenure_s`` seconds of playing since the
  start has no record to defend: the cost is scaled by that tenure. (A track that
  follows the wrong music from the start earns a record all the same, unless it is found
  failing (below) before its tenure is complete: then it never explained the playing (the
  player began elsewhere than where it waited) and its tenure starts again from nothing,
  so that a far place costs no more than a near one until a relocation or a record says
  where the player is. A start in the middle of the piece without ``--start`` is still found later than
  without the prior; docs/DECISIONS.md.) After a far jump the relocator lets the player go
  back where they were for free for a while: a wrong jump is undone at once;
- a track that is failing has no record to defend either: when for ``lost_window_s``
  some far place has explained the last seconds of playing better than the track's own
  place (the search's long context, :meth:`player.search.GlobalSearch.sustained_lead`),
  by ``lost_from`` nats per observation or more, the cost falls, and it is gone at
  ``lost_at``. A right track meets look-alikes that lead for a sweep or two, rarely by
  that much for that long.

The relocator demands this many nats of lead on top of its margin before it moves the
player, and the search keeps a slot for the best free (near or section-start) place so
that far look-alikes cannot crowd it out. The cost is O(log sections) per candidate:
flat in the piece's length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shared.config import check_fields, field_error
from shared.spectral import QuantizedTemplates
from shared.stats import linear_quantile


@dataclass(frozen=True)
class JumpPriorConfig:
    """The prior on jumps (see the module docstring).

    Attributes:
        free_s: a jump up to this far (seconds of X) costs nothing.
        near_back_s: the scale of the cost backwards (seconds of X): a restart this far
            back (beyond ``free_s``) costs ``far_nats``. Jumps within it are *near*: the
            search keeps a slot for the best near place.
        near_ahead_s: the same ahead (skips).
        section_gap_s: X silent at least this long (seconds) ends a section; the music
            after it starts one.
        section_db: X counts as silent this far (dB) under its loud level (the 95th
            percentile of its frames' power).
        noise_db: X counts as silent too this far (dB) under its loud level where its
            spectrum has no shape: within ``noise_flat_nats`` of a uniform template's
            entropy (a noise floor; 0 nats: level only).
        noise_flat_nats: see ``noise_db``.
        section_reach_s: a place this close (seconds of X) to a section's start counts as
            that start.
        section_nats: the most a jump to a section's start costs (nats).
        far_nats: cost per doubling of ``1 + (|d| - free_s) / near_s`` (nats).
        max_nats: the most a jump costs (nats).
        tenure_s: seconds of playing followed since the start before the cost applies in
            full.
        unearned_failing_resets: a track found failing (see ``lost_from``) before its
            tenure is complete never explained the playing (the player began elsewhere than
            where it waited): its tenure starts again from nothing.
        undo_s: for this long (seconds of U) after a far jump, going back to where the
            player was believed to be (within the near window) costs nothing.
        lost_window_s: seconds over which a far place's lead must hold for the track to
            count as failing.
        lost_from: the sustained lead (nats per observation) from which the cost falls.
        lost_at: the sustained lead at which the cost is gone.
        pause_s: a silence of the player at least this long (seconds of U) ends a run of
            playing; a jump to where a run begun at a section's start would be now costs
            what that start costs.
    """

    free_s: float = 5.0
    near_back_s: float = 30.0
    near_ahead_s: float = 20.0
    section_gap_s: float = 2.0
    section_db: float = 45.0
    noise_db: float = 30.0
    noise_flat_nats: float = 0.14
    section_reach_s: float = 3.0
    section_nats: float = 15.0
    far_nats: float = 15.0
    max_nats: float = 90.0
    tenure_s: float = 15.0
    unearned_failing_resets: bool = True
    undo_s: float = 15.0
    lost_window_s: float = 3.0
    lost_from: float = 0.1
    lost_at: float = 0.25
    pause_s: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self, positive=("near_back_s", "near_ahead_s", "section_gap_s", "section_db", "lost_window_s"),
                     non_negative=("free_s", "section_reach_s", "noise_db", "noise_flat_nats", "section_nats", "far_nats",
                                   "max_nats", "tenure_s",
                                   "undo_s", "lost_from", "pause_s"))
        if self.lost_at <= self.lost_from:
            raise field_error(self, "lost_at", self.lost_at, f"> lost_from ({self.lost_from:g})")


def silent_states(power: np.ndarray, below_db: float, templates: QuantizedTemplates | None = None,
                  noise_db: float = 0.0, noise_flat_nats: float = 0.0, chunk: int = 1024) -> np.ndarray:
    """Which states of X are silent: bool ``(n_states,)``, True where the state's power is
    ``below_db`` or more under X's loud level (the 95th percentile of the states' power, dB),
    or ``noise_db`` or more under it with a template (``templates``' middle detune variant)
    within ``noise_flat_nats`` of the uniform distribution's entropy: a recording's noise
    floor between movements (a spectrum with no shape; music's templates stay 0.18 nats or
    more under uniform). ``power``: the states' power, float ``(n_states,)``
    (:func:`shared.spectral.frame_power` of X's magnitude spectra: the bundle's
    ``state_power``); the templates are read in chunks of ``chunk`` states."""
    n = power.shape[0]
    level = 10.0 * np.log10(power + 1e-20)
    loud = linear_quantile(level, 0.95) if n else 0.0
    silent = level < loud - below_db
    if templates is not None and noise_flat_nats > 0:
        quiet = np.flatnonzero(~silent & (level < loud - noise_db))
        uniform = math.log(templates.q.shape[2])
        middle = templates.q.shape[0] // 2
        for a in range(0, quiet.size, chunk):
            rows = quiet[a:a + chunk]
            log_t = templates.dequantize(middle, rows)
            p = np.exp(log_t)
            entropy = -(p * log_t).sum(axis=1) / p.sum(axis=1)
            silent[rows] = entropy > uniform - noise_flat_nats
    return silent


def section_starts(silent: np.ndarray, period_s: float, gap_s: float) -> np.ndarray:
    """States (int64 ``(k,)``, ascending, always starting with 0) where X's music starts
    again after at least ``gap_s`` seconds of silence (``silent``: bool ``(n_states,)``,
    from :func:`silent_states`)."""
    n = silent.shape[0]
    need = max(1, int(round(gap_s / period_s)))
    # runs of silence: their ends are where sound resumes
    edges = np.diff(np.concatenate([[0], silent.astype(np.int8), [0]]))
    run_start, run_end = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    resumes = run_end[(run_end - run_start >= need) & (run_end < n)]
    # (ascending already: runs' ends; np.unique's first call would import numpy.ma, 10 ms of start-up)
    return np.concatenate([[0], resumes[resumes > 0]]).astype(np.int64)


class JumpPrior:
    """The cost (nats) of moving the player from one place of X to another.

    Args:
        sections: section starts (states, ascending; see :func:`section_starts`).
        period_s: seconds of X per state.
        config: the prior's settings.
    """

    def __init__(self, sections: np.ndarray, period_s: float, config: JumpPriorConfig | None = None) -> None:
        self.config = cfg = config or JumpPriorConfig()
        self.sections = np.asarray(sections, dtype=np.float64)
        self.period_s = float(period_s)
        self._reach = cfg.section_reach_s / period_s

    def free(self, from_state: float, to_states: np.ndarray) -> np.ndarray:
        """Whether a jump from ``from_state`` to each of ``to_states`` (states ``(m,)``) is
        near (within ``near_back_s`` back or ``near_ahead_s`` ahead) or to a section's
        start: the places the search keeps a slot for (bool ``(m,)``)."""
        to = np.asarray(to_states, dtype=np.float64)
        return self.near(from_state, to) | self.at_section_start(to)

    def near(self, from_state: float, to_states: np.ndarray) -> np.ndarray:
        """Whether each jump stays within the near window (bool ``(m,)``)."""
        cfg = self.config
        d_s = (np.asarray(to_states, dtype=np.float64) - from_state) * self.period_s
        return (d_s >= -cfg.near_back_s) & (d_s <= cfg.near_ahead_s)

    def at_section_start(self, states: np.ndarray) -> np.ndarray:
        """Whether each place lies within ``section_reach_s`` of a section's start."""
        to = np.asarray(states, dtype=np.float64)
        i = np.searchsorted(self.sections, to)
        after = self.sections[np.minimum(i, self.sections.size - 1)]
        before = self.sections[np.maximum(i - 1, 0)]
        return np.minimum(np.abs(to - after), np.abs(to - before)) <= self._reach

    def cost(self, from_state: float, to_state: float, tenure_s: float, lead: float = 0.0,
             began: float | None = None) -> float:
        """Nats of evidence a jump from ``from_state`` to ``to_state`` must bring on top of
        the relocator's margin, for a track with ``tenure_s`` seconds of playing explained
        and some far place's sustained ``lead`` over it (nats per observation); ``began``:
        where the player's present run of playing began if they are at ``to_state`` now
        (states; a section's start there makes the jump as cheap as one to it)."""
        cfg = self.config
        d_s = (to_state - from_state) * self.period_s
        scale = cfg.near_ahead_s if d_s > 0 else cfg.near_back_s
        beyond = max(0.0, abs(d_s) - cfg.free_s)
        full = min(cfg.max_nats, cfg.far_nats * float(np.log2(1.0 + beyond / scale)))
        places = np.array([to_state] if began is None else [to_state, began])
        if self.at_section_start(places).any():
            full = min(full, cfg.section_nats)
        return full * self.trust(tenure_s, lead)

    def trust(self, tenure_s: float, lead: float = 0.0) -> float:
        """How far (0-1) the track's record counts: grown over ``tenure_s`` seconds of playing
        explained, gone once some far place's sustained ``lead`` over it (nats per
        observation) says it is failing."""
        cfg = self.config
        trust = 1.0 if cfg.tenure_s <= 0 else min(1.0, tenure_s / cfg.tenure_s)
        return trust * self.failing_scale(lead)

    def failing_scale(self, lead: float) -> float:
        """The part (0-1) of :meth:`trust` that a far place's sustained ``lead`` over the
        track (nats per observation) leaves: 1 up to ``lost_from``, 0 from ``lost_at``."""
        cfg = self.config
        return min(1.0, max(0.0, (cfg.lost_at - lead) / (cfg.lost_at - cfg.lost_from)))
