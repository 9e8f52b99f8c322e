"""Global search: finds the player anywhere in the piece, at a fixed cost per frame.

The forward filter only looks at a band of states, so a player who restarts a passage,
skips ahead or starts mid-piece would be lost for good. This search keeps the last few
seconds of U (as compact semitone-band profiles, one per state period) and sweeps the whole
piece in fixed-size slices, one slice per frame: each candidate end state is scored by how
well the recent U profiles match X's profiles along a diagonal, for a few tempo
hypotheses. The per-frame cost is the slice size, whatever the piece's length (a 40-minute
piece is swept in about a second; a short one several times a second).

A candidate far from the filter's position is confirmed by re-scoring it for
``confirm_s`` seconds against the filter's current position; only a clear and lasting win
relocates the filter. Repeated passages score alike, so they never win by the margin.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from shared.spectral import AnalysisParams, QuantizedTemplates


@dataclass(frozen=True)
class SearchConfig:
    """Settings of the global search.

    Attributes:
        context_s: seconds of U matched against X.
        slice_states: candidates scored per frame (fixed cost per frame).
        tempos: tempo hypotheses (X seconds per U second).
        margin: how much better (mean cosine) a candidate must match to be verified.
        min_jump_s: candidates closer than this to the filter's place are left to the filter.
        confirm_s: how long (U seconds) a candidate track runs beside the main one.
        margin_nats: log Bayes factor the candidate track must win by to replace the main one.
        confirmations: consecutive verification windows the candidate must win (a single
            window can be lost by the right track during a fermata or a sudden tempo change).
        min_active: fraction of the context in which the soloist must be playing.
        candidates: distinct far places proposed per sweep and verified side by side (a
            passage that recurs, or a context still holding notes from before a jump, can
            put the right place second).
    """

    context_s: float = 2.0
    slice_states: int = 400
    tempos: tuple[float, ...] = (0.8, 0.9, 1.0, 1.12, 1.25)
    margin: float = 0.03
    min_jump_s: float = 3.0
    confirm_s: float = 0.6
    margin_nats: float = 12.0
    confirmations: int = 2
    min_active: float = 0.6
    candidates: int = 3


def semitone_filterbank(params: AnalysisParams) -> np.ndarray:
    """Triangular filters two semitones wide at semitone spacing over the observation band.

    Returns float32 ``(n_obs_bins, n_bands)``; the overlap makes profiles tolerant of
    detuning up to about half a semitone.
    """
    freqs = (np.arange(params.obs_bins.start, params.obs_bins.stop) * params.sr / params.n_fft).astype(np.float64)
    semis = 12.0 * np.log2(np.maximum(freqs, 1.0) / 440.0)
    centres = np.arange(np.ceil(semis.min()) + 1, np.floor(semis.max()))
    fb = np.maximum(0.0, 1.0 - np.abs(semis[:, None] - centres[None, :]))
    fb /= np.maximum(fb.sum(axis=0, keepdims=True), 1e-9)
    return fb.astype(np.float32)


def profiles(features: np.ndarray, fb: np.ndarray) -> np.ndarray:
    """Unit-norm, mean-removed log band profiles ``(n, n_bands)`` of features ``(n, n_obs_bins)``."""
    pooled = np.log(features @ fb + 1e-6)
    pooled -= pooled.mean(axis=-1, keepdims=True)
    pooled /= np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-9)
    return pooled.astype(np.float32)


class GlobalSearch:
    """Sweeps the piece for a better place than the filter's; see the module docstring."""

    def __init__(self, templates: QuantizedTemplates, params: AnalysisParams, config: SearchConfig | None = None):
        self.params = params
        self.config = cfg = config or SearchConfig()
        self.fb = semitone_filterbank(params)
        n = templates.n_states
        self.cents = np.asarray(params.detune_cents)
        # one profile set per detune variant: the search compares U with the variant the
        # follower believes in, so a player tuned away from X is not mistaken for elsewhere
        self.x_profs = np.empty((len(self.cents), n, self.fb.shape[1]), dtype=np.float32)
        for d in range(len(self.cents)):
            for lo in range(0, n, 2048):  # dequantise in pieces to bound memory
                feats = np.exp(templates.dequantize(d, slice(lo, lo + 2048)))
                self.x_profs[d, lo:lo + 2048] = profiles(feats, self.fb)
        self.x_prof = self.x_profs[list(self.cents).index(0.0)]
        self.n_states = n
        self.per_state = params.fine_per_coarse
        self.ctx = max(4, int(round(cfg.context_s / params.coarse_period_s)))
        self.max_lag = int(np.ceil(self.ctx * max(cfg.tempos))) + 1
        self.slice = min(cfg.slice_states, n)
        self._k = np.arange(self.ctx)
        self._lags = np.round(self._k[None, :] * np.asarray(cfg.tempos)[:, None]).astype(np.int64)  # (T, ctx)
        self.reset()

    def reset(self) -> None:
        self.u_prof = np.zeros((self.ctx, self.fb.shape[1]), dtype=np.float32)  # newest first
        self.u_active = np.zeros(self.ctx, dtype=np.float32)
        self._acc = np.zeros(self.fb.shape[0], dtype=np.float64)
        self._acc_n = 0
        self._acc_active = 0
        self._cursor = 0
        self._found: list[tuple[float, int, int]] = []  # this sweep's (score, end state, frame)
        self._frame = 0

    # ------------------------------------------------------------------ scoring
    def _scores(self, ends: np.ndarray) -> np.ndarray:
        """Best-over-tempo mean cosine of the U context ending at each end state ``(m,)``."""
        w = self.u_active
        total = w.sum()
        if total <= 0:
            return np.full(ends.shape, -np.inf)
        lo = max(0, int(ends[0]) - self.max_lag)
        sim = self.x_prof[lo:int(ends[-1]) + 1] @ self.u_prof.T  # (states, ctx)
        idx = ends[:, None, None] - self._lags[None, :, :] - lo  # (m, T, ctx)
        valid = idx >= 0
        sims = sim[np.clip(idx, 0, None), self._k[None, None, :]]
        sims = np.where(valid, sims, -1.0)
        return (sims @ w).max(axis=1) / total

    def _score_at(self, state: float) -> float:
        s = int(min(max(round(state), 0), self.n_states - 1))
        return float(self._scores(np.array([s]))[0])

    # ------------------------------------------------------------------ per frame
    def step(self, u: np.ndarray, active: bool, follower) -> list[float]:
        """Take one fine frame; return candidate states far from the filter's (best first,
        possibly none)."""
        self._frame += 1
        self.x_prof = self.x_profs[int(np.argmin(np.abs(self.cents - follower.state.detune_cents)))]
        self._acc += u
        self._acc_n += 1
        self._acc_active += int(active)
        if self._acc_n == self.per_state:  # one state period of U: push a profile
            self.u_prof[1:] = self.u_prof[:-1]
            self.u_active[1:] = self.u_active[:-1]
            self.u_prof[0] = profiles((self._acc / self._acc_n)[None, :].astype(np.float32), self.fb)[0]
            self.u_active[0] = 1.0 if self._acc_active * 2 > self._acc_n else 0.0
            self._acc[:] = 0.0
            self._acc_n = self._acc_active = 0
        if self.u_active.mean() < self.config.min_active:
            return []
        cfg = self.config
        lo = self._cursor
        hi = min(self.n_states, lo + self.slice)
        ends = np.arange(lo, hi)
        scores = self._scores(ends)
        self._keep_peaks(scores, ends)
        self._cursor = 0 if hi >= self.n_states else hi
        if self._cursor:
            return []
        # a sweep is complete: propose its best places that are far away and match better
        found, self._found = self._found, []
        here = follower.position_states
        bar = self._score_at(here) + cfg.margin
        out: list[float] = []
        for score, state, at in found:
            there = state + (self._frame - at) * follower.state.tempo / self.per_state
            if score > bar and abs(there - here) * self.params.coarse_period_s >= cfg.min_jump_s:
                out.append(float(np.clip(there, 0, self.n_states - 1)))
        return out

    def _keep_peaks(self, scores: np.ndarray, ends: np.ndarray) -> None:
        """Merge this slice's best places into the sweep's top ``candidates``, at least
        ``min_jump_s`` apart from each other (one place per passage)."""
        k = self.config.candidates
        apart = self.config.min_jump_s / self.params.coarse_period_s
        order = np.argsort(scores)[::-1][: 8 * k]  # enough to find k separated peaks
        found = self._found
        for i in order:
            score = float(scores[i])
            if len(found) == k and score <= found[-1][0]:
                break
            state = int(ends[i])
            clash = [j for j, f in enumerate(found) if abs(f[1] - state) < apart]
            if clash:
                if score <= found[clash[0]][0]:
                    continue
                del found[clash[0]]
            found.append((score, state, self._frame))
            found.sort(key=lambda f: -f[0])
            del found[k:]


class Relocator:
    """Verifies the search's candidates with the follower's own model before jumping.

    Each candidate starts a "shadow" track there; all tracks filter the same frames for
    ``confirm_s``, and the best shadow replaces the main track only if its accumulated
    evidence ``sum log p(u_t | u_<t)`` beats the main track's by ``margin_nats`` (a log
    Bayes factor) in ``confirmations`` windows in a row (after the first window only the
    best shadow goes on). Two places that sound alike (a repeat) never win by the margin,
    so the player is not moved.

    Args:
        shadows: followers to verify candidates with (as many as candidates per sweep).
    """

    def __init__(self, search: GlobalSearch, shadows, config: SearchConfig, frame_s: float) -> None:
        self.search = search
        self.shadows = list(shadows)
        self.config = config
        self.confirm_frames = max(1, int(round(config.confirm_s / frame_s)))
        self._running: list = []
        self._left = 0
        self._wins = 0
        self._active = 0
        self._main0 = 0.0
        self._shadow0: list[float] = []
        # the last verifications, for diagnostics: (U s, main state, candidate state, gain in nats)
        self.history: deque[tuple[float, float, float, float]] = deque(maxlen=64)

    @property
    def verifying(self) -> bool:
        return self._left > 0

    def cancel(self) -> None:
        """Drop a verification in progress and the search's history (the player restarted)."""
        self._left = 0
        self._wins = 0
        self._running = []
        self.search.reset()

    def step(self, u: np.ndarray, active: bool, frame_end_s: float, now_s: float, follower) -> bool:
        """After the main track has processed this frame: True if it was moved."""
        if self._left > 0:
            for shadow in self._running:
                shadow.process(u, active, frame_end_s, now_s)
            self._left -= 1
            self._active += int(active)
            if self._left == 0:
                return self._decide(now_s, follower)
            return False
        if not follower.started:
            return False
        candidates = self.search.step(u, active, follower)[: len(self.shadows)]
        if candidates:
            self._running = self.shadows[: len(candidates)]
            for shadow, state in zip(self._running, candidates):
                shadow.adopt(follower)
                shadow.relocate(state, spread_states=3.0)
            self._start(follower)
        return False

    def _decide(self, now_s: float, follower) -> bool:
        if self._active < 0.5 * self.confirm_frames:  # a silent window proves nothing
            self._wins, self._running = 0, []
            return False
        main = follower.log_evidence - self._main0
        gains = [(sh.log_evidence - s0) - main for sh, s0 in zip(self._running, self._shadow0)]
        best = int(np.argmax(gains))
        shadow = self._running[best]
        self.history.append((now_s, follower.position_states, shadow.position_states, gains[best]))
        if gains[best] <= self.config.margin_nats:
            self._wins, self._running = 0, []
            return False
        self._wins += 1
        if self._wins >= self.config.confirmations:
            self._wins, self._running = 0, []
            follower.adopt(shadow)
            return True
        self._running = [shadow]  # the best shadow keeps its track: verify once more
        self._start(follower)
        return False

    def _start(self, follower) -> None:
        self._active = 0
        self._main0 = follower.log_evidence
        self._shadow0 = [sh.log_evidence for sh in self._running]
        self._left = self.confirm_frames
