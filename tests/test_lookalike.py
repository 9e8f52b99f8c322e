"""Look-alike places (issue 20): X's divergence between two places is small where the music
before them repeats (varied, shifted), large elsewhere; the relocator asks a place that
looks like the main track's for more evidence once the track has followed the player for
a while, and not otherwise."""

import numpy as np

from player.jump_prior import JumpPrior
from player.lookalike import LookAlike
from player.relocator import RelocatorConfig
from player.search import Candidate
from player.stages import Frame
from shared.spectral import QuantizedTemplates

from .test_relocator import FRAME_S, ScriptedTrack, make_relocator, play, trial_frames

PERIOD_S = 0.1
N_STATES, N_BINS = 2000, 24
PHRASE = slice(300, 360)  # played again, varied, from REPEAT on (8 s later)
REPEAT = 380
HERE = PHRASE.start + 50  # 5 s into the phrase: 4 s of it before the place


def piece(seed: int = 1) -> QuantizedTemplates:
    """A piece of random notes (each state's mass mostly in one bin, a note lasting 2-4
    states) whose states 300-360 come back at 381-441, with 30 % of their mass moved to
    other bins (another accompaniment under the same notes)."""
    rng = np.random.default_rng(seed)
    p = np.empty((N_STATES, N_BINS))
    s = 0
    while s < N_STATES:
        length = int(rng.integers(2, 5))
        note = np.full(N_BINS, 0.2 / (N_BINS - 1))
        note[rng.integers(0, N_BINS)] = 0.8
        p[s:s + length] = note
        s += length
    varied = 0.7 * p[PHRASE] + 0.3 * rng.dirichlet(np.ones(N_BINS), PHRASE.stop - PHRASE.start)
    p[REPEAT + 1:REPEAT + 1 + varied.shape[0]] = varied
    return QuantizedTemplates.from_log(np.log(p)[None].astype(np.float32))


PIECE = piece()


def test_a_varied_repeat_looks_alike_and_other_music_does_not():
    alike = LookAlike(PIECE, PERIOD_S)
    cfg = RelocatorConfig()
    repeat = HERE - PHRASE.start + REPEAT + 1
    assert alike.divergence(HERE, repeat) < cfg.alike_kl / 2
    assert alike.divergence(HERE, repeat + 2) < cfg.alike_kl / 2  # 0.2 s off: still found
    for elsewhere in (HERE - 80, 600, 1500, repeat + 15):
        assert alike.divergence(HERE, elsewhere) > cfg.alike_kl
    assert alike.divergence(HERE, 10) == float("inf")  # less than 4 s of X before it


def trial(candidate_state: float, lead_nats: float, played_s: float = 30.0, templates=PIECE,
          pause_s: float = 0.0, after_pause_s: float = 0.0) -> bool:
    """The player followed at the phrase's 5th second for ``played_s`` seconds (the main
    track standing there), then silent for ``pause_s`` and playing again for
    ``after_pause_s``; a place at ``candidate_state`` screened, then leading by
    ``lead_nats``: True if the main track moved there."""
    here = float(HERE)
    main = ScriptedTrack(lambda n: 0.0, position_states=here, speed=0.0)
    probe = make_relocator(ScriptedTrack(lambda n: 0.0), ScriptedTrack(lambda n: 0.0), [], RelocatorConfig(),
                           templates)
    replay = probe.n_replay
    shadow = ScriptedTrack(lambda n: 1.0 if n <= replay + lead_nats else 0.0)
    relocator = make_relocator(main, ScriptedTrack(lambda n: 0.0), [shadow], RelocatorConfig(), templates,
                               JumpPrior(np.array([0]), PERIOD_S))
    for _ in range(max(replay, int(round(played_s / FRAME_S)))):
        play(relocator, main, np.zeros(8))
    for _ in range(int(round(pause_s / FRAME_S))):
        relocator.process_frame(Frame(obs=np.zeros(8, dtype=np.float32), active=False))
    for _ in range(int(round(after_pause_s / FRAME_S))):
        play(relocator, main, np.zeros(8))
    relocator.screen([Candidate(state=candidate_state, tempo=1.0)])
    assert relocator.on_trial
    for _, moved in trial_frames(relocator, main, note_s=0.25):
        if moved:
            return main.adopted is shadow
        if not relocator.on_trial:
            return False
    raise AssertionError("the trial never ended")


def test_a_place_that_looks_like_the_players_needs_more_evidence():
    """8 s away (a few nats under the prior), 40 nats move the player to other music but not
    to the phrase's varied repeat; that needs its surcharge (50 nats) more."""
    repeat, elsewhere = HERE - PHRASE.start + REPEAT + 1, HERE - 80
    assert trial(elsewhere, lead_nats=40.0)
    assert not trial(repeat, lead_nats=40.0)
    assert trial(repeat, lead_nats=40.0 + RelocatorConfig().alike_nats)


def test_a_track_that_has_just_moved_has_no_record_against_a_look_alike():
    """Followed for less than alike_settle_s since it last moved (here: since the start),
    the main track asks the repeat for no more than any other place."""
    assert trial(HERE - PHRASE.start + REPEAT + 1, lead_nats=40.0, played_s=RelocatorConfig().alike_settle_s / 5)


def test_after_a_pause_a_look_alike_is_asked_no_more_than_any_place():
    """A player who stopped may have gone back to the phrase's first time (musicians restart
    after a pause): for alike_settle_s after the pause the repeat needs no more than other
    music; played through without a pause, it does."""
    repeat, settle = HERE - PHRASE.start + REPEAT + 1, RelocatorConfig().alike_settle_s
    assert trial(repeat, lead_nats=40.0, pause_s=1.0, after_pause_s=settle / 2)
    assert not trial(repeat, lead_nats=40.0, pause_s=1.0, after_pause_s=2 * settle)
