"""Global search: finds the player anywhere in the piece, at a fixed cost per frame.

The forward filter only looks at a band of states, so a player who restarts a passage,
skips ahead or starts mid-piece would be lost for good. This search keeps the last few
seconds of U (one mean observation per state period) and sweeps the whole piece in
fixed-size slices, one slice per frame: each candidate end state is scored by the
follower's own observation model (the multinomial log-likelihood of U's observations under
X's templates, untempered) along a diagonal ending there, for a few tempo hypotheses. The
per-frame cost is at most the slice size, whatever the piece's length (a 40-minute piece is
swept in about a second; a short one once per state period, as often as the context changes).

Two seconds are enough to find a restart or a skip, not to tell a place from its
look-alikes in a whole piece: there, the right place often comes second to fourth. So each
sweep keeps its ``pool`` best places and scores them again, a few per frame, on a *long*
context (``long_context_s``, the recent observations weighted more, ``recency_s``): the best
monotone path through X ending at the place, at any local tempo (a dynamic programme).
Far places are proposed in that order, and only if they explain the long context better
than the filter's own place; a near place or a movement's start (the prior's free places)
on the short context alone, since a restart leaves the long context straddling the jump.
How much better the best far place explains the long context than the filter's place (the
*lead*, nats per observation) tells a lost track from a right one with look-alikes
(:meth:`GlobalSearch.sustained_lead`).

A state's similarity to an observation costs ``n_obs_bins`` multiply-adds and is computed
once; a piece swept within a state period needs one new observation per state per sweep, a
longer piece more (a 40-minute one 12), so its sweep's cost would grow with its length. A
long piece is therefore swept on band energies (:mod:`player.bands`, a quarter of the
cost), and the places it keeps are scored again at full resolution, within a few states of
where the bands put them and on the context of the sweep's end, before anything is
compared or proposed.

The places it proposes are verified by :class:`player.relocator.Relocator` before the
filter moves. docs/DECISIONS.md says why the likelihood and not a spectral similarity.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from player.bands import BandTemplates
from player.jump_prior import JumpPrior
from shared.config import check_fields
from shared.kernels import kernel
from shared.spectral import AnalysisParams, QuantizedTemplates


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the global sweep.

    Attributes:
        context_s: seconds of U matched against X (more for a player expected slower than
            the recording, see :class:`GlobalSearch`).
        slice_states: candidate end states scored per frame at most (fixed cost per
            frame); a short piece is swept once per state period, not faster, since the
            context only changes that often.
        tempos: tempo hypotheses (X seconds per U second), relative to the tempo the player
            is expected to play at (see :class:`GlobalSearch`).
        margin: how much better (nats per observation) a far place must explain the context
            than the filter's place to be proposed.
        min_jump_s: candidates closer than this to the filter's place (seconds of X) are
            left to the filter; proposed places are at least this far apart.
        min_active: fraction of the context in which the soloist must be playing: silence
            proves nothing.
        candidates: distinct far places proposed per sweep (a passage that recurs can put
            the right place second).
        pool: the best places per sweep scored again on the long context.
        long_context_s: seconds of U in the long context.
        recency_s: an observation this old weighs ``1/e`` of the newest in the long context.
        rescore_per_frame: places scored on the long context per frame (spreads the cost).
        screen_bands_per_octave: bands an octave of the screening sweep of a piece that takes
            longer than a state period to sweep (see the module docstring); 0: every
            piece is swept at full resolution.
        screen_keep: a screening sweep keeps this many times ``pool`` places (and of the
            free places) for their full-resolution scores, which choose the ``pool``.
    """

    context_s: float = 2.0
    slice_states: int = 400
    tempos: tuple[float, ...] = (0.8, 0.9, 1.0, 1.12, 1.25)
    margin: float = 0.02
    min_jump_s: float = 3.0
    min_active: float = 0.6
    candidates: int = 3
    pool: int = 8
    long_context_s: float = 10.0
    recency_s: float = 3.0
    rescore_per_frame: int = 2
    screen_bands_per_octave: int = 24
    screen_keep: int = 2

    def __post_init__(self) -> None:
        check_fields(self, positive=("context_s", "slice_states", "tempos", "candidates", "pool", "long_context_s",
                                     "recency_s", "rescore_per_frame", "screen_keep"),
                     non_negative=("margin", "min_jump_s", "screen_bands_per_octave"), unit=("min_active",),
                     integers=("slice_states", "candidates", "pool", "rescore_per_frame", "screen_bands_per_octave",
                               "screen_keep"))


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
        tempo: the tempo the player is expected to play at (X seconds per U second): the
            tempo hypotheses are ``config.tempos`` times it, and below 1 the short context
            is ``config.context_s / tempo`` long.
        prior: the jump prior: the best place within its near window of the filter's
            place, or at a section's start (:meth:`player.jump_prior.JumpPrior.free`),
            keeps a slot of its own in each sweep, so that far look-alikes cannot crowd it
            out, and is proposed on the short context alone. None: every place competes
            alike.
    """

    def __init__(self, templates: QuantizedTemplates, params: AnalysisParams, config: SearchConfig | None = None,
                 room_s: float = 1.2 * 1.25, prior: JumpPrior | None = None, tempo: float = 1.0):
        self.prior = prior
        self.params = params
        self.config = cfg = config or SearchConfig()
        self.templates = templates
        self.cents = np.asarray(params.detune_cents)
        self._cents = [float(c) for c in self.cents]
        self.n_states = n = templates.n_states
        self._states = np.arange(n, dtype=np.int64)  # (slices of it: a slice's end states)
        self.per_state = params.fine_per_coarse
        # a player expected slower than the recording covers less of its music in the same
        # seconds: the context is lengthened to hold as much of it (never shortened: a
        # faster player's 2 s hold more music, and fewer observations are noisier)
        ctx_s = cfg.context_s / min(float(tempo), 1.0)
        self.ctx = max(4, int(round(ctx_s / params.coarse_period_s)))
        self.n_long = max(self.ctx, int(round(cfg.long_context_s / params.coarse_period_s)))
        self._tempos = np.asarray(cfg.tempos, dtype=np.float64) * float(tempo)
        self.max_lag = int(np.ceil(self.ctx * self._tempos.max())) + 1
        # the context gains one observation per state period: sweeping faster would score
        # the same context again (a 30-s piece would be swept 5 times over per new observation)
        self.slice = min(cfg.slice_states, -(-n // self.per_state))
        self._lags = np.round(np.arange(self.ctx)[None, :] * self._tempos[:, None]).astype(np.int64)  # (T, ctx)
        # the templates' codes, read as they are, and each state's penalty in codes
        self._codes = np.ascontiguousarray(templates.q, dtype=np.uint8)
        self._penalty_codes = (np.zeros(n, dtype=np.float32) if templates.penalty is None else
                               (templates.penalty / np.float32(templates.step)).astype(np.float32))
        self._sims = _ContextSimilarities(n, self.ctx)
        # a piece that takes longer than a state period to sweep is screened on bands
        screen = cfg.screen_bands_per_octave > 0 and n > self.slice * self.per_state
        self._bands = BandTemplates(templates, params, cfg.screen_bands_per_octave) if screen else None
        self._band_sims = _ContextSimilarities(n, self.ctx) if screen else None
        self._keep = cfg.screen_keep if screen else 1  # places a sweep keeps per place it hands on
        self._columns = np.empty(self.ctx, dtype=np.int64)  # the cache slot (row) of each age, newest first
        self._best = np.empty(self.slice)  # a slice's scores and the index of their tempos
        self._which = np.empty(self.slice, dtype=np.int64)
        # the long context: X states a path may cover (tempo up to 1.6 on average), and the
        # weight of each observation by its age (newest first)
        self._long_rows = int(np.ceil(1.6 * self.n_long)) + 1
        self._recency = np.exp(-np.arange(self.n_long) * params.coarse_period_s / cfg.recency_s)
        self._long_buf = np.empty((self._long_rows, params.n_obs_bins), dtype=np.float32)
        self._long_sim = np.empty((self._long_rows, self.n_long), dtype=np.float32)
        self._dp = np.empty((2, self._long_rows))
        # the last state holds any long note for ever (a track there cannot move on), so a
        # candidate needs room to be tested: ``room_s`` seconds of X after it
        self._last_candidate = n - 1 - room_s / params.coarse_period_s
        self._apart = cfg.min_jump_s / params.coarse_period_s  # states between two proposed places
        self._lead_keep = int(round(30.0 / params.fine_period_s))  # frames of playing of lead history kept at most
        # which states are a section's start, for the prior's free places (looked up per slice)
        self._at_section_start = prior.at_section_start(np.arange(n)) if prior is not None else None
        self.reset()

    def reset(self) -> None:
        """Forget U's context, the sweep's places and the leads."""
        self.u_obs = np.zeros((self.n_long, self.params.n_obs_bins), dtype=np.float32)  # newest first
        self.u_bands = np.zeros((self.ctx, self._bands.n_bands if self._bands else 0), dtype=np.float32)
        self.u_active = np.zeros(self.n_long, dtype=np.float32)
        self._ctx_active = 0.0  # the sum of u_active over the short context
        self._acc = np.zeros(self.params.n_obs_bins, dtype=np.float64)
        self._acc_n = 0
        self._acc_active = 0
        self._cursor = 0
        self._found = _Places(self.config.pool * self._keep)  # this sweep's best places
        self._found_free = _Places(self._keep)  # its best free place (see ``prior``)
        # the last sweep's places to propose (score, state, tempo, frame): free and far ones
        self._latest_free: list[tuple[float, float, float, int]] = []
        self._latest_far: list[tuple[float, float, float, int]] = []
        self._frame = 0
        self._played = 0  # active frames so far (the clock the leads are kept on)
        self._detune = self._nearest_variant(0.0)  # the variant nearest X's own tuning
        self._n_obs = 0  # observations pushed so far (the newest is numbered this)
        self._sims.reset()
        if self._band_sims is not None:
            self._band_sims.reset()
        self._columns[:] = -np.arange(self.ctx) % self.ctx
        # the long context's scoring of a sweep's places, spread over frames
        self._snap_u = np.zeros_like(self.u_obs)
        self._snap_w = np.zeros(self.n_long)
        self._snap_detune = self._detune
        self._queue: list[tuple[float, float, float, int]] = []  # far places (short score, state, tempo, frame) to score
        self._scored: list[float] = []  # their long scores so far (the filter's place first)
        self._waiting_free: list[tuple[float, float, float, int]] = []  # the same sweep's free places
        self._leads: deque[tuple[int, float]] = deque()  # (frames of playing then, lead) of each scored sweep

    def warm_up(self) -> None:
        """Load the compiled kernels now, not in the first audio callback that sweeps (see
        :meth:`player.follower.Follower.warm_up`); the search's state is left as it was."""
        sim = np.zeros((3, self.ctx), dtype=np.float32)
        ends = np.arange(2, 3, dtype=np.int64)
        _context_scores(sim, ends, self._lags, np.arange(self.ctx), 0, np.ones(self.ctx, dtype=np.float32), 1.0,
                        self._best, self._which)
        _Places(1).merge(np.zeros(1), np.ones(1), ends, 0, self._apart)
        _best_path(np.zeros((2, self.n_long), dtype=np.float32), self._snap_w, self._recency, self._dp)
        _store_similarities(np.zeros((1, 1), dtype=np.float32), self._columns, 0, sim)
        _code_similarities(self._codes, 0, 0, 1, self.u_obs, 1, self._penalty_codes, np.zeros(1, dtype=np.int64),
                           np.float32(1.0), np.float32(0.0), np.zeros((1, 1), dtype=np.float32))

    # ------------------------------------------------------------------ scoring
    def _scores(self, ends: np.ndarray, bands: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Best-over-tempo mean log-likelihood (nats per observation) of the U context
        ending at each end state ``(m,)`` (ascending, contiguous), and the tempo that gave
        it; on band energies if ``bands`` (the screening sweep of a long piece)."""
        w = self.u_active[: self.ctx]
        total = self._ctx_active  # (w's sum)
        if total <= 0:
            return np.full(ends.shape, -np.inf), np.ones(ends.shape)
        lo = max(0, int(ends[0]) - self.max_lag)
        hi = int(ends[-1]) + 1
        columns = self._columns
        if bands:
            sims = self._band_sims
            sims.update(lo, hi, self._detune, self._n_obs, lambda missing: _store_similarities(
                self._bands.rows(self._detune, lo, hi) @ self.u_bands[:missing].T, columns, lo, sims.sim))
        else:
            sims = self._sims
            t = self.templates  # log T = offset + step * q (each observation sums to 1)
            sims.update(lo, hi, self._detune, self._n_obs, lambda missing: _code_similarities(
                self._codes, self._detune, lo, hi, self.u_obs, missing, self._penalty_codes, columns,
                np.float32(t.step), np.float32(t.offset), sims.sim))
        best, which = self._best, self._which
        _context_scores(sims.sim, ends, self._lags, self._columns, lo, w, float(total), best[: ends.size],
                        which[: ends.size])
        return best[: ends.size].copy(), self._tempos[which[: ends.size]]

    def score_at(self, state: float) -> float:
        """The short context's score (nats per observation) at ``state``."""
        s = int(min(max(round(state), 0), self.n_states - 1))
        return float(self._scores(np.array([s]))[0][0])

    def long_score(self, state: float) -> float:
        """The snapshot long context's score at ``state`` (see :meth:`_snapshot`): the
        recency-weighted mean log-likelihood (nats per observation) along the best path
        through X ending there, each observation on the same state as the one after it or
        one or two states before it."""
        end = int(min(max(round(state), 0), self.n_states - 1))
        lo = max(0, end - self._long_rows + 1)
        rows = self.templates.codes_into(self._long_buf[: end + 1 - lo], self._snap_detune, lo, end + 1,
                                         reverse=True)  # row j: end - j
        sim = self._long_sim[: end + 1 - lo]
        np.matmul(rows, self._snap_u.T, out=sim)
        sim *= self.templates.step  # log T = offset + step * q, and each observation sums to 1
        path = _best_path(sim, self._snap_w, self._recency, self._dp)
        total = max(float(self._snap_w.sum()), 1e-9)
        return float(self.templates.offset + (path + _PATH_STEPS * self._recency[1:].sum()) / total)

    def _nearest_variant(self, detune_cents: float) -> int:
        """The template variant whose detune is nearest ``detune_cents`` (the first of equals)."""
        cents = self._cents
        return min(range(len(cents)), key=lambda d: abs(cents[d] - detune_cents))

    def _snapshot(self) -> None:
        """Freeze the long context (and the template variant) the queued places are scored on
        (each queued place carries the frame it was moved on to)."""
        self._snap_u[:] = self.u_obs
        self._snap_w[:] = self.u_active * self._recency
        self._snap_detune = self._detune

    # ------------------------------------------------------------------ per frame
    def step(self, u: np.ndarray, active: bool, detune_cents: float, position_states: float = 0.0) -> None:
        """Take one fine frame of U (``u`` normalised ``(n_obs_bins,)``, soloist ``active``);
        score the next slice of the piece with the variant nearest ``detune_cents``, and
        a few queued places on the long context (``position_states``: the filter's place)."""
        self._frame += 1
        self._played += int(active)
        self._detune = self._nearest_variant(detune_cents)
        self._acc += u
        self._acc_n += 1
        self._acc_active += int(active)
        if self._acc_n == self.per_state:  # one state period of U: push its mean observation
            self.u_obs[1:] = self.u_obs[:-1]
            self.u_active[1:] = self.u_active[:-1]
            mean = self._acc / max(float(self._acc.sum()), 1e-12)
            self.u_obs[0] = mean
            if self._bands is not None:
                self.u_bands[1:] = self.u_bands[:-1]
                self.u_bands[0] = self._bands.pool(mean)
            self.u_active[0] = 1.0 if self._acc_active * 2 > self._acc_n else 0.0
            self._ctx_active = float(self.u_active[: self.ctx].sum())
            self._n_obs += 1
            self._columns[1:] = self._columns[:-1]
            self._columns[0] = self._n_obs % self.ctx
            self._acc[:] = 0.0
            self._acc_n = self._acc_active = 0
        if self._queue:
            self._rescore()
        if self._ctx_active / self.ctx < self.config.min_active:
            self._latest_free, self._latest_far = [], []  # found on a context of mostly silence: proves nothing
            return
        lo = self._cursor
        hi = min(self.n_states, lo + self.slice)
        ends = self._states[lo:hi]
        scores, tempos = self._scores(ends, bands=self._bands is not None)
        self._found.merge(scores, tempos, ends, self._frame, self._apart)
        if self.prior is not None:
            free = self.prior.near(position_states, ends) | self._at_section_start[lo:hi]  # = prior.free
            if free.any():
                self._found_free.merge(scores[free], tempos[free], ends[free], self._frame, self._apart)
        self._cursor = 0 if hi >= self.n_states else hi
        if not self._cursor:  # a sweep is complete
            self._sweep_done(position_states)

    def _sweep_done(self, position_states: float) -> None:
        """Take the complete sweep's places: the free ones, and the far ones that explain
        the short context better than the filter's place by the margin, queued for scoring
        on the long context; all are proposed once that is done (a sweep that completes
        while the last one's places are being scored is dropped: the next finds them
        again)."""
        cfg = self.config
        found, found_free = self._found.take(), self._found_free.take()
        if self._queue:  # the last sweep's places are still being scored
            return
        if self._bands is not None:  # screened on bands: the best at full resolution
            found = self._at_full_resolution(found)
            found_free = sorted(self._at_full_resolution(found_free), reverse=True)[:1]
        found = sorted(found, reverse=True)[: cfg.pool]
        extra = [f for f in found_free if all(abs(f[1] - g[1]) >= self._apart for g in found)]
        bar = self.score_at(position_states) + cfg.margin
        free, far = [], []
        # the free places among the best few and the best free place, checked against the
        # filter's place when asked for; far places among the whole pool
        places = extra + found
        theres = [self._moved_on(state, tempo, at) for _, state, tempo, at in places]
        frees = (np.ones(len(places), dtype=bool) if self.prior is None
                 else self.prior.free(position_states, np.array(theres, dtype=np.float64)))
        for rank, ((score, _, tempo, _), there, is_free) in enumerate(zip(places, theres, frees.tolist(), strict=True)):
            apart_s = abs(there - position_states) * self.params.coarse_period_s
            if apart_s < cfg.min_jump_s or there >= self._last_candidate:
                continue
            if is_free and rank < len(extra) + cfg.candidates:
                free.append((score, there, tempo, self._frame))
            elif not is_free and score > bar:
                far.append((score, there, tempo, self._frame))
        if not far:  # the common case on a right track: nothing far explains even 2 s better
            self._latest_free, self._latest_far = free, []
            self._add_lead(0.0)
            return
        # the free places wait for the far ones (a few frames), so that all are proposed together
        self._waiting_free = free
        self._snapshot()
        self._queue = [(0.0, position_states, 1.0, self._frame)] + far  # the filter's place is scored first
        self._scored = []

    def _at_full_resolution(self, places: list[tuple[float, int, float, int]]) -> list[tuple[float, int, float, int]]:
        """The screening sweep's places ``(score, end, tempo, frame)``, each moved on to
        now and replaced by the best full-resolution score within ``_REFINE_STATES`` of it,
        on the present context (the bands' best end can sit a state or two off the full
        one's)."""
        out = []
        for _, state, tempo, at in places:
            there = min(max(int(round(self._moved_on(state, tempo, at))), 0), self.n_states - 1)
            ends = np.arange(max(0, there - _REFINE_STATES), min(self.n_states, there + _REFINE_STATES + 1))
            scores, tempos = self._scores(ends)
            best = int(np.argmax(scores))
            out.append((float(scores[best]), int(ends[best]), float(tempos[best]), self._frame))
        return out

    def _rescore(self) -> None:
        """Score the next queued places on the long context; once all are, those that
        explain it better than the filter's place (scored first) are proposed, best first."""
        for _ in range(self.config.rescore_per_frame):
            self._scored.append(self.long_score(self._queue[len(self._scored)][1]))
            if len(self._scored) == len(self._queue):
                break
        if len(self._scored) < len(self._queue):
            return
        own, *long = self._scored
        places = self._queue[1:]
        self._queue, self._scored = [], []
        self._add_lead(max(long) - own)
        self._latest_free, self._waiting_free = self._waiting_free, []
        self._latest_far = sorted(((ls, there, tempo, at) for ls, (_, there, tempo, at) in zip(long, places, strict=True)
                                   if ls > own), reverse=True)

    def _add_lead(self, lead: float) -> None:
        self._leads.append((self._played, lead))
        while self._leads and self._played - self._leads[0][0] > self._lead_keep:
            self._leads.popleft()

    def sustained_lead(self, window_s: float) -> float:
        """The least lead (nats per observation of the long context) of the best far place
        over the filter's place among the sweeps of the last ``window_s`` seconds of
        playing: high when the filter's place has been explaining the playing worse than
        some other place for that long (a lost track), about zero or below on a right one
        (look-alikes lead now and then, not for long). 0 until the sweeps cover
        ``window_s``. Counted in seconds of playing, not of time: the sweeps pause with the
        soloist, and the one or two sweeps just after a long rest, whose long context is
        mostly that rest, cannot make a lead "sustained"."""
        since = self._played - window_s / self.params.fine_period_s
        if not self._leads or self._leads[0][0] > since:
            return 0.0
        recent = None
        for at, lead in reversed(self._leads):  # (kept in the order played: the recent ones last)
            if at < since:
                break
            recent = lead if recent is None else min(recent, lead)
        return 0.0 if recent is None else float(recent)

    def candidates(self, position_states: float) -> list[Candidate]:
        """The last scored sweep's places, moved on to now at their tempo, that are far
        from the filter's place ``position_states`` (possibly none): the best of the near
        places and movements' starts that explain the short context better than the
        filter's place by the margin, then the far places that also explain the long
        context better (by that score), then the other near places. Asked for only when a
        verification can start, so a place found while one was running is not lost. A
        sweep's places are handed out once (a 40-minute piece takes over a second to sweep
        again: its places would be screened again and again in the meantime)."""
        out = []
        if self._latest_free:
            bar = self.score_at(position_states) + self.config.margin
            self._latest_free = [f for f in self._latest_free if f[0] > bar]
        # the best free place, the far places that passed the long context, the other free ones
        for _, state, tempo, at in self._latest_free[:1] + self._latest_far + self._latest_free[1:]:
            there = self._moved_on(state, tempo, at)
            if abs(there - position_states) * self.params.coarse_period_s >= self.config.min_jump_s:
                out.append(Candidate(float(min(max(there, 0.0), self.n_states - 1)), float(tempo)))
        if out:
            self._latest_free, self._latest_far = [], []
        return out

    def _moved_on(self, state: float, tempo: float, at: int) -> float:
        """Where a place found at ``state`` in frame ``at`` is now, at its ``tempo`` (states)."""
        return state + (self._frame - at) * tempo / self.per_state


#: States either side of a place found on bands searched for its best full-resolution end.
_REFINE_STATES = 3


class _Places:
    """A sweep's best places so far, best first and at least ``apart`` states from each
    other (one place per passage): parallel arrays of scores, end states, tempos and the
    frames they were found in, ``n`` of them (at most ``k``)."""

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self.score = np.empty(self.k + 1)
        self.state = np.empty(self.k + 1, dtype=np.int64)
        self.tempo = np.empty(self.k + 1)
        self.frame = np.empty(self.k + 1, dtype=np.int64)
        self.n = 0

    def merge(self, scores: np.ndarray, tempos: np.ndarray, ends: np.ndarray, frame: int, apart: float) -> None:
        """Merge a slice's places (``scores``, ``tempos`` float ``(m,)``, ``ends`` int ``(m,)``),
        found in ``frame``, into the kept ones."""
        # enough to find k separated peaks (contiguous: one compiled kernel for every slice)
        order = np.ascontiguousarray(np.argsort(scores)[::-1][: 8 * self.k])
        self.n = _merge_places(scores, tempos, ends, order, frame, self.score, self.state, self.tempo, self.frame,
                               self.n, self.k, apart)

    def take(self) -> list[tuple[float, int, float, int]]:
        """The kept places as ``(score, end, tempo, frame)``, best first; none are kept after."""
        out = [(float(self.score[i]), int(self.state[i]), float(self.tempo[i]), int(self.frame[i]))
               for i in range(self.n)]
        self.n = 0
        return out


class _ContextSimilarities:
    """Each state's similarity to each observation of the short context, computed once: a
    state is scored again at every sweep, and a short piece is swept once per new
    observation.

    ``sim`` float32 ``(ctx, n_states)``: row ``id % ctx`` holds the observation numbered
    ``id`` (each observation's similarities contiguous: the context scores run along the
    states); ``filled[s]`` is the newest observation state ``s``'s entries hold.
    """

    def __init__(self, n_states: int, ctx: int) -> None:
        self.ctx = ctx
        self.sim = np.empty((ctx, n_states), dtype=np.float32)
        self.filled = np.empty(n_states, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Nothing cached."""
        self.filled[:] = -self.ctx
        self.detune = -1

    def update(self, lo: int, hi: int, detune: int, n_obs: int, fill: Callable[[int], None]) -> None:
        """Bring states ``[lo, hi)`` up to observation ``n_obs`` (the newest): for the
        observations each state lacks (all of them after a change of the template variant),
        ``fill(missing)`` writes the similarities of those states to the ``missing`` newest
        observations into ``sim``."""
        if detune != self.detune:
            self.filled[:] = -self.ctx
            self.detune = detune
        missing = min(self.ctx, n_obs - int(self.filled[lo:hi].min()))
        if missing <= 0:
            return
        fill(missing)
        self.filled[lo:hi] = n_obs


@kernel("int64(float64[::1], float64[::1], int64[::1], int64[::1], int64, float64[::1], int64[::1], float64[::1], "
        "int64[::1], int64, int64, float64)")
def _merge_places(scores, tempos, ends, order, frame, kept, kept_states, kept_tempos, kept_frames, n, k,
                  apart):  # pragma: no cover (numba)
    """Merge the places ``order`` (indices into ``scores``/``tempos``/``ends``, best first,
    found in ``frame``) into the ``n`` kept ones (``kept`` scores, descending, with their
    states, tempos and frames; capacity ``k + 1``): a place enters if it beats the worst of
    ``k`` kept ones and every kept place within ``apart`` states (it replaces the first
    such); ties keep the earlier place first. Returns the new count."""
    for i in order:
        score = scores[i]
        if n == k and score <= kept[n - 1]:
            break
        state = ends[i]
        clash = -1
        for j in range(n):
            if abs(kept_states[j] - state) < apart:
                clash = j
                break
        if clash >= 0:
            if score <= kept[clash]:
                continue
            for j in range(clash, n - 1):
                kept[j], kept_states[j] = kept[j + 1], kept_states[j + 1]
                kept_tempos[j], kept_frames[j] = kept_tempos[j + 1], kept_frames[j + 1]
            n -= 1
        at = n
        while at > 0 and kept[at - 1] < score:
            at -= 1
        for j in range(n, at, -1):
            kept[j], kept_states[j] = kept[j - 1], kept_states[j - 1]
            kept_tempos[j], kept_frames[j] = kept_tempos[j - 1], kept_frames[j - 1]
        kept[at], kept_states[at], kept_tempos[at], kept_frames[at] = score, state, tempos[i], frame
        n = min(n + 1, k)
    return n


@kernel("void(uint8[:, :, ::1], int64, int64, int64, float32[:, ::1], int64, float32[::1], int64[::1], float32, "
        "float32, float32[:, ::1])", fastmath=True)
def _code_similarities(codes, detune, lo, hi, obs, missing, penalty_codes, columns, step, offset,
                       sim):  # pragma: no cover (numba)
    """``sim[columns[j], s] = offset + step * (q[s] - penalty_codes[s]) . obs[j]`` for the
    states ``s`` in ``[lo, hi)`` and the ``missing`` newest observations ``j`` (``obs``
    ``(>= missing, B)``, newest first), ``q`` the codes ``codes[detune]``: the log templates'
    similarities, read from the 8-bit codes (each observation sums to 1)."""
    n_b = obs.shape[1]
    for j in range(missing):
        u = obs[j]
        u_sum = np.float32(0.0)
        for b in range(n_b):
            u_sum += u[b]
        row = columns[j]
        for s in range(lo, hi):
            q = codes[detune, s]
            acc = np.float32(0.0)
            for b in range(n_b):
                acc += np.float32(q[b]) * u[b]
            sim[row, s] = (acc - penalty_codes[s] * u_sum) * step + offset


@kernel("void(float32[:, ::1], int64[::1], int64, float32[:, ::1])")
def _store_similarities(block, columns, lo, sim):  # pragma: no cover (numba)
    """``sim[columns[j], lo + i] = block[i, j]`` for the states ``i`` and observations ``j``
    of ``block`` ``(states, missing)``."""
    n, missing = block.shape
    for j in range(missing):
        row = columns[j]
        for i in range(n):
            sim[row, lo + i] = block[i, j]


@kernel("void(float32[:, ::1], int64[::1], int64[:, ::1], int64[::1], int64, float32[::1], float64, float64[::1], int64[::1])")
def _context_scores(sim, ends, lags, columns, lo, weights, total, best, which):  # pragma: no cover (numba)
    """For each end state ``ends[i]`` (ascending): the best over tempos ``t`` of the
    weighted mean ``sum_k weights[k] * sim[columns[k], ends[i] - lags[t, k]] / total`` (a
    state before the piece counts as the worst of ``sim``'s states ``lo`` to ``ends[-1]``),
    into ``best[i]``, and that ``t`` into ``which[i]`` (the first of equal ones). ``sim``:
    ``(ctx, n_states)`` similarities of the context's observations to the states;
    ``columns``: ``(ctx,)`` the row of the ``k``-th newest observation; ``lags``: ``(T,
    ctx)`` states back; ``ends`` contiguous (``ends[i] = ends[0] + i``)."""
    n_tempos, ctx = lags.shape
    m = ends.size
    worst = np.inf
    for k in range(ctx):
        for row in range(lo, ends[-1] + 1):
            if sim[k, row] < worst:
                worst = sim[k, row]
    acc = np.empty(m)
    for i in range(m):
        best[i], which[i] = -np.inf, 0
    for t in range(n_tempos):
        acc[:] = 0.0
        for k in range(ctx):  # each observation's similarities are contiguous along the states
            w, column, lag = weights[k], columns[k], lags[t, k]
            base = ends[0] - lag  # the state ends[i] - lag is base + i: inside the piece from i = first on
            first = min(max(-base, 0), m)
            before = w * worst
            for i in range(first):
                acc[i] += before
            for i in range(first, m):  # (no branch: a loop the compiler vectorises)
                acc[i] += w * np.float64(sim[column, base + i])
        for i in range(m):
            if acc[i] / total > best[i]:
                best[i], which[i] = acc[i] / total, t


#: Log-probability of each step of a path: the same state as the next observation's, one
#: state before it (the recording's tempo) or two. ``_best_path`` adds only the differences
#: from the plain step; the plain step's own is added back per step.
_PATH_STEPS = float(np.log(0.5))
_HOLD, _SKIP = float(np.log(0.25) - np.log(0.5)), float(np.log(0.25) - np.log(0.5))


@kernel("float64(float32[:, ::1], float64[::1], float64[::1], float64[:, ::1])", fastmath=True)
def _best_path(sim, weights, recency, dp):  # pragma: no cover (numba)
    """The best recency-weighted sum of ``sim`` (``(n_rows, n_obs)``: row ``j`` is the
    state ``j`` before the place, column ``k`` the ``k``-th newest observation) along a
    path from ``(0, 0)`` that moves 0, 1 or 2 rows per observation: ``sum_k weights[k] *
    sim[row_k, k]`` plus, per step, ``recency[k]`` times the log-probability of a hold or
    a skip relative to a plain step. ``dp``: scratch ``(2, >= n_rows)``."""
    n_rows, n_obs = sim.shape
    prev, cur = dp[0], dp[1]
    for j in range(n_rows):
        prev[j] = -1e300
    prev[0] = weights[0] * sim[0, 0]
    for k in range(1, n_obs):
        w, r = weights[k], recency[k]
        for j in range(n_rows):
            best = prev[j] + r * _HOLD
            if j >= 1 and prev[j - 1] > best:
                best = prev[j - 1]
            if j >= 2 and prev[j - 2] + r * _SKIP > best:
                best = prev[j - 2] + r * _SKIP
            cur[j] = best + w * sim[j, k]
        prev, cur = cur, prev
    out = prev[0]
    for j in range(1, n_rows):
        if prev[j] > out:
            out = prev[j]
    return out
