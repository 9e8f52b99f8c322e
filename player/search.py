"""Global search: finds the player anywhere in the piece, at a fixed cost per frame.

The forward filter only looks at a band of states, so a player who restarts a passage,
skips ahead or starts mid-piece would be lost for good. This search keeps the last few
seconds of U (one mean observation per state period) and sweeps the whole piece in
fixed-size slices, one slice per frame: each candidate end state is scored by the
follower's own observation model (the multinomial log-likelihood of U's observations under
X's templates, untempered) along a diagonal ending there, for a few tempo hypotheses. The
per-frame cost is at most the slice size, whatever the piece's length (a 40-minute piece is
swept in about a second; a short one once per state period, as often as the context changes).

Why the likelihood rather than a spectral similarity: X holds the accompaniment too, and a
cross-entropy only asks whether X's spectrum has energy where U has (extra energy in X costs
little), while a similarity (cosine of log band profiles, measured before) also penalises
the accompaniment U lacks. On the four corpus takes, with 2 s of context, the best far
place was the true one for 83-92 % of the frames (cosine of semitone profiles: 44-84 %),
and after a splice the true place came first 0.7-1.9 s later (cosine: 1.0-4.2 s).

A candidate far from the filter's place is verified by :class:`Relocator`, which replays
the last frames through a shadow track started there; only a place that explains both
halves of the replay about as well and the whole better, then wins a trial on new frames,
moves the filter. Repeated passages score alike, so they never win by the margin.
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
        slice_states: candidate end states scored per frame at most (fixed cost per
            frame); a short piece is swept once per state period, not faster, since the
            context only changes that often.
        tempos: tempo hypotheses (X seconds per U second).
        margin: how much better (nats per observation) a far place must explain the context
            than the filter's place to be verified.
        min_jump_s: candidates closer than this to the filter's place are left to the filter.
        confirm_s: length of one screening window (U seconds).
        replay_windows: windows of past frames replayed to screen the candidates.
        margin_nats: log Bayes factor over new frames at which a candidate track wins.
        reject_nats: log Bayes factor over new frames at which a candidate track is dropped.
        trial_s: the length of a trial on new frames (U seconds).
        trial_max_s: the longest a trial lasts (U seconds): past ``trial_s`` it goes on for
            shadows that keep gaining at ``trial_pace`` of the winning pace
            (``margin_nats`` per ``trial_s``); a place that sounds much like the player's
            (a varied repeat) needs longer to prove itself, and a wrong one stops gaining.
        trial_pace: see ``trial_max_s``.
        min_active: fraction of the context (and of each window) in which the soloist must be
            playing: silence proves nothing.
        candidates: distinct far places proposed per sweep and verified side by side (a
            passage that recurs can put the right place second).
        shadow_spread_s: spread (seconds of X) of every shadow track where it starts: the
            home track that candidates must beat (see :class:`Relocator`) and the
            candidates alike (the search places a candidate only to within a few tenths of
            a second, and both hypotheses must pay the same for not knowing exactly where
            the player was: with 0.3 s for candidates, right places lost their first
            window and forward jumps took 3.9 s on average on the corpus, 2.85 s with 1 s).
        retry_s: after a verification, the least time (U seconds) before the next one; bounds
            the replay cost when a far place keeps scoring well but keeps losing.
        replay_per_frame: replayed frames per analysis frame: a screening is spread over
            several blocks so that no block costs much more than the others (live audio).
        screen_tolerance_nats: a screened place may trail the reference by up to this
            much in one window (log evidence, nats) if it leads over the whole replay: a
            near-tie is no evidence against it (the window right after a splice, or a
            phrase both places share). With 0, right places lost their screening by
            0.1 nats and waited for the next sweep; 6 let a wrong place on trial, and win
            it, in a plain run of a held-out chorale.
        note_lead_cap_nats: in a trial, the most one note of U (onset to onset) adds to a
            candidate's lead, or takes from it (nats): one held note cannot win a trial.
            Without it, a far place holding the same pitch over a thinner accompaniment
            won trials by 25 to 115 nats within one held note (two held-out cases, 8 and
            2.4 lost seconds).
        home_takeover_nats: the home track also takes over, without waiting for the trial
            to end, once its evidence since the trial began leads the main track's by this
            much uncapped (nats) and the trial has heard a note change. The per-note cap
            censors a lead over legato notes whose onsets the change detector misses: a
            player going back 3 s after a pause had the home track on the right place 70
            nats ahead of the main track (20 capped), the trial ended without a takeover and
            re-lock took 7 s. The home track stays near the main one, and a held note alone
            never passes.
        onset_change: Hellinger distance between consecutive observations (the follower's
            ``last_change``) from which a frame counts as a note's onset (held notes
            change by 0.13-0.17 from frame to frame on the corpus, onsets by 0.24-0.34).
    """

    context_s: float = 2.0
    slice_states: int = 400
    tempos: tuple[float, ...] = (0.8, 0.9, 1.0, 1.12, 1.25)
    margin: float = 0.02
    min_jump_s: float = 3.0
    confirm_s: float = 0.6
    replay_windows: int = 2
    margin_nats: float = 25.0
    reject_nats: float = 10.0
    trial_s: float = 1.2
    trial_max_s: float = 3.0
    trial_pace: float = 0.5
    min_active: float = 0.6
    candidates: int = 3
    retry_s: float = 0.5
    shadow_spread_s: float = 1.0
    replay_per_frame: int = 24
    screen_tolerance_nats: float = 3.0
    note_lead_cap_nats: float = 20.0
    onset_change: float = 0.22
    home_takeover_nats: float = 60.0


@dataclass(frozen=True)
class Candidate:
    """A far place proposed by the search: ``state`` (fractional state index, now) and the
    ``tempo`` hypothesis (X seconds per U second) that matched best there."""

    state: float
    tempo: float


class GlobalSearch:
    """Sweeps the piece for a better place than the filter's; see the module docstring."""

    def __init__(self, templates: QuantizedTemplates, params: AnalysisParams, config: SearchConfig | None = None):
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
        # candidate needs room to be tested: a trial's length of music after it, at the
        # fastest tempo hypothesis
        self._last_candidate = n - 1 - cfg.trial_s * max(cfg.tempos) / params.coarse_period_s
        self.reset()

    def reset(self) -> None:
        self.u_obs = np.zeros((self.ctx, self.params.n_obs_bins), dtype=np.float32)  # newest first
        self.u_active = np.zeros(self.ctx, dtype=np.float32)
        self._acc = np.zeros(self.params.n_obs_bins, dtype=np.float64)
        self._acc_n = 0
        self._acc_active = 0
        self._cursor = 0
        self._found: list[tuple[float, int, float, int]] = []  # this sweep's (score, end, tempo, frame)
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
    def step(self, u: np.ndarray, active: bool, detune_cents: float) -> None:
        """Take one fine frame of U (``u`` normalised ``(n_obs_bins,)``, soloist ``active``);
        score the next slice of the piece with the variant nearest ``detune_cents``."""
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
        self._keep_peaks(scores, tempos, ends)
        self._cursor = 0 if hi >= self.n_states else hi
        if not self._cursor:  # a sweep is complete: its places stand until the next one
            self._latest, self._found = self._found, []

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

    def _keep_peaks(self, scores: np.ndarray, tempos: np.ndarray, ends: np.ndarray) -> None:
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
            found.append((score, state, float(tempos[i]), self._frame))
            found.sort(key=lambda f: -f[0])
            del found[k:]


class Relocator:
    """Verifies the search's candidates with the follower's own model before jumping.

    It keeps the last ``replay_windows * confirm_s`` seconds of frames and the main track's
    evidence over them. For each candidate a "shadow" follower starts where the candidate
    says the player was at the start of that window and replays the frames at once: a
    shadow passes if its evidence ``sum log p(u_t | u_<t)`` beats the reference's over the
    replay and trails it in no window of ``confirm_s`` by more than
    ``screen_tolerance_nats``. Replaying the past instead of waiting for new frames screens
    the candidates as soon as the search proposes them; but the search chose them on these very
    frames (and just after a jump the replay still holds frames from before it), so the
    passing shadows then follow new frames, and the best replaces the main track once it
    leads the reference by ``margin_nats`` (a log Bayes factor; a sequential test: replay
    alone made false jumps on repeated phrases), each note of U adding at most
    ``note_lead_cap_nats`` to the lead.

    The reference is the better of the main track and a "home" shadow restarted where the
    main track was at the start of the replay, with a wide spread (``shadow_spread_s``): the
    hypothesis "the player is still about here". Through a fermata or a pause the main
    track runs on at the tempo and explains the held note badly, while any far place with a
    long note of that pitch explains it well; the home track holds the note too, so such a
    place does not win. Two places that sound alike never win by the margin either. If no
    candidate wins but the home track ends the trial ahead of the main track by the margin
    (the main track ran off within its band), the home track takes over; it does so at once
    if its uncapped lead passes ``home_takeover_nats`` after a note change, and the
    candidates' trial then goes on against the new main track (ending it there made a start
    mid-piece on a corpus take need 6.5 s instead of 4.7 s: the right place was on trial).

    Args:
        search: the global search that proposes candidates.
        shadows: followers to verify with: the first is the home track, the others take
            the candidates (as many as candidates per sweep).
        config: the search's settings.
        frame_s: analysis frame period (seconds).
    """

    def __init__(self, search: GlobalSearch, shadows, config: SearchConfig, frame_s: float) -> None:
        self.search = search
        self.home, *self.shadows = list(shadows)
        self.config = config
        self.window = max(1, int(round(config.confirm_s / frame_s)))
        self.n_replay = self.window * max(1, config.replay_windows)
        self.retry_frames = int(round(config.retry_s / frame_s))
        self.trial_frames = max(1, int(round(config.trial_s / frame_s)))
        self.trial_max_frames = max(self.trial_frames, int(round(config.trial_max_s / frame_s)))
        self.pace_per_frame = config.trial_pace * config.margin_nats / self.trial_frames  # nats
        self.shadow_spread_states = config.shadow_spread_s / search.params.coarse_period_s
        self.replay_per_frame = max(1, config.replay_per_frame)
        n_obs = search.params.n_obs_bins
        # ring of recent frames: the replayed ones and all that can arrive during a screening
        # (every track replays them all at worst), so a screening never reads an overwritten slot
        screening_frames = -(-(len(self.shadows) + 1) * self.n_replay // self.replay_per_frame)
        self._cap = self.n_replay + screening_frames + 1
        self._u = np.zeros((self._cap, n_obs), dtype=np.float32)
        self._active = np.zeros(self._cap, dtype=bool)
        self._times = np.zeros((self._cap, 2))  # (frame_end_s, now_s)
        self._scale = np.ones(self._cap)  # the likelihood's temper scale of each frame
        self._strength = np.zeros(self._cap)  # the onset strength of each frame
        self._evidence = np.zeros(self._cap)  # the main track's log evidence before each frame
        self._position = np.zeros(self._cap)  # and its position (states)
        self._note_began = np.zeros(self._cap, dtype=bool)  # whether a note began in the frame
        self._replay_evidence = np.zeros(self.n_replay + 1)
        self._job = None  # a screening in progress (a generator, advanced once per frame)
        self._budget = 0
        self._pending: _Trial | None = None  # the trial in progress
        self.cancel()
        # the last verifications, for diagnostics: (U s, main state, candidate state, gain in
        # nats, "screen", "won" or "lost")
        self.history: deque[tuple[float, float, float, float, str]] = deque(maxlen=64)

    def cancel(self) -> None:
        """Forget the recent frames and the search's context (the player restarted)."""
        self._count = 0
        self._was_changing = False  # the last frame changed by onset_change or more
        self._wait = 0
        self._job = None
        self._pending = None
        self.search.reset()

    def step(self, u: np.ndarray, active: bool, frame_end_s: float, now_s: float, follower,
             evidence_before: float, position_before: float, evidence_scale: float = 1.0,
             onset: float = 0.0) -> bool:
        """After the main track has processed this frame (its log evidence and position were
        ``evidence_before`` and ``position_before`` just before; ``evidence_scale`` and
        ``onset`` strength as they were given to the main track): True if it was moved."""
        changing = active and (follower.last_change or 0.0) >= self.config.onset_change
        frame = self._keep(u, active, frame_end_s, now_s, evidence_scale, onset, evidence_before,
                           position_before, changing and not self._was_changing)
        self._was_changing = changing
        self._wait = max(0, self._wait - 1)
        if not follower.started:
            return False
        self.search.step(u, active, follower.state.detune_cents)  # (keeps its context)
        if self._job is not None:
            self._budget = self.replay_per_frame
            try:
                next(self._job)
            except StopIteration:
                self._job = None
            return False
        if self._pending is not None:
            return self._trial(frame, follower, evidence_before)
        if self._wait > 0 or self._count < self.n_replay:
            return False
        candidates = self.search.candidates(follower.position_states)[: len(self.shadows)]
        if not candidates:
            return False
        self._wait = self.retry_frames
        self._job = self._screen(candidates, now_s, follower)
        return False

    def _keep(self, u, active: bool, frame_end_s: float, now_s: float, evidence_scale: float, onset: float,
              evidence_before: float, position_before: float, note_began: bool) -> int:
        """Keep a frame (and the main track's evidence and position before it) in the ring;
        return its absolute index."""
        i = self._count % self._cap
        self._u[i] = u
        self._active[i] = active
        self._times[i] = frame_end_s, now_s
        self._scale[i] = evidence_scale
        self._strength[i] = onset
        self._evidence[i] = evidence_before
        self._position[i] = position_before
        self._note_began[i] = note_began
        self._count += 1
        return self._count - 1

    def _feed(self, track, frame: int) -> None:
        """Run ``track`` on the kept frame of absolute index ``frame``."""
        k = frame % self._cap
        track.process(self._u[k], bool(self._active[k]), *self._times[k], evidence_scale=float(self._scale[k]),
                      onset=float(self._strength[k]))

    def _trial(self, frame: int, follower, main_before: float) -> bool:
        """One new frame for the shadows on trial (a sequential test): the best is adopted
        once its lead (each note capped, see :class:`_Trial`) passes ``margin_nats``; one
        that falls ``reject_nats`` behind is dropped; after ``trial_s`` so is one that gains
        slower than the pace; the trial ends after ``trial_max_s``. ``frame``: the new
        frame's absolute index; ``main_before``: the main track's log evidence before it."""
        trial = self._pending
        trial.done += 1
        now_s = float(self._times[frame % self._cap, 1])
        if self._note_began[frame % self._cap]:
            trial.note_onset(main_before, self.home)
        for track in [self.home] + trial.shadows:
            self._feed(track, frame)
        gains = trial.gains(follower.log_evidence, self.home)
        leads = trial.leads(gains)
        best = int(np.argmax(leads))
        if leads[best] > self.config.margin_nats:
            self._pending = None
            self.history.append((now_s, follower.position_states, trial.shadows[best].position_states,
                                 leads[best], "won"))
            follower.adopt(trial.shadows[best])
            return True
        # the main track may itself have run off since the trial began (its band spans
        # seconds): the home track takes over on a clear raw lead over a note change, or
        # when the trial ends with its capped lead past the margin
        home_gain = trial.home_gain(follower.log_evidence, self.home)
        if trial.onsets > 0 and home_gain > self.config.home_takeover_nats:
            # the candidates' trial goes on against the new main track: a far place that
            # was gaining keeps its lead
            self._take_home(now_s, follower, home_gain)
            trial.main_became_home(follower.log_evidence, self.home)
            return True
        bar = -self.config.reject_nats if trial.done < self.trial_frames else self.pace_per_frame * trial.done
        keep = [i for i, g in enumerate(gains) if g > bar]
        if not keep or trial.done >= self.trial_max_frames:
            self._pending = None
            self.history.append((now_s, follower.position_states, trial.shadows[best].position_states,
                                 leads[best], "lost"))
            home_lead = trial.home_lead(follower.log_evidence, self.home)
            if home_lead > self.config.margin_nats:
                return self._take_home(now_s, follower, home_lead)
            return False
        trial.keep(keep)
        return False

    def _take_home(self, now_s: float, follower, lead: float) -> bool:
        """The home track replaces the main track (``lead``: by how much, nats); True. (A
        trial in progress is the caller's to end or go on with.)"""
        self.history.append((now_s, follower.position_states, self.home.position_states, lead, "home"))
        follower.adopt(self.home)
        return True

    def _replay(self, shadow, frames: range, reference: np.ndarray | None = None):
        """Run ``shadow`` over the kept ``frames`` (absolute indices), ``replay_per_frame``
        of them per resumption (a generator); returns its evidence per window
        ``(replay_windows,)`` minus ``reference`` (if given: then it stops at the first
        window it loses by more than the tolerance, whose gain is returned as it stands and
        the later ones as -inf)."""
        ev = self._replay_evidence
        ev[0] = shadow.log_evidence
        gains = np.full(self.n_replay // self.window, -np.inf)
        for j, f in enumerate(frames):
            if self._budget <= 0:
                yield
            self._budget -= 1
            self._feed(shadow, f)
            ev[j + 1] = shadow.log_evidence
            if (j + 1) % self.window == 0:
                w = (j + 1) // self.window - 1
                gains[w] = ev[j + 1] - ev[j + 1 - self.window] - (0.0 if reference is None else reference[w])
                if reference is not None and gains[w] <= -self.config.screen_tolerance_nats:
                    break
        return gains

    def _screen(self, candidates: list[Candidate], now_s: float, follower):
        """Replay the recent frames from each candidate; put those that pass on trial. A
        generator: each resumption replays at most ``replay_per_frame`` frames."""
        end = self._count
        frames = range(end - self.n_replay, end)
        slots = [f % self._cap for f in frames]
        active = self._active[slots].reshape(-1, self.window)
        if (active.mean(axis=1) < 0.5).any():  # a silent window proves nothing
            return
        main = np.append(self._evidence[slots], follower.log_evidence)
        main_end = follower.log_evidence
        reference = main[self.window::self.window] - main[:-1:self.window]  # per window
        self.home.adopt(follower)
        self.home.relocate(self._position[slots[0]], spread_states=self.shadow_spread_states,
                           tempo=follower.state.tempo)
        reference = np.maximum(reference, (yield from self._replay(self.home, frames)))
        frames_per_state = self.search.per_state
        passed = []
        for shadow, cand in zip(self.shadows, candidates):
            # where this candidate puts the player at the start of the replay
            start = cand.state - self.n_replay * cand.tempo / frames_per_state
            shadow.adopt(follower)
            shadow.relocate(max(start, 0.0), spread_states=self.shadow_spread_states, tempo=cand.tempo)
            gains = yield from self._replay(shadow, frames, reference)
            self.history.append((now_s, follower.position_states, cand.state, float(gains.min()), "screen"))
            if gains.min() > -self.config.screen_tolerance_nats and gains.sum() > 0.0:
                passed.append((shadow, shadow.log_evidence))
        if not passed:
            return
        # the frames that came during the screening open the trial (the main track has them)
        trial = _Trial([sh for sh, _ in passed], main_end, self.home, self.config.note_lead_cap_nats)
        for f in range(end, self._count):
            k = f % self._cap
            if self._note_began[k]:
                trial.note_onset(self._evidence[k], self.home)
            for track in [self.home] + trial.shadows:
                self._feed(track, f)
        trial.done = min(self._count - end, self.trial_frames - 1)
        self._pending = trial


class _Trial:
    """The tracks on trial and the evidence (log evidence, nats) they are judged on.

    A shadow's *gain* is its evidence since the trial began minus the reference's (the
    better of the main and home tracks); a shadow that falls behind on it is dropped. It
    wins on its *lead*: the same gain, with what each note adds to it (the frames from one
    onset in U to the next) capped at ``cap`` nats either way. A held note alone cannot
    tell which occurrence of its pitch the player is in: its frames repeat one
    observation, and a far place under the same pitch with a thinner accompaniment gains
    on every one of them (a censored likelihood-ratio test, robust to that misfit).
    """

    def __init__(self, shadows: list, main: float, home, cap: float) -> None:
        self.shadows = shadows
        self.cap = cap
        self.start = [sh.log_evidence for sh in shadows]
        self.main_start, self.home_start = main, home.log_evidence
        self.done = 0  # frames of the trial
        self.onsets = 0  # onsets heard in them
        self._at_note = np.zeros(len(shadows))  # the gains at the note's onset
        self._banked = np.zeros(len(shadows))  # the leads over the notes before it
        self._home_at_note = self._home_banked = 0.0  # the same for the home track's lead

    def _clip(self, x):
        return np.clip(x, -self.cap, self.cap)

    def note_onset(self, main_before: float, home) -> None:
        """An onset in the frame about to be processed (``main_before``: the main track's
        evidence before it): the note before it is banked."""
        gains = self.gains(main_before, home)
        self._banked += self._clip(gains - self._at_note)
        self._at_note = gains
        home_gain = self.home_gain(main_before, home)
        self._home_banked += float(self._clip(home_gain - self._home_at_note))
        self._home_at_note = home_gain
        self.onsets += 1

    def gains(self, main: float, home) -> np.ndarray:
        """Each shadow's evidence since the trial began minus the reference's (nats)."""
        ref = max(main - self.main_start, home.log_evidence - self.home_start)
        return np.array([(sh.log_evidence - e0) - ref for sh, e0 in zip(self.shadows, self.start)])

    def leads(self, gains: np.ndarray) -> np.ndarray:
        """Each shadow's lead: its ``gains`` (from :meth:`gains`, this frame) with each
        note's part capped (nats)."""
        return self._banked + self._clip(gains - self._at_note)

    def home_gain(self, main: float, home) -> float:
        """The home track's evidence since the trial began minus the main track's (nats)."""
        return (home.log_evidence - self.home_start) - (main - self.main_start)

    def main_became_home(self, main: float, home) -> None:
        """The main track (log evidence ``main`` now) took over the home track's belief: from
        here on it gains what the home track gains, so the home track's lead starts afresh."""
        self.main_start = main - (home.log_evidence - self.home_start)
        self._home_at_note = self._home_banked = 0.0

    def home_lead(self, main: float, home) -> float:
        """The home track's evidence since the trial began minus the main track's, each
        note's part capped (nats)."""
        return self._home_banked + float(self._clip(self.home_gain(main, home) - self._home_at_note))

    def keep(self, indices: list[int]) -> None:
        """Go on with the shadows at ``indices`` only."""
        self.shadows = [self.shadows[i] for i in indices]
        self.start = [self.start[i] for i in indices]
        self._at_note = self._at_note[indices]
        self._banked = self._banked[indices]
