"""Verified relocation: the global search proposes far places, the relocator proves them.

The relocator keeps the last ``replay_windows * confirm_s`` seconds of frames (a ring) and
the main track's evidence over them. For each place the search proposes, a *shadow*
follower starts where the place says the player was at the start of that window and
replays the kept frames (a *screening*, spread over a few blocks): a shadow passes if its
evidence ``sum log p(u_t | u_<t)`` beats the main track's over the replay and trails it in
no window of ``confirm_s`` by more than ``screen_tolerance_nats``. The passing shadows then
follow new frames side by side with the main track (a *trial*, a sequential test), and
the best replaces the main track once it leads the reference by ``margin_nats`` (a log
Bayes factor) plus what the jump costs under the prior (:mod:`player.jump_prior`: nothing
for a restart a bar or two back, little for a movement's start, more the farther the
place), each note of U adding at most ``note_lead_cap_nats`` to its lead, and only if it
has kept pace with the player since the trial's first note (``trial_min_progress``: a
place that stands still in a held note of X, while the player repeats that pitch, explains
the player without following them). Of the places on trial, only the one that leads by
most beyond its cost may win, the cost as the main track's tenure has it even when the
track is failing (a failing track defends nothing, but a place near where it was is still
likelier than a far one; a track without a record says nothing about where the player is).
A place the search proposes again where it proposed one seconds before, while the main
track moved on with the player, is not screened (``stationary_s``): the player is not
standing still there (a long note of X that explains every sung or played note sits still
while the player moves on; a place the player went to moves on with them). A literal
repeat far away explains the playing exactly as well as the place the player is at: it never pays
its cost, and the player stays (continuity). A varied repeat nearby (a phrase again with another
accompaniment, a few seconds back) costs little under the prior and may lead by what the model
gets wrong; a place whose music looks like the main track's (:mod:`player.lookalike`) needs up
to ``alike_nats`` more while the player plays on without a pause (musicians restart after
stopping), and a player who went there is followed once the two places part.

The trial's reference is the better of the main track and a *home* shadow restarted where
the main track was at the start of the replay, with a wide spread: the hypothesis "the
player is still about here". A held note in a fermata is then never a reason to jump to
another long note elsewhere (the home track holds it too). If the home track ends a
trial ahead of the main track by the margin (the main track ran off within its band), it
takes over; it does so at once when its uncapped lead passes ``home_takeover_nats`` after
a note change, and the candidates' trial then goes on against the new main track. The
screening only filters: it compares with the main track alone, since the home track,
free to realign within a second, often explains a replay that straddles a restart as
well as the right place does (a look-alike a few seconds on), and the right place would
wait for the next sweep.

docs/DECISIONS.md has the measurements behind each of these rules.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from player.jump_prior import JumpPrior
from player.lookalike import LookAlike
from player.search import Candidate, GlobalSearch
from player.stages import Frame, Track
from shared.config import check_fields, field_error


@dataclass(frozen=True)
class RelocatorConfig:
    """Settings of the verification (screening and trial) of far places.

    Attributes:
        confirm_s: length of one screening window (U seconds).
        replay_windows: windows of past frames replayed to screen the candidates.
        margin_nats: log Bayes factor over new frames at which a candidate track wins.
        reject_nats: log Bayes factor over new frames at which a candidate track is dropped.
        trial_s: the nominal length of a trial on new frames (U seconds).
        trial_max_s: the longest a trial lasts (U seconds): past ``trial_s`` it goes on for
            shadows that keep gaining at ``trial_pace`` of the winning pace
            (``margin_nats`` per ``trial_s``).
        trial_pace: see ``trial_max_s``.
        retry_s: after a screening, the least time (U seconds) before the next one.
        shadow_spread_s: spread (seconds of X) of every shadow where it starts (the search
            places a candidate only to within a few tenths of a second).
        replay_per_frame: replayed frames per analysis frame (a screening is spread over
            several blocks so that no block costs much more than the others).
        screen_tolerance_nats: how far a screened place may trail the reference in one
            window (nats) if it leads over the whole replay.
        note_lead_cap_nats: in a trial, the most one note of U (onset to onset) adds to a
            lead, or takes from it (nats).
        home_takeover_nats: uncapped lead of the home track over the main track (nats)
            at which it takes over during a trial, once a note change has been heard.
        onset_change: Hellinger distance between consecutive observations (the main
            track's ``last_change``) from which a frame counts as a note's onset.
        trial_min_progress: a shadow wins only if, from the trial's first note of U on, it
            has moved at least this share of what the player's tempo (the main track's when
            the trial began, scaled by its tenure) would have carried it: a place
            that stands in a held note of X while the player repeats its pitch explains
            every repeated note, but does not follow them (0: no such rule).
        stationary_s: a far place within ``stationary_s / 2`` (seconds of X) of one
            proposed ``stationary_s`` to ``2.5 * stationary_s`` seconds of U before is not
            screened if the main track has since moved on ``stationary_s`` seconds of X
            or more (0: no such rule).
        alike_nats: the most a place that looks like the main track's adds to the lead it
            needs (nats; :mod:`player.lookalike`): all of it where X's divergence between
            the two places is ``alike_kl / 2`` or less, none from ``alike_kl`` (0: no
            such rule).
        alike_kl: see ``alike_nats`` (nats per state).
        alike_span_s: seconds of X before each place the divergence compares.
        alike_settle_s: seconds the main track must have followed the player since it last
            moved, and since the player last paused (the prior's ``pause_s``), before
            ``alike_nats`` applies.
    """

    confirm_s: float = 0.6
    replay_windows: int = 2
    margin_nats: float = 25.0
    reject_nats: float = 10.0
    trial_s: float = 1.2
    trial_max_s: float = 3.0
    trial_pace: float = 0.5
    retry_s: float = 0.5
    shadow_spread_s: float = 1.0
    replay_per_frame: int = 24
    screen_tolerance_nats: float = 3.0
    note_lead_cap_nats: float = 20.0
    home_takeover_nats: float = 60.0
    onset_change: float = 0.22
    trial_min_progress: float = 0.6
    stationary_s: float = 1.5
    alike_nats: float = 50.0
    alike_kl: float = 0.6
    alike_span_s: float = 4.0
    alike_settle_s: float = 5.0

    def __post_init__(self) -> None:
        check_fields(self, positive=("confirm_s", "replay_windows", "margin_nats", "trial_s", "replay_per_frame",
                                     "note_lead_cap_nats", "home_takeover_nats", "alike_kl", "alike_span_s"),
                     non_negative=("reject_nats", "retry_s", "shadow_spread_s", "screen_tolerance_nats",
                                   "onset_change", "trial_min_progress", "stationary_s", "alike_nats",
                                   "alike_settle_s"),
                     unit=("trial_pace",),
                     unbounded=("reject_nats", "screen_tolerance_nats", "note_lead_cap_nats", "home_takeover_nats"))
        if self.trial_max_s < self.trial_s:
            raise field_error(self, "trial_max_s", self.trial_max_s, f">= trial_s ({self.trial_s:g})")


class Relocator:
    """Verifies the search's candidates with the follower's own model before moving the
    main track (see the module docstring). A :class:`player.stages.FrameStage`: call
    :meth:`process_frame` after the main track has processed the frame.

    Args:
        search: the global search that proposes candidates.
        main: the main track (the engine's follower).
        tracks: followers to verify with: the first is the home track, the others take
            the candidates (as many as the search proposes per sweep).
        config: the settings.
        frame_s: analysis frame period (seconds).
        prior: the prior on jumps (None: every jump costs only the margin).

    Attributes:
        moved: whether the last frame moved the main track.
        history: the last verifications, for diagnostics: ``(U s, main state, candidate
            state, gain in nats, "screen" | "won" | "lost" | "home" | "still")``; "still":
            a place not screened, see ``stationary_s``.
    """

    def __init__(self, search: GlobalSearch, main: Track, tracks: Sequence[Track], config: RelocatorConfig,
                 frame_s: float, prior: JumpPrior | None = None) -> None:
        self.search = search
        self.prior = prior
        self._alike: LookAlike | None = None  # made at the first screening that needs it
        self.frame_s = frame_s
        self.main = main
        self.home, *self.shadows = list(tracks)
        self.config = config
        self.window = max(1, int(round(config.confirm_s / frame_s)))
        self.n_replay = self.window * max(1, config.replay_windows)
        self.retry_frames = int(round(config.retry_s / frame_s))
        self.trial_frames = max(1, int(round(config.trial_s / frame_s)))
        self.trial_max_frames = max(self.trial_frames, int(round(config.trial_max_s / frame_s)))
        self.pace_per_frame = config.trial_pace * config.margin_nats / self.trial_frames  # nats
        self.shadow_spread_states = config.shadow_spread_s / search.params.coarse_period_s
        self.replay_per_frame = max(1, config.replay_per_frame)
        # silent frames that end a run of playing (the prior's pause_s; never without a prior)
        self.pause_frames = prior.config.pause_s / frame_s if prior is not None else np.inf
        n_obs = search.params.n_obs_bins
        # ring of recent frames: the replayed ones and all that can arrive during a screening
        # (every track replays them all at worst), so a screening never reads an overwritten slot
        screening_frames = -(-(len(self.shadows) + 1) * self.n_replay // self.replay_per_frame)
        self._cap = self.n_replay + screening_frames + 1
        self._u = np.zeros((self._cap, n_obs), dtype=np.float32)
        self._active = np.zeros(self._cap, dtype=bool)
        self._times = np.zeros((self._cap, 2))  # (end_s, now_s)
        self._scale = np.ones(self._cap)  # the likelihood's temper scale of each frame
        self._strength = np.zeros(self._cap)  # the onset strength of each frame
        self._evidence = np.zeros(self._cap)  # the main track's log evidence before each frame
        self._position = np.zeros(self._cap)  # and its position (states)
        self._note_began = np.zeros(self._cap, dtype=bool)  # whether a note began in the frame
        self._replay_evidence = np.zeros(self.n_replay + 1)
        self._replayed = Frame()  # a kept frame as the tracks are fed it
        self.history: deque[tuple[float, float, float, float, str]] = deque(maxlen=64)
        # the places proposed in the last 2.5 * stationary_s: (frame index, place, main track's place)
        self._proposed: deque[tuple[int, float, float]] = deque()
        self.reset()

    def reset(self) -> None:
        """Forget the recent frames, any screening or trial, and the search's context (the
        player restarted)."""
        self._count = 0
        self._settled = 0  # active frames since the main track last moved (a jump, the home track)
        self._was_changing = False  # the last frame changed by onset_change or more
        self._wait = 0
        self._job = None  # a screening in progress (a generator, advanced once per frame)
        self._budget = 0
        self._pending: Trial | None = None  # the trial in progress
        self._tenure = 0  # active frames the main track has followed since the start
        self._relocated = False  # the main track has been moved by a trial since the start
        self._left: tuple[float, float, int] | None = None  # (state, tempo, frame) the last far jump left
        self._silent = 0  # frames the player has been silent for
        self._run = 0  # frames since the player's present run of playing began (after a pause)
        self.moved = False
        self._proposed.clear()
        self.search.reset()

    @property
    def on_trial(self) -> bool:
        """Whether places are on trial now."""
        return self._pending is not None

    @property
    def trial(self) -> Trial | None:
        """The trial in progress (for diagnostics), or None."""
        return self._pending

    @property
    def screening(self) -> bool:
        """Whether a screening is in progress."""
        return self._job is not None

    # ------------------------------------------------------------------ per frame
    def process_frame(self, frame: Frame) -> None:
        """Keep the frame (with the main track's ``evidence_before`` and
        ``position_before`` it), let the search score its next slice, and advance a
        screening or a trial, or start a screening of the search's candidates. Sets
        :attr:`moved`."""
        main = self.main
        changing = frame.active and (main.last_change or 0.0) >= self.config.onset_change
        index = self._keep(frame, changing and not self._was_changing)
        self._was_changing = changing
        self._wait = max(0, self._wait - 1)
        self.moved = False
        self._count_run(frame.active)
        if not main.started:
            return
        self._tenure += int(frame.active)
        if self.prior is not None and self.prior.config.unearned_failing_resets and not self._relocated and \
                self._tenure * self.frame_s < self.prior.config.tenure_s and \
                self.prior.failing_scale(self._sustained_lead()) < 1.0:
            # failing before it earned a record: it never explained the playing (a player who
            # began elsewhere than where it waited), so a far place costs no more than a near one
            self._tenure = 0
        self._settled += int(frame.active)
        self.search.step(frame.obs, frame.active, main.state.detune_cents, main.position_states)  # (keeps its context)
        if self._job is not None:
            self._budget = self.replay_per_frame
            try:
                next(self._job)
            except StopIteration:
                self._job = None
            return
        if self._pending is not None:
            self.moved = self._trial(index, frame.evidence_before)
            if self.moved:  # the places proposed were judged against another track
                self._proposed.clear()
        elif self._wait == 0 and self._count >= self.n_replay:
            candidates = [c for c in self.search.candidates(main.position_states) if not self._stationary(c, frame)]
            candidates = candidates[: len(self.shadows)]
            if candidates:
                self._wait = self.retry_frames
                self._job = self._screen(candidates, frame.now_s)

    # ------------------------------------------------------------------ public seams (tests, tools)
    def screen(self, candidates: Sequence[Candidate], now_s: float = 0.0) -> None:
        """Screen ``candidates`` over the kept frames at once (the per-frame path spreads
        this over several frames); those that pass go on trial (:attr:`on_trial`)."""
        job = self._screen(list(candidates), now_s)
        while True:
            self._budget = self.n_replay * (len(candidates) + 1)
            try:
                next(job)
            except StopIteration:
                return

    def begin_trial(self, shadows: Sequence[Track]) -> None:
        """Put ``shadows`` (tracks of :attr:`shadows`, already placed) on trial against the
        main track from the next frame on, as a screening they passed would."""
        now_s = self._now_s(self._count - 1) if self._count else 0.0
        self._pending = Trial(list(shadows), self.main.log_evidence, self.home, self.config.note_lead_cap_nats,
                              np.full(len(shadows), self.config.margin_nats), self.main.state.tempo, now_s)

    # ------------------------------------------------------------------ the frame ring
    def _keep(self, frame: Frame, note_began: bool) -> int:
        """Keep ``frame`` (and the main track's evidence and position before it) in the
        ring; return its absolute index."""
        i = self._count % self._cap
        self._u[i] = frame.obs
        self._active[i] = frame.active
        self._times[i] = frame.end_s, frame.now_s
        self._scale[i] = frame.evidence_scale
        self._strength[i] = frame.onset
        self._evidence[i] = frame.evidence_before
        self._position[i] = frame.position_before
        self._note_began[i] = note_began
        self._count += 1
        return self._count - 1

    def _now_s(self, index: int) -> float:
        """The U time (seconds) at which the kept frame of absolute index ``index`` was reported."""
        return float(self._times[index % self._cap, 1])

    def _feed(self, track: Track, index: int) -> None:
        """Run ``track`` on the kept frame of absolute index ``index``."""
        k = index % self._cap
        f = self._replayed
        f.obs, f.active = self._u[k], bool(self._active[k])
        f.end_s, f.now_s = self._times[k]
        f.evidence_scale, f.onset = float(self._scale[k]), float(self._strength[k])
        track.process_frame(f)

    # ------------------------------------------------------------------ trials
    def _trial(self, index: int, main_before: float) -> bool:
        """One new frame for the shadows on trial (a sequential test): the best is adopted
        once its lead (each note capped, see :class:`Trial`) passes ``margin_nats``; one
        that falls ``reject_nats`` behind is dropped; after ``trial_s`` so is one that gains
        slower than the pace; the trial ends after ``trial_max_s``. ``index``: the new
        frame's absolute index; ``main_before``: the main track's log evidence before it.
        True if the main track was moved."""
        follower = self.main
        trial = self._pending
        trial.done += 1
        now_s = self._now_s(index)
        if self._note_began[index % self._cap]:
            trial.note_onset(main_before, self.home)
        for track in [self.home] + trial.shadows:
            self._feed(track, index)
        trial.settle(now_s)
        # each place's cost by the track's tenure alone: the places compete with each other
        # under it, failing track or not (it has no record to defend against any of them,
        # but a movement's start or a place near where it was is still where a player who
        # left it more likely went than a far look-alike)
        full = np.zeros(len(trial.shadows))
        if self.prior is not None:
            full = np.array([self._cost(sh.position_states, sh.state.tempo, trusted=False) for sh in trial.shadows])
            # a jump costs less once the track is failing (the search's evidence grows during
            # a trial), never more (the track's tenure grows too, the player does not change)
            failing = self.prior.failing_scale(self._sustained_lead())
            trial.required = np.minimum(trial.required, self.config.margin_nats + full * failing)
        gains = trial.gains(follower.log_evidence, self.home)
        leads = trial.leads(gains)
        # ranked without the look-alike surcharge (and paced and timed without it, below): a
        # place that looks like the main track's waits for more evidence to win, but a lesser
        # place does not win meanwhile; the surcharge stays when the track looks failing (the
        # look-alike's own lead is what makes it look so)
        best = int(np.argmax(leads - np.maximum(trial.required, self.config.margin_nats + full)))
        if leads[best] > trial.required[best] + trial.surcharge[best] and self._kept_pace(trial, best, now_s):
            self._pending = None
            there = trial.shadows[best].position_states
            self.history.append((now_s, follower.position_states, there, leads[best], "won"))
            if self.prior is not None and not self.prior.near(follower.position_states, np.array([there]))[0]:
                # a far jump: going back there stays free for a while (a wrong jump is undone at once)
                self._left = (follower.position_states, follower.state.tempo, self._count)
            follower.adopt(trial.shadows[best])
            self._relocated = True
            self._settled = 0
            return True
        # the main track may itself have run off since the trial began (its band spans
        # seconds): the home track takes over on a clear raw lead over a note change, or
        # when the trial ends with its capped lead past the margin
        home_gain = trial.home_gain(follower.log_evidence, self.home)
        if trial.onsets > 0 and home_gain > self.config.home_takeover_nats:
            # the candidates' trial goes on against the new main track: a far place that
            # was gaining keeps its lead
            self._take_home(now_s, home_gain)
            trial.main_became_home(follower.log_evidence, self.home)
            return True
        # past ``trial_s``, each shadow must gain at the pace that reaches its own bar
        pace = self.pace_per_frame * trial.done * trial.required / self.config.margin_nats
        bar = np.full(len(gains), -self.config.reject_nats) if trial.done < self.trial_frames else pace
        # a costly jump needs more notes to pay for itself: its trial may last longer (the
        # others' does not: a near place proposed meanwhile waits for the trial's end)
        longest = self.trial_max_frames * np.minimum(3.0, trial.required / self.config.margin_nats)
        keep = [i for i, g in enumerate(gains) if g > bar[i] and trial.done < longest[i]]
        if not keep:
            self._pending = None
            self.history.append((now_s, follower.position_states, trial.shadows[best].position_states,
                                 leads[best], "lost"))
            home_lead = trial.home_lead(follower.log_evidence, self.home)
            if home_lead > self.config.margin_nats:
                return self._take_home(now_s, home_lead)
            return False
        trial.keep(keep)
        return False

    def _kept_pace(self, trial: Trial, i: int, now_s: float) -> bool:
        """Whether shadow ``i`` has moved at least ``trial_min_progress`` of what the
        player's tempo would have carried it (U s ``now_s`` now), counted from its lowest
        place before the trial's first note: until then it may settle back (the search
        places it only to within a second), from then on it must follow. The player's tempo
        is the main track's once it has followed the player for a while (the prior's trust
        in its tenure: a track that has just started does not know the player's tempo; one
        that a look-alike makes look failing still does)."""
        trust = 1.0 if self.prior is None else self.prior.trust(self._tenure * self.frame_s)
        t0, pos0 = trial.low_time[i], trial.low_pos[i]
        need = (self.config.trial_min_progress * trust * (now_s - t0) * trial.tempo
                / self.search.params.coarse_period_s)
        return trial.shadows[i].position_states - pos0 >= need

    def _stationary(self, candidate: Candidate, frame: Frame) -> bool:
        """Whether ``candidate`` sits where a place was proposed ``stationary_s`` to ``2.5 *
        stationary_s`` seconds before (within half of ``stationary_s`` of X) while the main
        track moved on ``stationary_s`` or more since: then it is not where the player
        went (that place would have moved on with them). Every candidate is remembered."""
        s = self.config.stationary_s
        now = self._count
        main = self.main.position_states
        if s <= 0:
            return False
        self._proposed.append((now, candidate.state, main))
        period = self.search.params.coarse_period_s
        earliest, latest = now - 2.5 * s / self.frame_s, now - s / self.frame_s
        while self._proposed[0][0] < earliest:
            self._proposed.popleft()
        for at, place, main_then in self._proposed:
            if (earliest <= at <= latest and abs(candidate.state - place) * period <= s / 2
                    and (main - main_then) * period >= s):
                last = self.history[-1] if self.history else None
                if last is None or last[4] != "still" or abs(last[2] - candidate.state) * period > s / 2:
                    self.history.append((frame.now_s, main, candidate.state, 0.0, "still"))  # (once a place)
                return True
        return False

    def _alike_nats(self, main_state: float, state: float) -> float:
        """What a place (``state``) that looks like the main track's (``main_state``) adds to
        the lead it needs (nats): ``alike_nats`` where X's divergence between the two is
        ``alike_kl / 2`` or less, falling to 0 at ``alike_kl`` (:mod:`player.lookalike`);
        nothing until the main track has followed the player ``alike_settle_s`` seconds
        since it last moved and since the player last paused (a track that has just moved,
        or been moved back by the home track, has no record that the look-alike
        contradicts: a wrong jump to a look-alike is undone at the usual bar; and a player
        who stopped may have gone back to the phrase's first time: musicians restart after
        a pause, not in the middle of a run)."""
        cfg = self.config
        settled = min(self._settled, self._run)  # frames
        if cfg.alike_nats <= 0.0 or settled * self.frame_s < cfg.alike_settle_s:
            return 0.0
        if self._alike is None:
            self._alike = LookAlike(self.search.templates, self.search.params.coarse_period_s, cfg.alike_span_s)
        divergence = self._alike.divergence(main_state, state)
        return cfg.alike_nats * float(np.clip(2.0 * (cfg.alike_kl - divergence) / cfg.alike_kl, 0.0, 1.0))

    def _count_run(self, active: bool) -> None:
        """Count the frames since the player's present run of playing began (the first
        active frame after a pause of the prior's ``pause_s``)."""
        if active and self._silent >= self.pause_frames:
            self._run = 0
        self._silent = 0 if active else self._silent + 1
        self._run += 1

    def _take_home(self, now_s: float, lead: float) -> bool:
        """The home track replaces the main track (``lead``: by how much, nats); True. (A
        trial in progress is the caller's to end or go on with.)"""
        self.history.append((now_s, self.main.position_states, self.home.position_states, lead, "home"))
        self.main.adopt(self.home)
        self._settled = 0
        return True

    def _sustained_lead(self) -> float:
        """How far some far place has been explaining the playing better than the main
        track over the prior's ``lost_window_s`` (the search's sustained lead, nats per
        observation): what says the track is failing."""
        return self.search.sustained_lead(self.prior.config.lost_window_s)

    def _cost(self, state: float, tempo: float = 1.0, trusted: bool = True) -> float:
        """The prior's cost (nats) of moving the main track to ``state`` (where a player
        at ``tempo`` would be now): nothing back to where the track the last far jump left
        would be now (within the prior's ``free_s``: a restart's reach), for ``undo_s``.
        (Not anywhere near it: a look-alike a few seconds from the right place would then
        be free too, right after a right jump.) ``trusted``: scaled by the trust in the
        main track's record (its tenure, whether it is failing); False: by its tenure
        alone, as the places on trial are ranked against each other (a failing track's
        place was the player's until they left it; a track without a record, started at
        a default place, says nothing about where the player is)."""
        if self.prior is None:
            return 0.0
        period = self.search.params.coarse_period_s
        if self._left is not None:
            left, left_tempo, at = self._left
            elapsed = self._count - at
            if elapsed * self.frame_s <= self.prior.config.undo_s:
                there = left + elapsed * left_tempo * self.frame_s / period
                if abs(state - there) * period <= self.prior.config.free_s:
                    return 0.0
        began = state - self._run * self.frame_s * tempo / period
        lead = self._sustained_lead() if trusted else 0.0
        return self.prior.cost(self.main.position_states, state, self._tenure * self.frame_s, lead, began)

    # ------------------------------------------------------------------ screenings
    def _replay(self, shadow: Track, frames: range, reference: np.ndarray | None = None):
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

    def _screen(self, candidates: list[Candidate], now_s: float):
        """Replay the recent frames from each candidate; put those that pass on trial. A
        generator: each resumption replays at most ``_budget`` frames."""
        follower = self.main
        end = self._count
        frames = range(end - self.n_replay, end)
        slots = [f % self._cap for f in frames]
        active = self._active[slots].reshape(-1, self.window)
        if (active.mean(axis=1) < 0.5).any():  # a silent window proves nothing
            return
        main = np.append(self._evidence[slots], follower.log_evidence)
        main_end = follower.log_evidence
        reference = main[self.window::self.window] - main[:-1:self.window]  # per window
        # the home track is brought up to now for the trial (it is not a screening's reference)
        self.home.adopt(follower)
        self.home.relocate(self._position[slots[0]], spread_states=self.shadow_spread_states,
                           tempo=follower.state.tempo)
        yield from self._replay(self.home, frames)
        frames_per_state = self.search.per_state
        passed, required, surcharge = [], [], []
        for shadow, cand in zip(self.shadows, candidates, strict=False):
            # where this candidate puts the player at the start of the replay
            start = cand.state - self.n_replay * cand.tempo / frames_per_state
            shadow.adopt(follower)
            shadow.relocate(max(start, 0.0), spread_states=self.shadow_spread_states, tempo=cand.tempo)
            gains = yield from self._replay(shadow, frames, reference)
            self.history.append((now_s, follower.position_states, cand.state, float(gains.min()), "screen"))
            if gains.min() > -self.config.screen_tolerance_nats and gains.sum() > 0.0:
                passed.append(shadow)
                surcharge.append(self._alike_nats(follower.position_states, cand.state))
                required.append(self.config.margin_nats + self._cost(cand.state, cand.tempo))
        if not passed:
            return
        # the frames that came during the screening open the trial (the main track has them)
        trial = Trial(passed, main_end, self.home, self.config.note_lead_cap_nats, np.array(required),
                      follower.state.tempo, self._now_s(end - 1), np.array(surcharge))
        for f in range(end, self._count):
            k = f % self._cap
            if self._note_began[k]:
                trial.note_onset(self._evidence[k], self.home)
            for track in [self.home] + trial.shadows:
                self._feed(track, f)
            trial.settle(self._now_s(f))
        trial.done = min(self._count - end, self.trial_frames - 1)
        self._pending = trial


class Trial:
    """The tracks on trial and the evidence (log evidence, nats) they are judged on.

    A shadow's *gain* is its evidence since the trial began minus the reference's (the
    better of the main and home tracks); a shadow that falls behind on it is dropped. It
    wins on its *lead*: the same gain, with what each note adds to it (the frames from one
    onset in U to the next) capped at ``cap`` nats either way. A held note alone cannot
    tell which occurrence of its pitch the player is in: its frames repeat one
    observation, and a far place under the same pitch with a thinner accompaniment gains
    on every one of them (a censored likelihood-ratio test, robust to that misfit).
    From the first note on, the relocator also asks each winner to have kept pace with the
    player (``tempo``, X seconds per U second; see ``trial_min_progress``).
    """

    def __init__(self, shadows: list[Track], main: float, home: Track, cap: float, required: np.ndarray,
                 tempo: float, now_s: float, surcharge: np.ndarray | None = None) -> None:
        self.shadows = shadows
        self.cap = cap
        self.required = required  # the lead each shadow needs under the prior (nats): margin + prior cost
        # what looking like the main track's place adds to that to win (nats; not to its pace)
        self.surcharge = np.zeros(len(shadows)) if surcharge is None else np.asarray(surcharge, dtype=float)
        self.start = [sh.log_evidence for sh in shadows]
        # each shadow's lowest place before the trial's first note (states) and when (U s):
        # from there on it must keep pace with the player
        self.low_pos = np.array([sh.position_states for sh in shadows], dtype=float)
        self.low_time = np.full(len(shadows), now_s)
        self.tempo = tempo  # the player's (X seconds per U second)
        self.main_start, self.home_start = main, home.log_evidence
        self.done = 0  # frames of the trial
        self.onsets = 0  # onsets heard in them
        self._at_note = np.zeros(len(shadows))  # the gains at the note's onset
        self._banked = np.zeros(len(shadows))  # the leads over the notes before it
        self._home_at_note = self._home_banked = 0.0  # the same for the home track's lead

    def _clip(self, x):
        return np.clip(x, -self.cap, self.cap)

    def note_onset(self, main_before: float, home: Track) -> None:
        """An onset in the frame about to be processed (``main_before``: the main track's
        evidence before it): the note before it is banked."""
        gains = self.gains(main_before, home)
        self._banked += self._clip(gains - self._at_note)
        self._at_note = gains
        home_gain = self.home_gain(main_before, home)
        self._home_banked += float(self._clip(home_gain - self._home_at_note))
        self._home_at_note = home_gain
        self.onsets += 1

    def settle(self, now_s: float) -> None:
        """After a frame (U s ``now_s``): before the trial's first note, a shadow that went
        back is still settling, and its pace will be counted from its lowest place."""
        if self.onsets:
            return
        pos = np.array([sh.position_states for sh in self.shadows])
        lower = pos < self.low_pos
        self.low_pos[lower], self.low_time[lower] = pos[lower], now_s

    def gains(self, main: float, home: Track) -> np.ndarray:
        """Each shadow's evidence since the trial began minus the reference's (nats)."""
        ref = max(main - self.main_start, home.log_evidence - self.home_start)
        return np.array([(sh.log_evidence - e0) - ref for sh, e0 in zip(self.shadows, self.start, strict=True)])

    def leads(self, gains: np.ndarray) -> np.ndarray:
        """Each shadow's lead: its ``gains`` (from :meth:`gains`, this frame) with each
        note's part capped (nats)."""
        return self._banked + self._clip(gains - self._at_note)

    def home_gain(self, main: float, home: Track) -> float:
        """The home track's evidence since the trial began minus the main track's (nats)."""
        return (home.log_evidence - self.home_start) - (main - self.main_start)

    def main_became_home(self, main: float, home: Track) -> None:
        """The main track (log evidence ``main`` now) took over the home track's belief: from
        here on it gains what the home track gains, so the home track's lead starts afresh."""
        self.main_start = main - (home.log_evidence - self.home_start)
        self._home_at_note = self._home_banked = 0.0

    def home_lead(self, main: float, home: Track) -> float:
        """The home track's evidence since the trial began minus the main track's, each
        note's part capped (nats)."""
        return self._home_banked + float(self._clip(self.home_gain(main, home) - self._home_at_note))

    def keep(self, indices: list[int]) -> None:
        """Go on with the shadows at ``indices`` only."""
        self.shadows = [self.shadows[i] for i in indices]
        self.required = self.required[indices]
        self.surcharge = self.surcharge[indices]
        self.start = [self.start[i] for i in indices]
        self.low_pos, self.low_time = self.low_pos[indices], self.low_time[indices]
        self._at_note = self._at_note[indices]
        self._banked = self._banked[indices]
