"""The online follower: a band-limited forward filter over X's states, frame by frame.

Model: hidden state ``s`` = coarse frame of X (``coarse_period_s``
apart); observation = one fine frame of U (``fine_period_s`` apart), a normalised,
compressed spectrum ``u`` (sums to 1). At state ``s`` and detune ``d``::

    log p(u | s, d) = kappa * sum_f u_f log T[d, s, f]       (a tempered multinomial)

``kappa`` is the pseudo-count: a small one keeps the likelihood humble, so one odd frame
cannot throw the filter off the track. Transitions are left-to-right: stay, advance one
state, or skip one, with probabilities set each frame from the current tempo estimate so
the prior drifts at the player's speed (expected advance ``tempo * fine/coarse`` states
per frame). The detune is a static unknown with a slowly forgetting posterior over the
template variants; the state likelihood mixes the variants with those weights.

Onsets: a second, independent observation per frame is U's onset strength ``o`` in
[0, 1] (:class:`shared.spectral.OnsetStrength`), against X's at each sub-state
(computed by prep with the same code): the chance of hearing an onset is
``q = onset_false + (onset_hit - onset_false) * x_onset`` (X's strength taken as the most
within ``onset_tolerance_s``), and the frame adds ``onset_weight * (o log q + (1 - o)
log(1 - q))`` (relative to the piece's mean ``q``) to each sub-state. The spectra alone
cannot tell where in a run of repeated notes the player is, nor where a slowly swelling
note (a voice in X) begins; onsets can. The term shapes the posterior but is kept out of
``log_evidence``, which the relocator compares between places (rhythm alone must not
move the player: docs/DECISIONS.md).

Cost independent of piece length: only a band of ``band_states`` states around the
posterior's mode is filtered (the band follows the mode). A player who jumps is found
again by :class:`player.search.GlobalSearch`, which scans the whole piece in fixed-size
slices, and :class:`player.relocator.Relocator`, which verifies a better place before it
hands the filter a new band.

Silence: frames where the soloist is not playing (``active=False``) do not update the
posterior; the position then advances at the current tempo, so the accompaniment keeps
going through rests, and locks on again at the next note. A silence longer than
``tutti_after_s`` is the accompaniment's (a tutti): its tempo is the recording's own (or
the one the player said they practise at), so the soloist's tempo fades out of the advance
(over ``tutti_fade_s``) and the recording plays on as recorded until the soloist comes
back in.

Units: positions in seconds of X (``x_s``) or states; time in seconds of U; tempo is X
seconds per U second (1 = the recording's tempo, 1.2 = the player is 20% faster).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from player.stages import Frame
from shared.config import check_fields, field_error
from shared.kernels import kernel
from shared.spectral import AnalysisParams, QuantizedTemplates


@dataclass(frozen=True)
class FollowerConfig:
    """Tuning of the forward filter (why the defaults: docs/DECISIONS.md).

    Attributes:
        kappa: likelihood scale (pseudo-count of a frame).
        substeps: sub-states per state; a state's log-likelihood is interpolated linearly
            between neighbouring states (equivalent to geometrically interpolated templates),
            so the position resolves to ``coarse_period / substeps`` at no extra template cost.
        band_states: width of the filtered band (states).
        band_lead: fraction of the band kept ahead of the mode.
        step_std: spread of the per-frame advance around the tempo's expected advance
            (sub-states); the room the likelihood has to correct the drift.
        silent_step_std: the same while the soloist is silent (rests, tutti).
        reentry_after_s: a silence at least this long (seconds) counts as a rest.
        reentry_tempo_uncertainty: relative tempo error assumed through a rest; at the
            re-entry the belief is spread by this times the rest's length (seconds of X).
        reentry_min_s: the least spread at a re-entry (seconds of X).
        section_entry_s: a soloist silent while the belief crossed the start of a section
            (X's music after a silence: a new movement, see :meth:`Follower.set_sections`)
            may begin it later than the recording does, by up to this much (seconds of
            X): at their re-entry ``section_entry_weight`` of the belief moves to the
            section's start. 0 disables.
        section_entry_weight: see ``section_entry_s``.
        tutti_after_s: a silence longer than this (seconds of U) is a tutti: the position
            moves on at the recording's own tempo (or the expected one, see
            :class:`Follower`), the soloist's fading out over
            ``tutti_fade_s`` (seconds of U).
        detune_memory_s: time constant of the detune posterior's forgetting (seconds of U).
        detune_rate: weight of one frame's detune evidence.
        detune_prune_nats: a detune variant whose log weight is this far under the
            favourite's is not computed (its share of the mixture is under
            ``exp(-detune_prune_nats)``), except every ``detune_refresh_frames`` frames,
            when all are, and until the next such frame if it explained that frame as well
            as the favourite. 0: every variant at every frame.
        detune_refresh_frames: see ``detune_prune_nats``.
        tempo_memory_s: time constant of the tempo regression (seconds of U).
        tempo_prior_weight: pull of the tempo towards the expected one (1, the recording's,
            unless the player said otherwise; seconds of regression data).
        lead_s: extra U time (seconds) the reported position is extrapolated ahead, for the
            systematic lag of an onset's detection.
        mean_halfwidth: sub-states on each side of the mode averaged for the position.
        floor: probability floor of each sub-state within ``floor_reach_s`` of the mode
            (lets the filter recover from a small slip).
        floor_reach_s: how far from the mode (seconds of X) the floor reaches. Beyond it a
            place gets mass only by the transitions: a far place that explains a held note
            better (a thinner accompaniment under the same pitch) must not take the filter
            there unverified; far places are the global search's job, which verifies them.
        novelty_scale: Hellinger distance between consecutive frames that counts as a fully
            new observation; frames that change less are weighted down (to ``novelty_min``)
            because consecutive frames of a held note repeat the same evidence. 0 disables.
        onset_weight: scale of the onset term (0 disables it).
        onset_hit: chance that U shows an onset where X has a full-strength one.
        onset_false: chance that U shows an onset where X has none.
        onset_tolerance_s: timing slack (seconds of X) between X's onsets and U's.
        silence_penalty: how much less likely an active frame of U is at a state where X is
            silent (:func:`player.jump_prior.silent_states`: far under its loud level, or
            a noise floor) than that state's template (uniform, or nearly) says, in log units per unit of
            observation (``kappa`` times this per frame; the search's score per observation
            takes it too): nobody plays where the recording is silent. 0 disables.
    """

    kappa: float = 3.0
    novelty_scale: float = 0.2
    novelty_min: float = 0.2
    substeps: int = 5
    band_states: int = 96
    band_lead: float = 0.7
    step_std: float = 0.5
    silent_step_std: float = 0.5
    reentry_after_s: float = 0.5
    reentry_tempo_uncertainty: float = 0.1
    reentry_min_s: float = 0.05
    tutti_after_s: float = 3.0
    tutti_fade_s: float = 3.0
    detune_memory_s: float = 30.0
    detune_rate: float = 0.3
    detune_prune_nats: float = 60.0
    detune_refresh_frames: int = 25
    tempo_memory_s: float = 6.0
    tempo_prior_weight: float = 10.0
    lead_s: float = 0.0
    mean_halfwidth: int = 5
    floor: float = 1e-60
    floor_reach_s: float = 2.0
    min_tempo: float = 0.5
    max_tempo: float = 2.0
    onset_weight: float = 1.0
    onset_hit: float = 0.6
    onset_false: float = 0.1
    onset_tolerance_s: float = 0.02
    silence_penalty: float = 2.0
    section_entry_s: float = 6.0
    section_entry_weight: float = 0.5

    def __post_init__(self) -> None:
        check_fields(self, positive=("kappa", "substeps", "band_states", "step_std", "silent_step_std",
                                     "detune_memory_s", "detune_refresh_frames", "tempo_memory_s", "min_tempo", "floor_reach_s",
                                     "tutti_fade_s"),
                     non_negative=("novelty_scale", "detune_prune_nats",
                                   "reentry_after_s", "reentry_tempo_uncertainty", "reentry_min_s",
                                   "tutti_after_s", "detune_rate", "tempo_prior_weight", "lead_s", "mean_halfwidth", "floor",
                                   "onset_weight", "onset_tolerance_s", "silence_penalty", "section_entry_s"),
                     unit=("band_lead", "novelty_min", "section_entry_weight"),
                     integers=("substeps", "band_states", "mean_halfwidth", "detune_refresh_frames"))
        if self.max_tempo < self.min_tempo:
            raise field_error(self, "max_tempo", self.max_tempo, f">= min_tempo ({self.min_tempo:g})")
        if not 0.0 < self.onset_false < self.onset_hit < 1.0:
            raise field_error(self, "onset_hit", self.onset_hit, f"within (onset_false = {self.onset_false:g}, 1)")


@dataclass(frozen=True)
class Belief:
    """A track's belief, as one track hands it to another (:meth:`Follower.adopt`).

    Attributes:
        lo: first sub-state of the band.
        posterior: float64 ``(band,)`` the forward variable over the band's sub-states.
        log_w: float64 ``(n_detune,)`` log weights of the detune variants.
        position_states: the position (fractional state index).
        mode: sub-state index of the posterior's mode.
        confidence: posterior mass near the mode.
        tempo: X seconds per U second.
    """

    lo: int
    posterior: np.ndarray
    log_w: np.ndarray
    position_states: float
    mode: int
    confidence: float
    tempo: float


@dataclass
class FollowerState:
    """What the follower believes after a frame (one object per follower, updated in place
    by every frame: copy the fields you want to keep).

    Attributes:
        x_s: estimated current position in X (seconds), latency-compensated.
        x_frame_s: position in X (seconds) matched to the centre of the latest analysed frame
            of U (``x_s`` minus the frame's age at the tempo).
        tempo: X seconds per U second.
        confidence: posterior mass near the mode, in [0, 1].
        detune_cents: estimated detune of the player relative to X (cents).
        active: whether the soloist was heard in this frame.
        state: the mode's state index.
    """

    x_s: float = 0.0
    x_frame_s: float = 0.0
    tempo: float = 1.0
    confidence: float = 0.0
    detune_cents: float = 0.0
    active: bool = False
    state: int = 0


class TempoTracker:
    """Exponentially weighted regression of position on time: slope = tempo.

    Observations ``(u_s, x_s)`` come from confidently tracked, active frames. A prior of
    ``prior_weight`` seconds' worth of data pulls the slope towards ``centre`` (the tempo
    the player is expected to play at: 1, the recording's own, unless they said otherwise),
    so a short or flat history (one long note) cannot swing the tempo.
    """

    def __init__(self, memory_s: float, prior_weight: float, lo: float, hi: float, frame_s: float,
                 centre: float = 1.0) -> None:
        self.decay = float(np.exp(-frame_s / memory_s))
        self.prior = prior_weight / frame_s  # in frame-weighted s^2, comparable with S_uu
        self.lo, self.hi = lo, hi
        self.centre = float(centre)
        self.tempo = self.centre
        self.reset()

    def reset(self, tempo: float | None = None) -> None:
        self._w = self._u = self._x = self._uu = self._ux = 0.0
        self._origin: tuple[float, float] | None = None
        if tempo is not None:
            self.tempo = tempo

    def add(self, u_s: float, x_s: float) -> float:
        if self._origin is None:
            self._origin = (u_s, x_s)
        u, x = u_s - self._origin[0], x_s - self._origin[1]
        g = self.decay
        self._w = g * self._w + 1.0
        self._u = g * self._u + u
        self._x = g * self._x + x
        self._uu = g * self._uu + u * u
        self._ux = g * self._ux + u * x
        s_uu = self._uu - self._u * self._u / self._w
        s_ux = self._ux - self._u * self._x / self._w
        slope = (s_ux + self.prior * self.centre) / (s_uu + self.prior)
        self.tempo = float(min(max(slope, self.lo), self.hi))
        return self.tempo


@dataclass(frozen=True)
class OnsetTerms:
    """The onset term's log-likelihoods per sub-state (float64 ``(n_sub,)`` each, relative
    to the piece's mean): ``heard`` for a frame with an onset in U, ``unheard`` for one
    without; a frame of strength ``o`` adds ``o * heard + (1 - o) * unheard``."""

    heard: np.ndarray
    unheard: np.ndarray

    @classmethod
    def from_strength(cls, x_onsets: np.ndarray, params: AnalysisParams, config: FollowerConfig,
                      n_states: int) -> OnsetTerms:
        """From X's onset strength ``(n_frames,)`` (frame ``k`` centred on sample
        ``k * fine_hop``) onto the follower's sub-states (``config.substeps`` per state)."""
        m = int(config.substeps)
        sub_s = params.coarse_period_s / m
        times = np.arange((n_states - 1) * m + 1) * sub_s
        frames = np.arange(len(x_onsets)) * params.fine_period_s
        strength = np.interp(times, frames, np.asarray(x_onsets, dtype=np.float64), right=0.0)
        reach = int(round(config.onset_tolerance_s / sub_s))
        slack = strength.copy()
        for k in range(1, reach + 1):  # the strongest onset within the tolerance
            np.maximum(slack[k:], strength[:-k], out=slack[k:])
            np.maximum(slack[:-k], strength[k:], out=slack[:-k])
        q = config.onset_false + (config.onset_hit - config.onset_false) * slack
        mean = float(q.mean())
        return cls(heard=config.onset_weight * np.log(q / mean),
                   unheard=config.onset_weight * np.log((1.0 - q) / (1.0 - mean)))


class Follower:
    """Band-limited forward filter over the (sub-)states of one bundle.

    Args:
        templates: quantised log templates ``(n_detune, n_states, n_obs_bins)``.
        params: the bundle's analysis parameters.
        config: filter tuning.
        onsets: X's onset terms (shared by all the followers of one bundle); None: spectra only.
        tempo: the tempo the player is expected to play at (X seconds per U second; 0.7: at
            70 % of the recording's): where the tempo starts, what its estimate is pulled
            towards, and what a tutti fades to.
    """

    def __init__(self, templates: QuantizedTemplates, params: AnalysisParams, config: FollowerConfig | None = None,
                 onsets: OnsetTerms | None = None, tempo: float = 1.0):
        self.templates = templates
        self.params = params
        self.config = cfg = config or FollowerConfig()
        self.onsets = onsets if cfg.onset_weight > 0 else None
        self.n_states = templates.n_states
        self.n_detune = templates.q.shape[0]
        self.cents = np.asarray(params.detune_cents, dtype=np.float64)
        self.m = int(cfg.substeps)
        self.band_states = int(min(cfg.band_states, self.n_states - 1))
        self.band = self.band_states * self.m  # sub-states in the band
        self.n_sub = (self.n_states - 1) * self.m + 1
        self.sub_per_frame = self.m * params.fine_hop / params.coarse_hop  # at tempo 1
        # the fine frame's window ends now: its centre (matched to a state's centre) is half
        # a window ago, so the present position is ahead of the matched one by this much U time
        self.centre_delay_s = params.n_fft / 2 / params.sr
        self.expected_tempo = float(min(max(tempo, cfg.min_tempo), cfg.max_tempo))
        self.tempo_tracker = TempoTracker(cfg.tempo_memory_s, cfg.tempo_prior_weight,
                                  cfg.min_tempo, cfg.max_tempo, params.fine_period_s, centre=self.expected_tempo)
        self._evidence = np.zeros(self.n_detune)
        self._all_variants = np.ones(self.n_detune, dtype=bool)
        self._scored = np.ones(self.n_detune, dtype=bool)
        # the templates' codes, read by the filter's kernel as they are (a quarter of the
        # memory traffic of float32 templates, and nothing to convert when the band moves)
        self._codes = np.ascontiguousarray(templates.q, dtype=np.uint8)
        self._penalty = (np.zeros(self.n_states, dtype=np.float32) if templates.penalty is None
                         else np.ascontiguousarray(templates.penalty, dtype=np.float32))
        self._reach = max(1, int(round(cfg.floor_reach_s / params.coarse_period_s * self.m)))  # sub-states
        self._steps = np.arange(int(np.ceil(cfg.max_tempo * self.sub_per_frame + 3 * cfg.step_std)) + 1,
                                dtype=np.float64)
        self._step_weights = np.zeros(self._steps.size)
        self._local = np.zeros(2)  # the mass near the mode and its mean index (scratch)
        self._confidence = 0.0
        self._mode = 0
        # square roots of the last two observations (for the Hellinger distance), swapped each frame
        self._roots = np.zeros((2, params.n_obs_bins), dtype=np.float32)
        self._root_slot = 0
        self._has_prev_root = False
        self.last_change: float | None = None  # Hellinger distance of the last observation to the one before
        self._silent_frames = 0
        self._rest_from = 0  # the mode (sub-state) when the present rest began
        self._sections = np.zeros(0, dtype=np.int64)  # sections' first sub-states (see set_sections)
        self.reset(0.0)

    # ------------------------------------------------------------------ set-up
    def reset(self, start_s: float = 0.0, tempo: float | None = None, keep_detune: bool = False,
              wait: bool = True) -> None:
        """Start (again) at ``start_s`` seconds of X, waiting for the soloist; with
        ``keep_detune`` the tuning estimate survives (a restart by the same player). With
        ``wait=False`` the position goes on at once at ``tempo`` (X seconds per U second;
        default: the expected tempo), as through a rest: the recording plays its
        introduction and the soloist's first note is a re-entry (the belief widened by the
        introduction's length)."""
        tempo = self.expected_tempo if tempo is None else tempo
        j0 = int(np.clip(round(start_s / self.params.coarse_period_s * self.m), 0, self.n_sub - 1))
        self._centre_on(j0, spread=self.m / 2)
        if not keep_detune:
            self.log_w = np.full(self.n_detune, -np.log(self.n_detune))
            self._contenders = np.ones(self.n_detune, dtype=bool)
            self._since_full = 0
        self.tempo_tracker.reset(tempo)
        self.started = not wait
        self._silent_frames = 0
        self._confidence = 0.0
        self._has_prev_root = False  # the first frame after a reset is compared with nothing
        self.last_change = None
        self.frames = 0
        self.log_evidence = 0.0
        self._s_hat = j0 / self.m
        self.state = FollowerState(x_s=start_s, tempo=tempo, state=j0 // self.m)
        self._rest_from = j0

    def set_sections(self, starts: np.ndarray) -> None:
        """The states where X's sections begin (int ``(k,)``, ascending: its music after
        a silence of some seconds, :func:`player.jump_prior.section_starts`), for the
        re-entry of a soloist who was silent across one (``section_entry_s``)."""
        self._sections = np.asarray(starts, dtype=np.int64) * self.m

    def relocate(self, state: float, spread_states: float = 2.0, tempo: float | None = None) -> None:
        """Move the band to ``state`` (a jump found by the global search), optionally with a
        new ``tempo`` (X seconds per U second)."""
        j = int(round(state * self.m))
        self._centre_on(j, spread=spread_states * self.m)
        self.tempo_tracker.reset(self.tempo_tracker.tempo if tempo is None else tempo)
        self._has_prev_root = False
        self._silent_frames = 0
        self._rest_from = j
        self._s_hat = state
        self.started = True

    def belief(self) -> Belief:
        """A copy of what this track believes (to hand to another track, see :meth:`adopt`)."""
        return Belief(self.lo, self.posterior.copy(), self.log_w.copy(), self._s_hat, self._mode,
                      self._confidence, self.tempo_tracker.tempo)

    def adopt(self, other: Follower) -> None:
        """Take over another track's belief (band, posterior, tempo, detune); its
        observation history (the last frame, the current rest) stays this track's."""
        b = other.belief()
        self.lo, self.posterior, self.log_w = b.lo, b.posterior, b.log_w
        self._contenders = other._contenders.copy()
        self._s_hat, self._mode, self._confidence = b.position_states, b.mode, b.confidence
        self._rest_from = b.mode  # a rest in progress is crossed from here on
        self.tempo_tracker.reset(b.tempo)
        self.started = True

    def _band_start(self, mode: int) -> int:
        """First sub-state of the band that keeps ``mode`` inside it, most of the band ahead."""
        behind = self.band - int(self.band * self.config.band_lead)
        return int(min(max(mode - behind, 0), max(0, self.n_sub - self.band)))

    def _centre_on(self, j0: int, spread: float) -> None:
        self.lo = self._band_start(j0)
        self.posterior = self._floored(self._band_gaussian(j0, spread), j0 - self.lo)
        self._mode = j0

    def _band_gaussian(self, centre: int, spread: float) -> np.ndarray:
        """An unnormalised Gaussian ``(band,)`` over the band's sub-states around sub-state
        ``centre`` (``spread``: its sigma, sub-states), truncated at 3 sigma: a Gaussian's
        tail would seed far places far above the floor."""
        z = (np.arange(self.lo, self.lo + self.band) - centre) / max(spread, 1e-3)
        return np.where(np.abs(z) <= 3.0, np.exp(-0.5 * z * z), 0.0)

    def _shifted(self, posterior: np.ndarray, shift: int) -> np.ndarray:
        """``posterior`` ``(band,)`` as seen from a band starting ``shift`` sub-states later
        (earlier if negative): what falls outside the band is dropped, what enters is 0."""
        moved = np.zeros(self.band)
        if abs(shift) < self.band:
            if shift > 0:
                moved[: self.band - shift] = posterior[shift:]
            else:
                moved[-shift:] = posterior[: self.band + shift]
        return moved

    # ------------------------------------------------------------------ per frame
    def _predict(self, active: bool) -> None:
        cfg = self.config
        mean = (self.tempo_tracker.tempo if active else self._silent_tempo()) * self.sub_per_frame
        # through a rest the tempo is only a guess: widen the steps so the belief spreads
        # behind and ahead of the extrapolation, ready for wherever the soloist comes back in
        std = cfg.step_std if active else cfg.silent_step_std
        predicted = np.empty(self.band)
        _predicted(self.posterior, self._steps, mean, std, self._step_weights, predicted)
        self.posterior = predicted

    def _silent_tempo(self) -> float:
        """The tempo (X seconds per U second) the position moves at through a silence: the
        soloist's, fading to the expected one (the recording's own, 1, unless the player
        said otherwise) once the silence is a tutti."""
        cfg = self.config
        tempo = self.tempo_tracker.tempo
        over_s = self._silent_frames * self.params.fine_period_s - cfg.tutti_after_s
        if over_s <= 0.0:
            return tempo
        expected = self.expected_tempo
        return expected + (tempo - expected) * math.exp(-over_s / cfg.tutti_fade_s)

    def _change(self, u: np.ndarray) -> float | None:
        """Hellinger distance between this frame's observation and the previous one's (None
        for the first frame since a reset)."""
        self._root_slot ^= 1  # the last frame's root becomes the previous one
        overlap = _root_overlap(u, self._roots[self._root_slot], self._roots[self._root_slot ^ 1])
        had_prev, self._has_prev_root = self._has_prev_root, True
        if not had_prev:
            return None
        return math.sqrt(max(0.0, 1.0 - overlap))

    def _novelty_weight(self, change: float | None) -> float:
        """A frame's evidence weight from its ``change``: proportional to it up to 1 at
        ``novelty_scale``, at least ``novelty_min`` (1 for a first frame, or when the scale is
        0: no weighting)."""
        cfg = self.config
        if change is None or cfg.novelty_scale <= 0:
            return 1.0
        return float(min(max(change / cfg.novelty_scale, cfg.novelty_min), 1.0))

    def _reentry_spread(self) -> None:
        """The soloist plays again after a rest: the rest was crossed at a guessed tempo, so
        the belief is spread symmetrically (behind too: a left-to-right filter could never
        come back if it had run ahead) by the tempo uncertainty times the rest's length."""
        cfg = self.config
        # through a tutti the recording played at its own tempo and the soloist came in
        # with it: only the part crossed at the soloist's guessed tempo adds uncertainty
        rest_s = min(self._silent_frames * self.params.fine_period_s, cfg.tutti_after_s + cfg.tutti_fade_s)
        sigma_s = cfg.reentry_min_s + cfg.reentry_tempo_uncertainty * rest_s * self.tempo_tracker.tempo
        sigma = sigma_s / self.params.coarse_period_s * self.m  # sub-states
        # np.convolve(mode="same") returns the longer input's length: the kernel must not
        # outgrow the band (a rest of 16 s or more did, and the band grew by one sub-state)
        half = int(min(3 * sigma, (self.band - 1) // 2))
        if half < 1:
            return
        offsets = np.arange(-half, half + 1)
        kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
        self.posterior = np.convolve(self.posterior, kernel / kernel.sum(), mode="same")

    def _section_entry(self) -> None:
        """The soloist plays again after a rest across a section's start (a new movement),
        which the belief passed at the recording's pace: they may be beginning the section
        later than the recording did (musicians take their time between movements), so
        ``section_entry_weight`` of the belief moves to the section's start (the band
        stretched back to hold it); the next frames' evidence decides between the two."""
        cfg = self.config
        mode = self.lo + int(np.argmax(self.posterior))
        reach = cfg.section_entry_s / self.params.coarse_period_s * self.m
        crossed = self._sections[(self._sections > self._rest_from) & (self._sections <= mode)
                                 & (self._sections >= mode - reach)]
        if crossed.size == 0:
            return
        start = int(crossed[-1])
        if start < self.lo:  # the band keeps its length: what falls off its far end is dropped
            back = min(self.lo - start + self.m, self.lo)  # to a state behind the section's start
            moved = self._shifted(self.posterior, -back)
            self.posterior = moved / max(moved.sum(), 1e-300)
            self.lo -= back
        spread = max(cfg.reentry_min_s / self.params.coarse_period_s * self.m, 1.0)
        bump = self._band_gaussian(start, spread)
        self.posterior = ((1.0 - cfg.section_entry_weight) * self.posterior
                          + cfg.section_entry_weight * bump / bump.sum())

    def _apply_onset(self, onset: float) -> None:
        """Weigh the band by the onset term of a frame of onset strength ``onset`` (not
        counted in ``log_evidence``: see the module's docstring)."""
        _weigh_by_onset(self.onsets.heard, self.onsets.unheard, self.lo, float(onset), self.posterior)

    def _update(self, u: np.ndarray, evidence_scale: float, onset: float) -> None:
        cfg = self.config
        self.last_change = self._change(u)
        kappa = cfg.kappa * evidence_scale * self._novelty_weight(self.last_change)
        s0 = self.lo // self.m
        s1 = min(self.n_states, (self.lo + self.band - 1) // self.m + 2)
        evidence = self._evidence
        scored = self._variants_to_score()
        t = self.templates
        self.log_evidence += _band_update(self._codes, t.offset, t.step, self._penalty, s0, s1 - s0, u, kappa,
                                          self.log_w, self.posterior, self.lo - s0 * self.m, self.m, evidence, scored)
        if self.onsets is not None:
            self._apply_onset(onset)
        # detune: this frame's evidence for each variant scored, into the slowly forgetting
        # posterior (the others' weights wait, far below, for the next frame that scores all)
        forget = math.exp(-self.params.fine_period_s / cfg.detune_memory_s)
        if _forget_and_add(self.log_w, evidence, scored, forget, cfg.detune_rate) == self.n_detune:
            # a variant that explains this frame as well as the favourite is scored at every
            # frame until the next full frame: a player who retunes is followed at the usual pace
            favourite = int(self.log_w.argmax())
            self._contenders = evidence >= evidence[favourite]

    def _variants_to_score(self) -> np.ndarray:
        """Which detune variants the next frame computes, bool ``(n_detune,)``: all every
        ``detune_refresh_frames`` frames (and when ``detune_prune_nats`` is 0), else those
        within ``detune_prune_nats`` of the favourite's log weight and the contenders of the
        last frame that computed all. Once the tuning is known (after a second or two) that
        is two or three variants in five: the filter's costliest loop, and every trial's,
        shrinks by about half, and the mixture by less than ``exp(-detune_prune_nats)``."""
        cfg = self.config
        self._since_full += 1
        if cfg.detune_prune_nats <= 0 or self._since_full >= cfg.detune_refresh_frames:
            self._since_full = 0
            return self._all_variants
        _near_favourite(self.log_w, cfg.detune_prune_nats, self._contenders, self._scored)
        return self._scored

    def _floored(self, posterior: np.ndarray, mode: int) -> np.ndarray:
        """``posterior`` (in place) plus the floor within reach of band index ``mode``, normalised."""
        _floor_and_normalise(posterior, mode, self._reach, self.config.floor)
        return posterior

    def _normalise_and_follow(self) -> None:
        cfg = self.config
        a = self.posterior
        mode = int(a.argmax())
        new_lo = self._band_start(self.lo + mode)
        if new_lo != self.lo:
            shift = new_lo - self.lo
            a = self._shifted(a, shift)
            self.lo = new_lo
            mode -= shift
        a = self._floored(a, mode)
        self.posterior = a
        local = self._local
        _local_mean(a, mode, cfg.mean_halfwidth, local)
        self._s_hat = (self.lo + float(local[1])) / self.m
        self._confidence = float(local[0])
        self._mode = self.lo + mode

    def process_frame(self, frame: Frame) -> None:
        """Advance by one fine frame; the belief is then in :attr:`state`.

        Reads from ``frame``: ``obs`` (float32 ``(n_obs_bins,)``, sums to 1), ``active``,
        ``end_s`` (U time of the frame's last sample), ``now_s`` (U time at which the
        estimate is reported, >= ``end_s`` when the input path buffers: the position is
        extrapolated to it), ``evidence_scale`` (multiplies ``kappa``: below 1 when the
        input was denoised, sharper features) and ``onset`` (U's onset strength, [0, 1]).
        """
        u, active, frame_end_s = frame.obs, bool(frame.active), frame.end_s
        now_s, evidence_scale, onset = frame.now_s, frame.evidence_scale, frame.onset
        self.frames += 1
        if active:
            self.started = True
        if self.started:
            self._predict(active)
            if active:
                if self._silent_frames * self.params.fine_period_s >= self.config.reentry_after_s:
                    self._reentry_spread()
                    if self._sections.size and self.config.section_entry_s > 0:
                        self._section_entry()
                self._update(u, evidence_scale, onset)
            self._normalise_and_follow()
        if self.started:  # waiting for the first note crosses no music: nothing to widen for
            if not active and self._silent_frames == 0:
                self._rest_from = self._mode
            self._silent_frames = 0 if active else self._silent_frames + 1
        x_centre = self._s_hat * self.params.coarse_period_s
        tempo = self.tempo_tracker.tempo if active else self._silent_tempo()
        if active and self.started and self._confidence > 0.5:
            tempo = self.tempo_tracker.add(frame_end_s - self.centre_delay_s, x_centre)
        st = self.state
        ahead = now_s - frame_end_s + self.centre_delay_s + self.config.lead_s  # U seconds since the frame's centre
        st.x_s = x_centre + (tempo * ahead if self.started else 0.0)
        st.x_frame_s = x_centre
        st.tempo = tempo
        st.confidence = self._confidence if self.started else 0.0
        st.detune_cents = _mixture_mean(self.log_w, self.cents)
        st.active = bool(active)
        st.state = int(self._mode // self.m)

    def warm_up(self) -> None:
        """Load the compiled filter kernels now (about half a second the first time in a
        process), not at the soloist's first note, where a live stream would drop blocks."""
        n_obs = self.params.n_obs_bins
        _band_update(self._codes, 0.0, 1.0, self._penalty, 0, 2, np.zeros(n_obs, np.float32), 1.0,
                     np.zeros(self.n_detune), np.full(2 * self.m, 0.5 / self.m), 0, self.m, np.zeros(self.n_detune),
                     self._all_variants)
        belief = np.full(self.band, 1.0 / self.band)
        _predicted(belief, self._steps, 1.0, 1.0, self._step_weights.copy(), np.empty(self.band))
        _root_overlap(np.zeros(n_obs, np.float32), self._roots[0].copy(), self._roots[1].copy())
        _weigh_by_onset(np.zeros(self.band), np.zeros(self.band), 0, 0.5, belief)
        _floor_and_normalise(belief, 0, self._reach, self.config.floor)
        _local_mean(belief, 0, self.config.mean_halfwidth, self._local.copy())
        _forget_and_add(np.zeros(self.n_detune), np.zeros(self.n_detune), self._all_variants, 0.5, 0.5)
        _near_favourite(np.zeros(self.n_detune), 1.0, self._all_variants, self._scored.copy())
        _mixture_mean(np.zeros(self.n_detune), self.cents)

    @property
    def silent_frames(self) -> int:
        """Frames the soloist has been silent for since their last note (0 while they play,
        and before the first note or a relocation)."""
        return self._silent_frames

    @property
    def position_states(self) -> float:
        """The filter's position (fractional state index, window-centre matched)."""
        return self._s_hat


@kernel(
    "float64(uint8[:, :, ::1], float64, float64, float32[::1], int64, int64, float32[::1], float64, float64[::1], "
    "float64[::1], int64, int64, float64[::1], boolean[::1])",
    fastmath=True,
)
def _band_update(codes, log_offset, log_step, penalty, s0, n, u, kappa, log_w, posterior, first, m, evidence,
                 scored):  # pragma: no cover (numba)
    """The filter's observation update over the band, in place; returns the frame's log
    evidence ``log p(u_t | u_<t)`` (nats).

    States ``s0 .. s0 + n`` are the band's, their log templates ``T[d, s] = log_offset +
    log_step * codes[d, s] - penalty[s]`` (``codes`` uint8 ``(D, n_states, B)``); ``u``
    ``(B,)`` the observation; ``posterior`` ``(band,)`` the predicted posterior over
    sub-states, sub-state ``i`` lying at ``first + i`` sub-states (``m`` per state) from
    state ``s0``. Per state and detune ``d``: ``kappa * sum_b T[d, s, b] u[b]``; the
    states' likelihood mixes the variants with weights ``exp(log_w)``, and is interpolated
    linearly between states for the sub-states. Only the variants flagged in ``scored``
    (bool ``(D,)``) are computed: the others' weight is too small to count (their share of
    the mixture is left out, the weights' sum is not). ``evidence`` ``(D,)`` receives each
    scored variant's log evidence under ``posterior`` (for the detune posterior), -1e300 for
    the others.
    """
    n_detune = codes.shape[0]
    band = posterior.size
    scaled = np.empty((n_detune, n))
    u_sum = 0.0
    for b in range(u.size):
        u_sum += u[b]
    peak = -np.inf
    for d in range(n_detune):
        if not scored[d]:
            continue
        for s in range(n):
            row = codes[d, s0 + s]
            acc = np.float32(0.0)
            for b in range(u.size):
                acc += np.float32(row[b]) * u[b]
            v = kappa * ((log_offset - penalty[s0 + s]) * u_sum + log_step * acc)
            scaled[d, s] = v
            peak = max(peak, v)
    mass = np.zeros(n)  # the predicted posterior's mass per state
    for i in range(band):
        mass[(first + i) // m] += posterior[i]
    w_top = log_w.max()
    w = np.exp(log_w - w_top)
    w_sum = w.sum()
    evidence[:] = 0.0
    loglik = np.empty(n)
    for s in range(n):
        mix = 0.0
        for d in range(n_detune):
            if scored[d]:
                lik = math.exp(scaled[d, s] - peak)
                evidence[d] += lik * mass[s]
                mix += w[d] * lik
        loglik[s] = math.log(mix / w_sum + 1e-300)
    for d in range(n_detune):
        evidence[d] = math.log(evidence[d] + 1e-300) if scored[d] else -1e300
    ll = np.empty(band)
    top = -np.inf
    for i in range(band):
        j = first + i
        s = j // m
        if s + 1 < n:
            f = (j - s * m) / m
            v = loglik[s] * (1.0 - f) + loglik[s + 1] * f
        else:
            v = loglik[s]
        ll[i] = v
        top = max(top, v)
    total = 0.0
    for i in range(band):
        posterior[i] *= math.exp(ll[i] - top)
        total += posterior[i]
    return math.log(total + 1e-300) + top + peak


@kernel("void(float64[::1], float64[::1], float64, float64, float64[::1], float64[::1])")
def _predicted(posterior, steps, mean, std, weights, out):  # pragma: no cover (numba)
    """The prediction step: ``out[i] = sum_j w[j] posterior[i - j]`` (the first ``out.size``
    sub-states of the full convolution), ``w`` (into ``weights``) a Gaussian over the
    advances ``steps`` (sub-states) of ``mean`` and ``std``, normalised."""
    total = 0.0
    for j in range(steps.size):
        z = (steps[j] - mean) / std
        weights[j] = math.exp(-0.5 * z * z)
        total += weights[j]
    for j in range(steps.size):
        weights[j] /= total
    for i in range(out.size):
        acc = 0.0
        for j in range(min(i + 1, weights.size)):
            acc += weights[j] * posterior[i - j]
        out[i] = acc


@kernel("float64(float32[::1], float32[::1], float32[::1])")
def _root_overlap(u, root, prev):  # pragma: no cover (numba)
    """``root = sqrt(u)`` and its overlap with the previous frame's ``prev``,
    ``sum(root * prev)`` (1 minus the squared Hellinger distance of two distributions)."""
    acc = 0.0
    for b in range(u.size):
        r = math.sqrt(u[b])
        root[b] = r
        acc += r * prev[b]
    return acc


@kernel("void(float64[::1], float64[::1], int64, float64, float64[::1])")
def _weigh_by_onset(heard, unheard, lo, onset, posterior):  # pragma: no cover (numba)
    """``posterior`` ``(band,)`` (sub-states ``lo ..``) times the onset term of a frame of
    onset strength ``onset``: ``exp(heard * onset + unheard * (1 - onset))``, scaled so that
    its largest value is 1."""
    top = -math.inf
    for i in range(posterior.size):
        top = max(top, heard[lo + i] * onset + unheard[lo + i] * (1.0 - onset))
    for i in range(posterior.size):
        posterior[i] *= math.exp(heard[lo + i] * onset + unheard[lo + i] * (1.0 - onset) - top)


@kernel("void(float64[::1], int64, int64, float64)")
def _floor_and_normalise(posterior, mode, reach, floor):  # pragma: no cover (numba)
    """Add ``floor`` to the sub-states within ``reach`` of index ``mode``, then normalise."""
    for i in range(max(0, mode - reach), min(posterior.size, mode + reach + 1)):
        posterior[i] += floor
    total = 0.0
    for i in range(posterior.size):
        total += posterior[i]
    for i in range(posterior.size):
        posterior[i] /= total


@kernel("void(float64[::1], int64, int64, float64[::1])")
def _local_mean(posterior, mode, halfwidth, out):  # pragma: no cover (numba)
    """The mass of ``posterior`` within ``halfwidth`` of index ``mode`` into ``out[0]``, and
    its mean index there into ``out[1]``."""
    mass = 0.0
    moment = 0.0
    for i in range(max(0, mode - halfwidth), min(posterior.size, mode + halfwidth + 1)):
        mass += posterior[i]
        moment += posterior[i] * i
    out[0] = mass
    out[1] = moment / mass


@kernel("int64(float64[::1], float64[::1], boolean[::1], float64, float64)")
def _forget_and_add(log_w, evidence, scored, forget, rate):  # pragma: no cover (numba)
    """The detune posterior's update, for the ``scored`` variants only: ``log_w = forget *
    log_w + rate * (evidence - max(evidence))``. Returns how many were scored."""
    top = -math.inf
    for d in range(evidence.size):
        top = max(top, evidence[d])
    count = 0
    for d in range(log_w.size):
        if scored[d]:
            log_w[d] = forget * log_w[d] + rate * (evidence[d] - top)
            count += 1
    return count


@kernel("void(float64[::1], float64, boolean[::1], boolean[::1])")
def _near_favourite(log_w, nats, contenders, out):  # pragma: no cover (numba)
    """``out``: the variants within ``nats`` of the largest log weight, or contenders."""
    top = -math.inf
    for d in range(log_w.size):
        top = max(top, log_w[d])
    for d in range(log_w.size):
        out[d] = log_w[d] >= top - nats or contenders[d]


@kernel("float64(float64[::1], float64[::1])")
def _mixture_mean(log_w, values):  # pragma: no cover (numba)
    """The mean of ``values`` under the weights ``exp(log_w)`` (normalised)."""
    top = -math.inf
    for d in range(log_w.size):
        top = max(top, log_w[d])
    total = 0.0
    acc = 0.0
    for d in range(log_w.size):
        w = math.exp(log_w[d] - top)
        total += w
        acc += w * values[d]
    return acc / total
