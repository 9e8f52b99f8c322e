"""The prior on jumps: where sections start, what a jump costs, and the relocator weighing
a far place's evidence against it. A restart a bar or two back is free and a movement's
start cheap; a far look-alike that explains a few seconds a little better does not take an established
track, but does take one that has no record yet (a start in the middle of the piece)."""

import numpy as np
import pytest

from player.jump_prior import JumpPrior, JumpPriorConfig, section_starts, silent_states
from player.relocator import RelocatorConfig
from player.search import Candidate
from shared.spectral import frame_power

from .test_relocator import FRAME_S, STATES_PER_FRAME, ScriptedTrack, make_relocator, play, trial_frames

PERIOD_S = 0.1


def sound_and_silence(pattern):
    """Magnitude spectra ``(n_states, 16)`` float16 from ``[(seconds, loud), ...]``: loud
    states are noise at 1, quiet ones 60 dB lower."""
    rng = np.random.default_rng(0)
    rows = []
    for seconds, loud in pattern:
        n = int(round(seconds / PERIOD_S))
        rows.append(rng.uniform(0.5, 1.0, size=(n, 16)) * (1.0 if loud else 1e-3))
    return np.concatenate(rows).astype(np.float16)


def test_sections_start_after_long_silences_only():
    mag = sound_and_silence([(10, True), (3, False), (10, True), (1, False), (5, True), (2.5, False), (4, True)])
    power = frame_power(mag, chunk=7)  # chunked like a long piece
    starts = section_starts(silent_states(power, below_db=45.0), PERIOD_S, gap_s=2.0)
    assert starts.tolist() == [0, 130, 315]


def test_a_noise_floor_between_movements_is_silence_a_quiet_passage_is_not():
    """A recording with a noise floor 40 dB under its music: the gaps are not 45 dB under
    the loud level, but their spectrum has no shape (white noise: nearly uniform
    templates); a passage as quiet as the noise but with partials is music."""
    from shared.spectral import AnalysisParams, QuantizedTemplates, log_templates

    params = AnalysisParams()
    rng = np.random.default_rng(4)
    freqs = np.arange(params.n_bins) * params.sr / params.n_fft

    def tones(f0, gain, n):  # a harmonic tone's magnitudes, with a little noise
        mag = np.zeros(params.n_bins)
        for h in range(1, 9):
            mag += np.exp(-0.5 * ((freqs - h * f0) / 6.0) ** 2) / h
        return gain * (mag + 1e-3 * rng.uniform(0.5, 1.0, size=(n, params.n_bins)))

    music = [tones(220.0 * 2 ** (k / 12), 1.0, 30) for k in range(6)]
    gap = 4e-4 * rng.uniform(0.5, 1.0, size=(30, params.n_bins))  # 42 dB under the music's power
    quiet = tones(330.0, 1e-2, 30)  # as quiet (40 dB under), with partials
    mag = np.concatenate([*music[:3], gap, *music[3:], quiet, music[0]]).astype(np.float16)
    templates = QuantizedTemplates.from_log(log_templates(mag.astype(np.float32), params))
    by_level = silent_states(frame_power(mag), below_db=45.0)
    assert not by_level.any()
    silent = silent_states(frame_power(mag), 45.0, templates, noise_db=30.0, noise_flat_nats=0.14)
    assert silent[90:120].all()  # the gap
    assert not silent[:90].any() and not silent[120:].any()  # music, the quiet passage too
    assert section_starts(silent, PERIOD_S, gap_s=2.0).tolist() == [0, 120]


def test_a_piece_without_silences_has_one_section():
    assert section_starts(silent_states(frame_power(sound_and_silence([(30, True)])), 45.0), PERIOD_S, 2.0).tolist() == [0]


def prior(**kw):
    sections = np.array([0, 3000, 9000])  # states: 0 s, 300 s, 900 s
    return JumpPrior(sections, PERIOD_S, JumpPriorConfig(**kw))


def s(seconds):
    return seconds / PERIOD_S


def test_a_bar_or_two_back_is_free_a_passage_cheap_a_section_start_cheap_however_far():
    cfg = JumpPriorConfig()
    p = prior()
    here = s(600)
    for there in (600 - cfg.free_s, 600 - 2, 600 + 3):
        assert p.cost(here, s(there), tenure_s=60.0) == 0.0, there
    assert 0 < p.cost(here, s(600 - 20), tenure_s=60.0) < cfg.far_nats  # within near_back_s
    for start in (0, 300, 302, 900):
        assert p.cost(here, s(start), tenure_s=60.0) <= cfg.section_nats, start
    assert p.free(here, np.array([s(600 - 25), s(450), s(0)])).tolist() == [True, False, True]


def test_a_run_begun_at_a_section_start_is_as_cheap_as_the_start():
    """A player who began a movement eight seconds ago is proved there only now: the place
    eight seconds into the movement costs what its start costs, not its distance."""
    cfg = JumpPriorConfig()
    p = prior()
    here = s(600)
    assert p.cost(here, s(908), tenure_s=60.0) > 3 * cfg.section_nats
    assert p.cost(here, s(908), tenure_s=60.0, began=s(900.5)) <= cfg.section_nats
    assert p.cost(here, s(908), tenure_s=60.0, began=s(880)) > 3 * cfg.section_nats


def test_far_jumps_cost_more_the_farther():
    """A power law in the distance: each doubling of ``1 + (d - free_s) / near_s`` costs
    ``far_nats``."""
    cfg = JumpPriorConfig()
    p = prior()
    here = s(600)
    back = [cfg.free_s + cfg.near_back_s * (2 ** k - 1) for k in (1, 2, 3, 4)]
    costs = [p.cost(here, s(600 - d), tenure_s=60.0) for d in back]
    np.testing.assert_allclose(costs, [cfg.far_nats * k for k in (1, 2, 3, 4)])
    ahead = cfg.free_s + 3 * cfg.near_ahead_s
    assert p.cost(here, s(600 + ahead), tenure_s=60.0) == pytest.approx(2 * cfg.far_nats)
    assert prior(max_nats=40.0).cost(here, s(20), tenure_s=60.0) == 40.0


def test_a_track_without_a_record_pays_in_proportion_to_its_tenure():
    cfg = JumpPriorConfig()
    p = prior()
    full = p.cost(s(600), s(120), tenure_s=cfg.tenure_s)
    assert full > 0
    assert p.cost(s(600), s(120), tenure_s=0.0) == 0.0
    assert p.cost(s(600), s(120), tenure_s=cfg.tenure_s / 2) == pytest.approx(full / 2)


def test_a_failing_track_pays_less_the_longer_a_far_place_leads():
    """The cost falls from ``lost_from`` to ``lost_at`` of sustained lead, linearly."""
    cfg = JumpPriorConfig()
    p = prior()
    full = p.cost(s(600), s(120), tenure_s=60.0)
    assert p.cost(s(600), s(120), tenure_s=60.0, lead=-0.2) == full
    assert p.cost(s(600), s(120), tenure_s=60.0, lead=cfg.lost_from) == pytest.approx(full)
    mid = (cfg.lost_from + cfg.lost_at) / 2
    assert p.cost(s(600), s(120), tenure_s=60.0, lead=mid) == pytest.approx(full / 2)
    assert p.cost(s(600), s(120), tenure_s=60.0, lead=cfg.lost_at) == 0.0


# ---------------------------------------------------------------------------- the relocator
def look_alike_trial(played_s: float, far_s: float, lead_nats: float, then=None, failing: float = 0.0,
                     speed: float = STATES_PER_FRAME):
    """The player has followed for ``played_s`` seconds at 600 s of X; a place ``far_s``
    away (seconds of X; negative: back) explains the replay well and then the next
    ``lead_nats`` nats' worth of frames (one nat per frame) better, then ties. Returns
    whether the relocator moved the player there; ``failing``: the search's sustained lead of
    a far place over the player's place (nats per observation). ``then(relocator, main, shadow, lead)``,
    if given, runs after a move (``lead``: a one-item list the shadow's rate reads) and its
    result is returned instead. ``speed``: the far place's motion (states a frame; by
    default at the player's tempo)."""
    config = RelocatorConfig()
    here = s(600)
    main = ScriptedTrack(lambda n: 0.0, position_states=here, speed=0.0)  # distances from a fixed place
    home = ScriptedTrack(lambda n: 0.0)
    probe = make_relocator(ScriptedTrack(lambda n: 0.0), ScriptedTrack(lambda n: 0.0), [], config)
    replay = probe.n_replay
    lead = [lead_nats]
    shadow = ScriptedTrack(lambda n: 1.0 if n <= replay + lead[0] else 0.0, speed=speed)
    relocator = make_relocator(main, home, [shadow], config)
    relocator.prior = JumpPrior(np.array([0]), PERIOD_S)
    relocator.search.sustained_lead = failing if callable(failing) else (lambda window_s: failing)
    for _ in range(max(replay, int(round(played_s / FRAME_S)))):
        play(relocator, main, np.zeros(8))
    moved = verify(relocator, main, here + s(far_s)) and main.adopted is shadow
    return then(relocator, main, shadow, lead) if moved and then else moved


def verify(relocator, main, state: float) -> bool:
    """Screen and try a candidate at ``state``; True if the main track moved."""
    relocator.screen([Candidate(state=state, tempo=1.0)])
    assert relocator.on_trial
    for _, moved in trial_frames(relocator, main, note_s=0.25):
        if moved:
            return True
        if not relocator.on_trial:
            return False
    raise AssertionError("the trial never ended")


def test_a_far_look_alike_does_not_take_an_established_track():
    """Forty nats of lead win a near place, not one eight minutes away once the player has
    been followed for a minute: a repeat or a sequence elsewhere that fits a few seconds
    a little better is not where the player went."""
    assert look_alike_trial(played_s=60.0, far_s=-10.0, lead_nats=40.0)
    assert not look_alike_trial(played_s=60.0, far_s=-480.0, lead_nats=40.0)


def test_a_far_place_takes_a_track_without_a_record():
    """Just started (no record to defend), the same evidence moves the player far."""
    assert look_alike_trial(played_s=0.0, far_s=-480.0, lead_nats=40.0)


def test_a_far_place_takes_a_failing_track():
    """An established track that some far place has been explaining worse for seconds
    (the search's sustained lead) defends no record: the far place wins as if the player
    had just started; a lead a right track meets among look-alikes changes nothing."""
    cfg = JumpPriorConfig()
    assert look_alike_trial(played_s=60.0, far_s=-480.0, lead_nats=40.0, failing=cfg.lost_at)
    assert not look_alike_trial(played_s=60.0, far_s=-480.0, lead_nats=40.0, failing=cfg.lost_from)


def test_a_track_found_failing_during_a_trial_pays_less_from_then_on():
    """The search's evidence that the track is failing may come while a far place is on
    trial: the place then needs only what the jump costs from that moment on."""
    calls = []

    def failing_after_the_screening(window_s):
        calls.append(window_s)
        return 0.0 if len(calls) == 1 else JumpPriorConfig().lost_at

    assert not look_alike_trial(played_s=60.0, far_s=-480.0, lead_nats=40.0)
    assert look_alike_trial(played_s=60.0, far_s=-480.0, lead_nats=40.0, failing=failing_after_the_screening)


def test_only_a_track_with_a_record_holds_a_far_place_to_the_players_tempo():
    """A near place that moves at a third of the player's tempo does not take a track that
    has followed the player for a minute (its tempo is the player's); just started, the
    track's tempo is only a guess (a player practising slower than the recording), and the
    same place, with the same evidence, takes it."""
    slow = STATES_PER_FRAME / 3
    assert not look_alike_trial(played_s=60.0, far_s=-10.0, lead_nats=60.0, speed=slow)
    assert look_alike_trial(played_s=60.0, far_s=-10.0, lead_nats=60.0)
    assert look_alike_trial(played_s=0.0, far_s=-10.0, lead_nats=60.0, speed=slow)


def test_a_far_place_that_keeps_explaining_the_playing_wins_in_the_end():
    """A player who really went far keeps gaining there: the cost delays the jump, it does
    not forbid it."""
    assert look_alike_trial(played_s=60.0, far_s=-480.0, lead_nats=200.0)


def test_a_far_jump_is_undone_at_once_but_not_followed_by_another():
    """Right after a far jump, the place the player was believed to be costs nothing to go
    back to (within a restart's reach of where that track would be now); a place near it
    but not it, or another far place, still costs its distance."""
    def back_to(offset_s):
        def then(relocator, main, shadow, lead):
            lead[0] = 40.0
            return verify(relocator, main, s(600) + s(offset_s))
        return then

    assert look_alike_trial(played_s=60.0, far_s=-480.0, lead_nats=200.0, then=back_to(3.0))
    assert not look_alike_trial(played_s=60.0, far_s=-480.0, lead_nats=200.0, then=back_to(12.0))
    assert not look_alike_trial(played_s=60.0, far_s=-480.0, lead_nats=200.0, then=back_to(300.0))


def two_place_trial(near_rate: float, far_rate: float, played_s: float = 60.0, failing_after_s: float = 30.0,
                    resets: bool = True) -> str:
    """A track at 600 s of X, followed for ``played_s`` seconds and failing (no record to
    defend) after ``failing_after_s`` of them; a place 10 s back and one 480 s back both
    explain the replay, then gain ``near_rate`` and ``far_rate`` nats a frame on trial.
    Which one the player is moved to ("near" or "far"). ``resets``: the prior's
    ``unearned_failing_resets``."""
    here = s(600)
    main = ScriptedTrack(lambda n: 0.0, position_states=here, speed=0.0)
    config = RelocatorConfig()
    replay = make_relocator(ScriptedTrack(lambda n: 0.0), ScriptedTrack(lambda n: 0.0), [], config).n_replay
    near = ScriptedTrack(lambda n: 1.0 if n <= replay else near_rate)
    far = ScriptedTrack(lambda n: 1.0 if n <= replay else far_rate)
    relocator = make_relocator(main, ScriptedTrack(lambda n: 0.0), [near, far], config)
    relocator.prior = JumpPrior(np.array([0]), PERIOD_S, JumpPriorConfig(unearned_failing_resets=resets))
    frames = [0]

    def sustained_lead(window_s):
        return JumpPriorConfig().lost_at if frames[0] * FRAME_S >= failing_after_s else 0.0

    relocator.search.sustained_lead = sustained_lead
    for _ in range(max(replay, int(round(played_s / FRAME_S)))):
        frames[0] += 1
        play(relocator, main, np.zeros(8))
    relocator.screen([Candidate(state=here - s(10), tempo=1.0), Candidate(state=here - s(480), tempo=1.0)])
    assert relocator.on_trial and len(relocator.trial.shadows) == 2
    for _, moved in trial_frames(relocator, main, note_s=0.25):
        if moved:
            return "near" if main.adopted is near else "far"
        assert relocator.on_trial, "the trial ended without a move"
    raise AssertionError("the trial never ended")


def test_places_on_trial_for_a_failing_track_compete_under_the_prior_in_full():
    """A failing track (one that followed the player for half a minute first) defends no
    record, so either place may take it at the margin; but a place 10 s back is where a
    player who went back more likely is than one 8 minutes
    back, so the far place must out-gain it by what the prior says the distance costs, not
    merely reach the margin first."""
    assert two_place_trial(near_rate=1.0, far_rate=1.3) == "near"
    assert two_place_trial(near_rate=1.0, far_rate=1.0) == "near"
    assert two_place_trial(near_rate=0.0, far_rate=1.3) == "far"  # the near place explains nothing new


def test_a_track_failing_before_it_earned_a_record_makes_no_place_near():
    """The player began elsewhere than where the track waited (a mid-piece start without
    ``--start``): failing within its first ``tenure_s`` of playing, the track never explained
    the playing, so a place near it is no likelier than a far one and the one that gains
    more wins. Once the track has a record (a minute), or without the rule, the near place
    still wins unless the far one out-gains it by the distance's cost."""
    assert two_place_trial(near_rate=1.0, far_rate=1.3, played_s=10.0, failing_after_s=0.0) == "far"
    assert two_place_trial(near_rate=1.3, far_rate=1.0, played_s=10.0, failing_after_s=0.0) == "near"
    assert two_place_trial(near_rate=1.0, far_rate=1.3, played_s=10.0, failing_after_s=0.0, resets=False) == "near"
    assert two_place_trial(near_rate=1.0, far_rate=1.3, played_s=60.0, failing_after_s=30.0) == "near"
