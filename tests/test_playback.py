"""The playback controller (issue 22): it lands X's onsets with seeks in the decay before
them, glides the rate at most 10 % per 100 ms, and learns the rate the tempo misses."""

from __future__ import annotations

import numpy as np
import pytest

from player.playback import PlaybackConfig, PlaybackController
from shared.alignment import rate_wobble

BLOCK_S = 0.02


def drive(controller: PlaybackController, target_of_t, tempo_of_t, seconds: float, head: float = 0.0):
    """Play ``seconds`` of blocks: the head moves at the rate the controller gives (seeks
    applied); rows (u_s, head at the block's start, rate, seek) like RunTrace.heard."""
    rows = []
    for k in range(int(round(seconds / BLOCK_S))):
        t = k * BLOCK_S
        rate, seek = controller.step(head, target_of_t(t), tempo_of_t(t), BLOCK_S)
        if seek is not None:
            head = seek
        rows.append((t, head, rate, float(seek is not None)))
        head += rate * BLOCK_S
    return np.array(rows), head


def test_the_rate_never_changes_by_more_than_10_percent_within_100_ms():
    rng = np.random.default_rng(3)
    # a follower whose tempo jumps about (0.7..1.4) and whose position jumps by up to 0.3 s
    tempo = np.repeat(rng.uniform(0.7, 1.4, 40), 25)
    offset = np.repeat(rng.uniform(-0.3, 0.3, 40), 25)
    position = np.cumsum(tempo) * BLOCK_S + offset
    controller = PlaybackController(PlaybackConfig(seek_s=0.0), onsets_s=None)
    heard, _ = drive(controller, lambda t: position[int(round(t / BLOCK_S))],
                     lambda t: tempo[int(round(t / BLOCK_S))], 19.9)
    wobble = rate_wobble(heard)
    assert wobble["max_change_pct"] <= 10.0 + 1e-6 and wobble["over_10_pct"] == 0.0
    assert wobble["seeks_per_min"] == 0.0
    # and it follows: 0.4 s into each step, most of the jump is made up (by the rate alone)
    n = len(heard)
    late = np.abs(heard[20::25, 1] - position[:n][20::25])
    jumps = np.abs(np.diff(offset[::25]))
    assert np.median(late) < 0.75 * np.median(jumps), (np.median(late), np.median(jumps))


def test_an_error_is_removed_by_a_seek_just_before_the_next_onset_of_x():
    controller = PlaybackController(PlaybackConfig(), onsets_s=np.array([1.0, 2.0]))
    # mid-note, 70 ms ahead of the schedule: no seek there, only the rate
    rate, seek = controller.step(0.5, 0.43, 1.0, BLOCK_S)
    assert seek is None and rate < 1.0
    # just before the onset at 1.0 s, still ahead: it seeks back to where it should be
    rate, seek = controller.step(0.97, 0.90, 1.0, BLOCK_S)
    assert seek == pytest.approx(0.90)
    # once per onset: the same onset does not make it seek again (no stutter)
    assert controller.step(0.98, 0.90, 1.0, BLOCK_S)[1] is None
    # late before the next onset: it jumps forward but never past the onset
    rate, seek = controller.step(1.96, 2.15, 1.0, BLOCK_S)
    assert 1.96 < seek < 2.0


def test_small_errors_and_far_onsets_do_not_seek():
    controller = PlaybackController(PlaybackConfig(seek_s=0.03), onsets_s=np.array([1.0]))
    assert controller.step(0.97, 0.99, 1.0, BLOCK_S)[1] is None  # 20 ms: the rate's job
    assert controller.step(0.5, 0.7, 1.0, BLOCK_S)[1] is None  # 200 ms, but mid-note
    assert controller.step(0.5, 2.0, 1.0, BLOCK_S)[1] == pytest.approx(2.0)  # beyond jump_s: a jump


@pytest.mark.parametrize("integral_s, bound_s", [(2.0, 0.012), (0.0, 0.045)])
def test_the_integral_term_learns_the_rate_the_tempo_misses(integral_s, bound_s):
    """The soloist plays 6 % faster than the follower's tempo says: without the integral
    term the output stays about 0.06 * catch_up_s behind; with it, within the dead band."""
    controller = PlaybackController(PlaybackConfig(integral_s=integral_s, seek_s=0.0))
    heard, head = drive(controller, lambda t: 1.06 * t, lambda t: 1.0, 20.0)
    error = 1.06 * (20.0 - BLOCK_S) - heard[-1, 1]
    assert abs(error) < bound_s
    if integral_s == 0.0:
        assert error > 0.02  # (the figure the integral removes)


def test_reset_forgets_rate_and_bias():
    controller = PlaybackController()
    drive(controller, lambda t: 1.2 * t, lambda t: 1.0, 3.0)
    controller.reset()
    assert controller.step(0.0, 0.0, 1.0, BLOCK_S) == PlaybackController().step(0.0, 0.0, 1.0, BLOCK_S)
