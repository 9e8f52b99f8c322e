"""The long-piece benchmark's account of a re-lock (benchmarks/long_eval.py): from the
soloist's first note after a jump, when the relocator first screened the right place and
when it adopted it, a literal repeat of the same music counting as right."""

from __future__ import annotations

import numpy as np

from benchmarks.long_eval import relock_steps


def skip_take():
    """A take of 20 s that skips at 10 s from X 10 s to X 100 s (tempo 1 throughout); the
    soloist's first note after the skip comes at 10.4 s."""
    u = np.round(np.arange(0.0, 20.0, 0.1), 6)
    x = np.where(u < 10.0, u, 100.0 + (u - 10.0))
    gt_dense = np.column_stack([u, x])
    onsets = np.array([0.5, 3.0, 10.4, 12.0, 15.0])
    gt = np.column_stack([onsets, np.interp(onsets, u, x)])
    info = {"span_starts_s": [0.0, 10.0], "start_given": True, "duration_s": 20.0}
    return gt, gt_dense, info


def events(*rows):
    return np.array(rows, dtype=object).reshape(-1, 3)


def test_the_right_places_first_screening_and_adoption_are_timed_from_the_next_note():
    gt, gt_dense, info = skip_take()
    found = events((10.6, 50.0, "screen"), (11.0, 101.0, "screen"), (11.5, 60.0, "won"), (11.8, 101.6, "screen"),
                   (12.4, 102.4, "won"), (13.0, 103.0, "home"))
    screened, adopted = relock_steps(found, gt, gt_dense, info, None)
    assert np.allclose(screened, [0.6]) and np.allclose(adopted, [2.0])


def test_a_jump_whose_right_place_was_never_adopted_says_so():
    gt, gt_dense, info = skip_take()
    screened, adopted = relock_steps(events((11.0, 101.0, "screen"), (11.5, 60.0, "won")), gt, gt_dense, info,
                                     None)
    assert np.allclose(screened, [0.6]) and adopted == [float("inf")]
    screened, adopted = relock_steps(events(), gt, gt_dense, info, None)
    assert screened == adopted == [float("inf")]


def test_the_same_music_elsewhere_counts_as_the_right_place():
    """X 200-210 s repeats X 100-110 s note for note (the same render): a place there is as
    right as the truth."""
    gt, gt_dense, info = skip_take()
    source = {"case": "a", "stem": "mix", "cents": 0.0, "x0": 0.0}
    sections = [{"x0": 100.0, "x1": 110.0, "source": source}, {"x0": 200.0, "x1": 210.0, "source": source}]
    found = events((11.0, 201.0, "screen"), (12.0, 202.0, "won"))
    assert np.allclose(relock_steps(found, gt, gt_dense, info, sections), [[0.6], [1.6]])
    assert relock_steps(found, gt, gt_dense, info, None) == ([float("inf")], [float("inf")])
