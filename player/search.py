"""Global search: finds the player anywhere in the piece, at a fixed cost per frame.

The forward filter only looks at a band of states, so a player who restarts a passage,
skips ahead or starts mid-piece would be lost for good. This search keeps the last few
seconds of U (one mean observation per state period) and sweeps the whole piece in
fixed-size slices, one slice per frame: each candidate end state is scored by the
follower's own observation model (the multinomial log-likelihood of U's observations under
X's templates, untempered) along a diagonal ending there, for a few tempo hypotheses. The
per-frame cost is at most the slice size, whatever the piece's length (a 40-minute piece is
swept in about a second; a short one once per state period, as often as the context changes).

The places it proposes are verified by :class:`player.relocator.Relocator` before the
filter moves. docs/DECISIONS.md says why the likelihood and not a spectral similarity.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from player.jump_prior import JumpPrior
from shared.config import check_fields
from shared.spectral import AnalysisParams, QuantizedTemplates


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the global sweep.

    Attributes:
        context_s: seconds of U matched against X.
        slice_states: candidate end states scored per frame at most (fixed cost per
            frame); a short piece is swept once per state period, not faster, since the
            context only changes that often.
        tempos: tempo hypotheses (X seconds per U second).
        margin: how much better (nats per observation) a far place must explain the context
            than the filter's place to be proposed.
        min_jump_s: candidates closer than this to the filter's place (seconds of X) are
            left to the filter; proposed places are at least this far apart.
        min_active: fraction of the context in which the soloist must be playing: silence
            proves nothing.
        candidates: distinct far places proposed per sweep (a passage that recurs can put
            the right place second).
    """

    context_s: float = 2.0
    slice_states: int = 400
    tempos: tuple[float, ...] = (0.8, 0.9, 1.0, 1.12, 1.25)
    margin: float = 0.02
    min_jump_s: float = 3.0
    min_active: float = 0.6
    candidates: int = 3

    def __post_init__(self) -> None:
        check_fields(self, positive=("context_s", "slice_states", "tempos", "candidates"),
                     non_negative=("margin", "min_jump_s"), unit=("min_active",),
                     integers=("slice_states", "candidates"))


@dataclass(frozen=True)
class Candidate:
    """A far place proposed by the search: ``state`` (fractional state index, now) and the
    ``tempo`` hypothesis (X seconds per U second) that matched best there."""

    state: float
    tempo: float


class GlobalSearch:
    """Sweeps the piece for a better place than the filter's; see the module docstring.

    Args:
        templates: X's quantised log templates ``(n_detune, n_states, n_obs_bins)``.
        params: the bundle's analysis parameters.
        config: the sweep's settings.
        room_s: seconds of X a candidate needs after it to be verified (a trial's length
            at the fastest tempo): places closer to the end are not proposed.
        prior: the jump prior: the best place within its near window of the filter's
            place, or at a section's start (:meth:`player.jump_prior.JumpPrior.free`),
            keeps a slot of its own in each sweep, so that far look-alikes cannot crowd it
            out. None: every place competes alike.
    """

    def __init__(self, templates: QuantizedTemplates, params: AnalysisParams, config: SearchConfig | None = None,
                 room_s: float = 1.2 * 1.25, prior: JumpPrior | None = None):
        self.prior = prior
        self.params = params
        self.config = cfg = config or SearchConfig()
        self.templates = templates
        self.cents = np.asarray(params.detune_cents)
        self.n_states = n = templates.n_states
        self.per_state = params.fine_per_coarse
        self.ctx = max(4, int(round(cfg.context_s / params.coarse_period_s)))
        self.max_lag = int(np.ceil(self.ctx * max(cfg.tempos))) + 1
        # the context gains one observation per state period: sweeping faster would score
        # the same context again (a 30-s piece would be swept 5 times over per new observation)
        self.slice = min(cfg.slice_states, -(-n // self.per_state))
        self._k = np.arange(self.ctx)
        self._tempos = np.asarray(cfg.tempos, dtype=np.float64)
        self._lags = np.round(self._k[None, :] * self._tempos[:, None]).astype(np.int64)  # (T, ctx)
        self._rows = np.empty((self.slice + self.max_lag, params.n_obs_bins), dtype=np.float32)
        # the last state holds any long note for ever (a track there cannot move on), so a
        # candidate needs room to be tested: ``room_s`` seconds of X after it
        self._last_candidate = n - 1 - room_s / params.coarse_period_s
        self._apart = cfg.min_jump_s / params.coarse_period_s  # states between two proposed places
        self.reset()

    def reset(self) -> None:
        """Forget U's context and the sweep's places."""
        self.u_obs = np.zeros((self.ctx, self.params.n_obs_bins), dtype=np.float32)  # newest first
        self.u_active = np.zeros(self.ctx, dtype=np.float32)
        self._acc = np.zeros(self.params.n_obs_bins, dtype=np.float64)
        self._acc_n = 0
        self._acc_active = 0
        self._cursor = 0
        self._found: list[tuple[float, int, float, int]] = []  # this sweep's (score, end, tempo, frame)
        self._found_free: list[tuple[float, int, float, int]] = []  # its best free place (see ``prior``)
        self._latest: list[tuple[float, int, float, int]] = []  # the last complete sweep's
        self._frame = 0
        self._detune = int(np.argmin(np.abs(self.cents)))  # the variant nearest X's own tuning

    # ------------------------------------------------------------------ scoring
    def _scores(self, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best-over-tempo mean log-likelihood (nats per observation) of the U context
        ending at each end state ``(m,)``, and the tempo that gave it."""
        w = self.u_active
        total = w.sum()
        if total <= 0:
            return np.full(ends.shape, -np.inf), np.ones(ends.shape)
        lo = max(0, int(ends[0]) - self.max_lag)
        hi = int(ends[-1]) + 1
        rows = self._rows[: hi - lo]
        np.copyto(rows, self.templates.q[self._detune, lo:hi], casting="unsafe")
        # log T = offset + step * q, and each observation sums to 1
        sim = self.templates.offset + self.templates.step * (rows @ self.u_obs.T)  # (states, ctx)
        idx = ends[:, None, None] - self._lags[None, :, :] - lo  # (m, T, ctx)
        sims = sim[np.maximum(idx, 0), self._k[None, None, :]]
        sims[idx < 0] = sim.min()  # before the piece: as bad as the worst place
        per_tempo = (sims @ w) / total  # (m, T)
        best = per_tempo.argmax(axis=1)
        return per_tempo[np.arange(ends.size), best], self._tempos[best]

    def score_at(self, state: float) -> float:
        s = int(min(max(round(state), 0), self.n_states - 1))
        return float(self._scores(np.array([s]))[0][0])

    # ------------------------------------------------------------------ per frame
    def step(self, u: np.ndarray, active: bool, detune_cents: float, position_states: float = 0.0) -> None:
        """Take one fine frame of U (``u`` normalised ``(n_obs_bins,)``, soloist ``active``);
        score the next slice of the piece with the variant nearest ``detune_cents``
        (``position_states``: the filter's place, for the prior's free places)."""
        self._frame += 1
        self._detune = int(np.argmin(np.abs(self.cents - detune_cents)))
        self._acc += u
        self._acc_n += 1
        self._acc_active += int(active)
        if self._acc_n == self.per_state:  # one state period of U: push its mean observation
            self.u_obs[1:] = self.u_obs[:-1]
            self.u_active[1:] = self.u_active[:-1]
            mean = self._acc / max(float(self._acc.sum()), 1e-12)
            self.u_obs[0] = mean
            self.u_active[0] = 1.0 if self._acc_active * 2 > self._acc_n else 0.0
            self._acc[:] = 0.0
            self._acc_n = self._acc_active = 0
        if self.u_active.mean() < self.config.min_active:
            self._latest = []  # found on a context that was mostly silence: proves nothing
            return
        lo = self._cursor
        hi = min(self.n_states, lo + self.slice)
        ends = np.arange(lo, hi)
        scores, tempos = self._scores(ends)
        self._keep_peaks(scores, tempos, ends, self._found, self.config.candidates)
        if self.prior is not None:
            free = self.prior.free(position_states, ends)
            if free.any():
                self._keep_peaks(scores[free], tempos[free], ends[free], self._found_free, 1)
        self._cursor = 0 if hi >= self.n_states else hi
        if not self._cursor:  # a sweep is complete: its places stand until the next one
            extra = [f for f in self._found_free if all(abs(f[1] - g[1]) >= self._apart for g in self._found)]
            self._latest, self._found, self._found_free = extra + self._found, [], []

    def candidates(self, position_states: float) -> list[Candidate]:
        """The latest complete sweep's places, moved on to now at their tempo, that are far
        from the filter's place ``position_states`` and explain the recent frames better
        than it by the margin (best first, possibly none). Asked for only when a
        verification can start, so a place found while one was running is not lost. A
        sweep's places are handed out once (a 40-minute piece takes over a second to sweep
        again: its places would be screened again and again in the meantime)."""
        cfg = self.config
        far: list[tuple[float, float, float]] = []  # (score, state now, tempo)
        for score, state, tempo, at in self._latest:  # (emptied by step() on a silent context)
            there = state + (self._frame - at) * tempo / self.per_state
            apart_s = abs(there - position_states) * self.params.coarse_period_s
            if apart_s >= cfg.min_jump_s and there < self._last_candidate:
                far.append((score, there, tempo))
        if not far:  # the common case: no need to score the filter's place
            return []
        bar = self.score_at(position_states) + cfg.margin
        out = [Candidate(float(min(max(there, 0.0), self.n_states - 1)), float(tempo))
               for score, there, tempo in far if score > bar]
        if out:
            self._latest = []  # verified once: the next sweep finds them again if they hold
        return out

    def _keep_peaks(self, scores: np.ndarray, tempos: np.ndarray, ends: np.ndarray,
                    found: list[tuple[float, int, float, int]], k: int) -> None:
        """Merge this slice's best places into ``found``, the sweep's top ``k`` (in place),
        at least ``min_jump_s`` apart from each other (one place per passage)."""
        order = np.argsort(scores)[::-1][: 8 * k]  # enough to find k separated peaks
        for i in order:
            score = float(scores[i])
            if len(found) == k and score <= found[-1][0]:
                break
            state = int(ends[i])
            clash = [j for j, f in enumerate(found) if abs(f[1] - state) < self._apart]
            if clash:
                if score <= found[clash[0]][0]:
                    continue
                del found[clash[0]]
            found.append((score, state, float(tempos[i]), self._frame))
            found.sort(key=lambda f: -f[0])
            del found[k:]
