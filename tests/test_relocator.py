"""The relocator with scripted evidence. Its screening (a replay of the last frames): a far
place that leads over the replay passes even if it ties the player's place in one window,
not if it clearly loses one. Its trial, a sequential test on new frames: a far place that
keeps gaining on the player's current place wins, even when it gains slower than the
nominal pace; one that stops gaining does not; the main track's own gains count against
every candidate; one held note, however well a far place explains it, never wins; and a
place that stands still while the player moves on never wins."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from player.relocator import Relocator, RelocatorConfig
from player.search import Candidate
from player.stages import Frame, Track
from shared.errors import ConfigError
from shared.spectral import QuantizedTemplates

FRAME_S = 0.02


#: States of X a frame at the player's tempo (1: coarse period 0.1 s, frames of 0.02 s).
STATES_PER_FRAME = 0.2


class ScriptedTrack:
    """Stands in for a follower: gains ``rate(n)`` nats of log evidence on its n-th frame
    and moves ``speed`` states a frame (by default at the player's tempo)."""

    def __init__(self, rate, position_states: float = 0.0, started: bool = True,
                 speed: float = STATES_PER_FRAME) -> None:
        self.rate = rate
        self.speed = speed
        self.n = 0
        self.log_evidence = 0.0
        self.position_states = position_states
        self.adopted = None
        self.started = started
        self.last_change = None
        self.state = SimpleNamespace(detune_cents=0.0, tempo=1.0)
        self.seen: list[tuple[float, float, float]] = []  # (obs[0], evidence_scale, onset) per frame

    def process_frame(self, frame: Frame) -> None:
        self.seen.append((float(frame.obs[0]), frame.evidence_scale, frame.onset))
        self.n += 1
        self.log_evidence += self.rate(self.n)
        self.position_states += self.speed

    def adopt(self, other) -> None:
        self.adopted = other
        self.position_states = other.position_states

    def relocate(self, state: float, spread_states: float = 2.0, tempo: float | None = None) -> None:
        self.position_states = state
        self.n = 0


def distinct_templates(n_states: int = 20000, n_bins: int = 8, seed: int = 0) -> QuantizedTemplates:
    """Templates of a piece in which no two places look alike: each state's spectrum has
    most of its mass in one bin drawn at random (one detune variant)."""
    rng = np.random.default_rng(seed)
    p = np.full((n_states, n_bins), 0.1 / (n_bins - 1))
    p[np.arange(n_states), rng.integers(0, n_bins, n_states)] = 0.9
    return QuantizedTemplates.from_log(np.log(p)[None].astype(np.float32))


DISTINCT = distinct_templates()


def make_relocator(main: ScriptedTrack, home: ScriptedTrack, shadows: list[ScriptedTrack],
                   config: RelocatorConfig, templates: QuantizedTemplates = DISTINCT, prior=None) -> Relocator:
    """A relocator over scripted tracks, with a search that never proposes anything, over
    X's ``templates`` (by default a piece in which no two places look alike), with the
    jump ``prior`` (None: none)."""
    search = SimpleNamespace(params=SimpleNamespace(coarse_period_s=0.1, n_obs_bins=8), per_state=5,
                             reset=lambda: None, step=lambda *args: None, candidates=lambda position: [],
                             sustained_lead=lambda window_s: 0.0, templates=templates)
    return Relocator(search, main, [home] + shadows, config, FRAME_S, prior)


def play(relocator: Relocator, main: ScriptedTrack, obs, *, note_began: bool = False, evidence_scale: float = 1.0,
         onset: float = 0.0, now_s: float = 0.0) -> bool:
    """One frame of the player, as the engine runs it: the main track, then the relocator;
    ``note_began``: the main track heard a note change. True if the main track was moved."""
    frame = Frame(obs=np.asarray(obs, dtype=np.float32), active=True, evidence_scale=evidence_scale, onset=onset,
                  evidence_before=main.log_evidence, position_before=main.position_states, end_s=now_s, now_s=now_s)
    if main.started:
        main.process_frame(frame)
    main.last_change = 1.0 if note_began else 0.0
    relocator.process_frame(frame)
    return relocator.moved


def run_trial(shadow_rates, main_rate=lambda n: 0.0, config=RelocatorConfig(), home_rate=None,
              note_s: float | None = 0.25, speeds=None):
    """Put shadows with the given evidence rates on trial against a main track (and a home
    track, by default as good as the main one), the player starting a note every
    ``note_s`` seconds (None: one held note); return the number of frames until the main
    track adopted one (and which: -1 for the home track), or (None, None) when the trial
    ended without a winner. ``speeds``: each shadow's motion (states a frame; by default
    the player's tempo)."""
    home = ScriptedTrack(home_rate or main_rate)
    speeds = speeds or [STATES_PER_FRAME] * len(shadow_rates)
    shadows = [ScriptedTrack(r, position_states=100.0 * (i + 1), speed=v)
               for i, (r, v) in enumerate(zip(shadow_rates, speeds, strict=True))]
    main = ScriptedTrack(main_rate)
    relocator = make_relocator(main, home, shadows, config)
    relocator.begin_trial(shadows)
    for frame, moved in trial_frames(relocator, main, note_s):
        if moved and main.adopted is home:
            return frame, -1
        if moved:
            return frame, shadows.index(main.adopted)
        if not relocator.on_trial:
            return None, None
    raise AssertionError("the trial never ended")


def trial_frames(relocator: Relocator, main: ScriptedTrack, note_s: float | None):
    """Feed the main track and the relocator's trial new frames, the player starting a
    note every ``note_s`` seconds (None: one held note); yield ``(frame, moved)`` per frame
    (``moved``: the main track adopted another track's belief)."""
    note_frames = None if note_s is None else int(round(note_s / FRAME_S))
    u = np.zeros(8, dtype=np.float32)
    for frame in range(1, 1000):
        note_began = note_frames is not None and frame % note_frames == 0
        yield frame, play(relocator, main, u, note_began=note_began, now_s=frame * FRAME_S)


def test_scripted_tracks_are_tracks():
    assert isinstance(ScriptedTrack(lambda n: 0.0), Track)


def pace(fraction, config=RelocatorConfig()):
    """A constant gain per frame at ``fraction`` of the winning pace (margin per trial_s)."""
    per_frame = config.margin_nats / (config.trial_s / FRAME_S)
    return lambda n: fraction * per_frame


def test_a_clear_place_wins_within_the_nominal_trial():
    frames, which = run_trial([pace(0.2), pace(1.5)])
    assert which == 1
    assert frames * FRAME_S < RelocatorConfig().trial_s


def test_a_place_that_keeps_gaining_slowly_wins_after_the_nominal_trial():
    """A varied repeat explains the player only a little better per frame: the trial goes
    on past trial_s while the candidate keeps the pace, and it wins before trial_max_s."""
    cfg = RelocatorConfig()
    frames, which = run_trial([pace(0.7)])
    assert which == 0
    assert cfg.trial_s < frames * FRAME_S <= cfg.trial_max_s


def test_a_place_that_stops_gaining_loses():
    """Ahead early (it matched the frames the search chose it on), then no better than
    the player's place: dropped at the end of the nominal trial."""
    head = int(0.5 / FRAME_S)
    frames, which = run_trial([lambda n: pace(1.2)(n) if n <= head else 0.0])
    assert which is None


def test_a_slow_place_loses_at_the_nominal_trial():
    frames, which = run_trial([pace(0.3)])
    assert which is None


def test_the_main_tracks_gains_count_against_the_candidates():
    frames, which = run_trial([pace(1.5)], main_rate=pace(1.4))
    assert which is None


def test_one_held_note_never_wins_however_well_a_far_place_explains_it():
    """The same far place, gaining fast, on a held note and on a run of notes."""
    frames, which = run_trial([pace(3.0)], note_s=0.25)
    assert which == 0
    frames, which = run_trial([pace(3.0)], note_s=None)
    assert which is None


def test_a_place_that_stands_still_while_the_player_moves_on_never_wins():
    """A held note in X under the pitch the player repeats (an ostinato against a pedal):
    the far place explains every repeated note better than the player's place, but only
    by standing still, at a third of the player's tempo or less. A place that keeps pace,
    even at 0.7 of the player's tempo (slower after a restart), wins as before."""
    for speed in (0.0, STATES_PER_FRAME / 3):
        frames, which = run_trial([pace(3.0)], speeds=[speed])
        assert which is None
    for speed in (STATES_PER_FRAME, 0.7 * STATES_PER_FRAME):
        frames, which = run_trial([pace(3.0)], speeds=[speed])
        assert which == 0
    frames, which = run_trial([pace(3.0)], speeds=[0.0], config=RelocatorConfig(trial_min_progress=0.0))
    assert which == 0  # the rule is what stops it


def test_a_place_may_settle_back_before_the_first_note_of_its_trial():
    """The search places a far place only to within a second: before the player's first
    note of the trial its shadow may settle back (here 1 s, 10 states, at once) before it
    follows; its pace is counted from there."""
    frames, which = run_trial([pace(3.0)], note_s=0.25)
    home = ScriptedTrack(lambda n: 0.0)
    main = ScriptedTrack(lambda n: 0.0)

    class Settling(ScriptedTrack):
        def process_frame(self, frame: Frame) -> None:
            super().process_frame(frame)
            if self.n == 3:
                self.position_states -= 10.0

    shadow = Settling(pace(3.0), position_states=100.0)
    relocator = make_relocator(main, home, [shadow], RelocatorConfig())
    relocator.begin_trial([shadow])
    ended = next(frame for frame, moved in trial_frames(relocator, main, note_s=0.25)
                 if moved or not relocator.on_trial)
    assert main.adopted is shadow and ended == frames


def test_the_home_track_takes_over_only_on_a_lead_over_several_notes():
    """The main track ran off (it gains nothing) while the home track, and a candidate no
    better, explain the player well: the home track takes over when the trial ends, but
    not on one held note."""
    frames, which = run_trial([pace(1.5)], home_rate=pace(1.5), note_s=0.25)
    assert which == -1
    frames, which = run_trial([pace(1.5)], home_rate=pace(1.5), note_s=None)
    assert which is None


def test_the_home_track_takes_over_early_on_a_clear_lead_over_rarely_detected_notes():
    """The main track ran off; the home track explains the player well through a legato
    passage whose note changes the onset detector mostly misses (one every 1.1 s), and a
    far place keeps a slow pace on it. The home track's capped lead would not pass the
    margin before that far place wins; its raw lead passes ``home_takeover_nats`` after the
    first detected note change, and it takes over then."""
    cfg = RelocatorConfig()
    home = pace(1.5)
    slow_far = lambda n: home(n) + pace(1.05 * cfg.trial_pace)(n)  # noqa: E731
    frames, which = run_trial([slow_far], home_rate=home, note_s=1.1)
    assert which == -1
    assert frames == int(np.floor(cfg.home_takeover_nats / home(0))) + 1
    capped_only = dataclasses.replace(cfg, home_takeover_nats=float("inf"))
    later, which = run_trial([slow_far], home_rate=home, note_s=1.1, config=capped_only)
    assert which == 0 and later > frames  # without it, the far place won


def test_a_home_takeover_does_not_end_the_trial_of_a_far_place_that_keeps_gaining():
    """Started mid-piece: the main track ran off, the home track (the player's guessed
    place, wrong too) takes over early on its clear lead, and the far place on trial, the
    right one, gains on both: its trial goes on against the new main track, and it wins.
    (When a takeover ended the trial, a start mid-piece on a corpus take took 6.5 s to
    find, 4.7 s now.)"""
    cfg = RelocatorConfig()
    home_rate = pace(1.5)
    right = lambda n: home_rate(n) + pace(0.6)(n)  # noqa: E731
    home, shadow = ScriptedTrack(home_rate), ScriptedTrack(right, position_states=100.0)

    class MainTrack(ScriptedTrack):
        def adopt(self, other) -> None:  # from now on it gains what the adopted track gains
            super().adopt(other)
            self.rate = other.rate

    main = MainTrack(lambda n: 0.0)
    relocator = make_relocator(main, home, [shadow], cfg)
    relocator.begin_trial([shadow])
    adopted = []
    for frame, moved in trial_frames(relocator, main, note_s=1.1):
        if moved:
            adopted.append((frame, main.adopted))
        if not relocator.on_trial:
            break
    assert [track for _, track in adopted] == [home, shadow]
    assert adopted[0][0] < adopted[1][0]


def screened(window_gains, config=RelocatorConfig(), home_rate=lambda n: 0.0):
    """Screen one far place whose replay gains ``window_gains[w]`` nats over window ``w``
    (and the last window's rate from then on) on a player's place (the main track) that
    gains nothing, the home track gaining ``home_rate(n)`` on its n-th frame; returns
    ``(relocator, main, home, shadow)`` after the screening."""
    probe = make_relocator(ScriptedTrack(lambda n: 0.0), ScriptedTrack(lambda n: 0.0), [], config)
    window = probe.window
    last = len(window_gains) * window - 1
    assert len(window_gains) == probe.n_replay // window
    shadow = ScriptedTrack(lambda n: window_gains[min(n - 1, last) // window] / window)
    main = ScriptedTrack(lambda n: 0.0, started=False)
    home = ScriptedTrack(home_rate)
    relocator = make_relocator(main, home, [shadow], config)
    for _ in range(relocator.n_replay):  # the kept frames: all active, the main track gained 0
        play(relocator, main, np.zeros(8))
    relocator.screen([Candidate(state=500.0, tempo=1.0)])
    return relocator, main, home, shadow


def screen(window_gains, config=RelocatorConfig()) -> bool:
    """Whether a place with these ``window_gains`` passes the screening (see
    :func:`screened`; the home track gains nothing)."""
    return screened(window_gains, config)[0].on_trial


def test_a_place_that_wins_every_window_passes_the_screening():
    assert screen([5.0, 5.0])


def test_a_near_tie_in_one_window_does_not_fail_the_screening():
    """The window right after a splice can hold frames both places explain alike: a place
    trailing there by a fraction of a nat, then clearly ahead, passes."""
    tol = RelocatorConfig().screen_tolerance_nats
    assert screen([-0.1, 12.0])
    assert screen([-0.5 * tol, 12.0])


def test_a_place_that_clearly_loses_a_window_fails_the_screening():
    tol = RelocatorConfig().screen_tolerance_nats
    assert not screen([-2.0 * tol, 40.0])
    assert not screen([40.0, -2.0 * tol])


def test_a_place_that_only_ties_fails_the_screening():
    """Within the tolerance in every window but not ahead over the replay: no evidence for it."""
    tol = RelocatorConfig().screen_tolerance_nats
    assert not screen([-0.5 * tol, 0.4 * tol])
    assert not screen([0.0, 0.0])


def test_the_screening_judges_a_place_against_the_main_track_and_the_trial_against_home_too():
    """After a restart the home track (realigned within a second of the main track's place)
    often explains the replay as well as the right place (a look-alike a few seconds on):
    the screening does not hold the place back for it, the trial does weigh it. Here the
    home track gains as much as the place: the place is put on trial, and there it never
    leads the home track, so it does not win."""
    window = make_relocator(ScriptedTrack(lambda n: 0.0), ScriptedTrack(lambda n: 0.0), [], RelocatorConfig()).window
    same = 6.0 / window  # nats per frame for both the place and the home track
    relocator, main, home, shadow = screened([6.0, 6.0], home_rate=lambda n: same)
    assert relocator.on_trial
    main.started = True
    for frame in range(1, 400):
        moved = play(relocator, main, np.zeros(8), note_began=frame % 12 == 0)
        assert not (moved and main.adopted is shadow), "a place no better than the home track won"
        if not relocator.on_trial:
            break
    assert not relocator.on_trial


def test_shadows_see_each_frame_as_the_main_track_saw_it():
    """Replays and trials feed every track the kept frame with its own temper scale and
    onset strength: a shadow judged on other observations than the main track's is not a
    fair comparison (a place that heard no onsets would lose on the onset term alone)."""
    home, shadow = ScriptedTrack(lambda n: 0.0), ScriptedTrack(lambda n: 10.0)
    main = ScriptedTrack(lambda n: 0.0, started=False)
    relocator = make_relocator(main, home, [shadow], RelocatorConfig())
    frame = lambda k: (np.full(8, k, dtype=np.float32), 1.0 - k / 1000.0, (k % 7) / 7.0)  # noqa: E731
    for k in range(relocator.n_replay):
        u, scale, onset = frame(k)
        play(relocator, main, u, evidence_scale=scale, onset=onset)
    relocator.screen([Candidate(state=500.0, tempo=1.0)])
    expected = [(float(u[0]), scale, onset) for u, scale, onset in map(frame, range(relocator.n_replay))]
    assert home.seen == expected and shadow.seen == expected
    assert relocator.on_trial  # the shadow went on trial
    main.started = True
    u, scale, onset = frame(relocator.n_replay)
    play(relocator, main, u, note_began=True, evidence_scale=scale, onset=onset)
    assert home.seen[-1] == shadow.seen[-1] == (float(u[0]), scale, onset)


def test_a_negative_pace_is_refused():
    with pytest.raises(ConfigError, match="trial_min_progress"):
        RelocatorConfig(trial_min_progress=-0.5)


def screenings_of_a_proposed_place(states_per_frame: float, config=RelocatorConfig()) -> tuple[list, list]:
    """For 6 s the search proposes one far place, moving ``states_per_frame`` (0: it stays
    put; the player's tempo: it moves on with them), while the main track follows the
    player 30 s of X away; the place fails each screening. The U times of the screenings
    and of the places left unscreened as standing still."""
    main = ScriptedTrack(lambda n: 0.0, position_states=300.0)
    home, shadow = ScriptedTrack(lambda n: 0.0), ScriptedTrack(lambda n: -1.0)  # the place loses every window
    relocator = make_relocator(main, home, [shadow], config)
    relocator.search.candidates = lambda position: [Candidate(20.0 + states_per_frame * relocator._count, 1.0)]
    u = np.zeros(8, dtype=np.float32)
    for frame in range(1, int(6.0 / FRAME_S)):
        play(relocator, main, u, now_s=frame * FRAME_S)
    times = {kind: [h[0] for h in relocator.history if h[4] == kind] for kind in ("screen", "still")}
    return times["screen"], times["still"]


def test_a_place_proposed_again_where_it_stood_while_the_player_moved_on_is_not_screened():
    screens, still = screenings_of_a_proposed_place(0.0)
    assert screens and max(screens) < 3.0 and still and min(still) >= 2.5  # screened until seen standing still
    screens, still = screenings_of_a_proposed_place(STATES_PER_FRAME)  # the player's place moves on with them
    assert max(screens) > 5.0 and not still
    off = dataclasses.replace(RelocatorConfig(), stationary_s=0.0)
    screens, still = screenings_of_a_proposed_place(0.0, off)
    assert max(screens) > 5.0 and not still
