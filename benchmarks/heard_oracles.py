"""What each part of the schedule costs the listener (issue 22): the player run with parts of
its anticipator replaced by the truth.

The output is scheduled by the anticipator (:mod:`player.anticipate`): the belief taken at
each of the soloist's detected onsets (the *anchor*) and carried on at a *tempo* until the
next. This benchmark puts the ground truth (the case's ``gt_dense.csv``) into either part, or
both, and reports the exact heard figures of each run (``h50`` / ``h100``: % of the
accompaniment's onsets heard within 50 / 100 ms, as :mod:`benchmarks.follow_eval` scores
them), so the gap between today's schedule and a perfect one splits into its causes:

- ``anchor``: the anchor is the true position at that moment (the belief still holds the
  schedule back otherwise; here it does not);
- ``tempo``: the reckoning goes at the true tempo over ``--window`` seconds ending
  ``--lag`` seconds ago (a lag of 0 reads where the soloist is now: not causal);
- ``both``: the two;
- ``react``: not a run but a ceiling, from the ``none`` run: every accompaniment onset that
  starts with a note of the soloist (within :data:`TOGETHER_S`) heard no earlier than
  ``--react-ms`` after it, the others as they were: what waiting for the soloist at those
  notes would give if each were seen that soon and nothing else were taken for one
  (:mod:`benchmarks.solo_onsets` measures how soon detectors see them, and how often they
  are fooled). With ``--react-detector KIND:THRESHOLD`` (a detector of
  :mod:`benchmarks.solo_onsets`, e.g. ``rise:0.1``) it is a realistic ceiling instead: an
  early onset that starts with the soloist waits from when it would have played until the
  detector's next firing on U (a true note or a false alarm) or, if none comes first, until
  today's detector would anchor (:data:`FALLBACK_S` after the note), and is heard half a
  block (:data:`HALF_BLOCK_S`) after that; it still assumes the player knows which
  onsets the soloist starts;
- ``none``: the player as it is (the reference row).

    .venv/bin/python -m benchmarks.heard_oracles CASES_DIR [...] [--oracle none anchor tempo both react]
        [--window 0.5] [--lag 0.1] [--react-ms 40] [--react-detector rise:0.1] [--work /tmp/follow_eval]

Each case needs X.flac, U.flac, gt_dense.csv and notes.csv (as ../shared/corpus has).
Bundles are built into --work once and shared with follow_eval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.follow_eval import (
    case_bundle,
    engine_config,
    heard_errors,
    heard_figures,
    onsets_inside,
    percent_within,
    read_map,
    read_take,
    signed_median_ms,
)
from benchmarks.solo_onsets import THRESHOLDS, curve, detections, solo_onsets
from player.anticipate import Anticipator
from player.engine import Engine
from player.filemode import default_blocksize
from player.stages import Frame
from player.trace import TraceRecorder
from shared.bundle import load_bundle

ORACLES = ("none", "anchor", "tempo", "both", "react")
#: An accompaniment onset this close (seconds of U) to one of the soloist's starts with it.
TOGETHER_S = 0.03
#: When today's detector anchors the schedule after a note (seconds): its peak's lag and a frame.
FALLBACK_S = 0.125
#: Half an output block (seconds): a note seen inside a block is heard from the next one.
HALF_BLOCK_S = 0.01


class TruthAnticipator(Anticipator):
    """An :class:`Anticipator` with the truth in some of its parts (see the module docstring).

    Args:
        truth_u, truth_x: the ground truth, U seconds to X seconds (ascending ``(n,)`` each).
        true_anchor: the anchors are the true position.
        true_tempo: the reckoning goes at the true tempo over ``window_s`` ending ``lag_s`` ago.
        window_s, lag_s: see ``true_tempo`` (seconds of U).
        **kwargs: the :class:`Anticipator`'s own arguments.
    """

    def __init__(self, truth_u: np.ndarray, truth_x: np.ndarray, true_anchor: bool, true_tempo: bool,
                 window_s: float, lag_s: float, **kwargs) -> None:
        self._tu, self._tx = truth_u, truth_x
        self._true_anchor, self._true_tempo = true_anchor, true_tempo
        self._window_s, self._lag_s = window_s, lag_s
        self.belief_holds_back = not true_anchor
        super().__init__(**kwargs)

    def _truth(self, u_s: float) -> float:
        return float(np.interp(u_s, self._tu, self._tx))

    def anchor_position(self, frame: Frame, belief_x_s: float) -> float:
        return self._truth(frame.now_s) if self._true_anchor else belief_x_s

    def reckoning_tempo(self, frame: Frame, tempo: float) -> float:
        if not self._true_tempo:
            return tempo
        end = frame.now_s - self._lag_s
        return (self._truth(end) - self._truth(end - self._window_s)) / self._window_s


def reacted(u_on: np.ndarray, err_ms: np.ndarray, solo_u: np.ndarray, react_ms: float,
            fired: np.ndarray | None = None) -> np.ndarray:
    """``err_ms`` (``(m,)``, of the accompaniment's onsets at U times ``u_on``) as if the
    player waited for the soloist at every onset within :data:`TOGETHER_S` of a solo onset
    (``solo_u``, seconds): heard ``react_ms`` after the soloist at the earliest; or, given a
    detector's firings (``fired``, seconds of U, ascending), an early onset held from when it
    would have played until the next firing or :data:`FALLBACK_S` after the note, whichever
    comes first, then heard :data:`HALF_BLOCK_S` later. Late onsets (and NaN, never played)
    stay as they were."""
    if not solo_u.size:
        return err_ms.copy()
    nearest = solo_u[np.abs(u_on[:, None] - solo_u[None, :]).argmin(axis=1)]  # each onset's solo note
    together = (np.abs(u_on - nearest) <= TOGETHER_S) & np.isfinite(err_ms)
    if fired is None:
        return np.where(together, np.maximum(err_ms, react_ms), err_ms)
    out = err_ms.copy()
    for k in np.flatnonzero(together & (err_ms < 0)):
        played = u_on[k] + err_ms[k] / 1000.0
        later = fired[fired > played]
        release = min(later[0] if later.size else np.inf, nearest[k] + FALLBACK_S)
        out[k] = max(err_ms[k], (release + HALF_BLOCK_S - u_on[k]) * 1000.0)
    return out


def detector_firings(case: Path, spec: str) -> np.ndarray:
    """The firings (seconds of U) of detector ``spec`` (``KIND:THRESHOLD``, see
    :mod:`benchmarks.solo_onsets`) on ``case``'s take."""
    kind, _, threshold = spec.partition(":")
    u, sr = read_take(case)
    return detections(*curve(u, sr, kind), kind, float(threshold))


def run_oracle(case: Path, work: Path, oracle: str, window_s: float, lag_s: float, react_ms: float = 40.0,
               react_detector: str | None = None) -> dict:
    """The heard figures of ``case`` with ``oracle`` (one of :data:`ORACLES`) in the schedule."""
    truth_u, truth_x = read_map(case / "gt_dense.csv")
    u, sr = read_take(case)
    with load_bundle(case_bundle(case, work), spectra=False) as bundle:
        recorder = TraceRecorder()
        config = engine_config([])
        engine = Engine(bundle, sr, config, on_frame=recorder.frame)
        if oracle not in ("none", "react"):
            p = bundle.params
            engine.anticipator = TruthAnticipator(
                truth_u, truth_x, true_anchor=oracle in ("anchor", "both"), true_tempo=oracle in ("tempo", "both"),
                window_s=window_s, lag_s=lag_s, config=config.anticipate, frame_s=p.fine_period_s,
                min_tempo=config.follower.min_tempo, max_tempo=config.follower.max_tempo, tempo=config.tempo)
        block = default_blocksize(sr, bundle.params)
        for i in range(0, len(u) - block + 1, block):
            engine.process(u[i:i + block])
            recorder.block(engine)
        trace = recorder.result()
    figures = heard_figures(trace.heard, trace.path, case / "notes.csv", len(u) / sr)
    if oracle == "react":
        x_on, u_on = onsets_inside(case / "notes.csv", len(u) / sr)
        err = heard_errors(trace.heard, x_on, u_on)
        fired = detector_firings(case, react_detector) if react_detector else None
        err = reacted(u_on, err, solo_onsets(case), react_ms, fired)
        figures.update(percent_within(err, (30, 50, 100), "h"), h_signed_ms=signed_median_ms(err))
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", type=Path)
    ap.add_argument("--oracle", nargs="+", choices=ORACLES, default=list(ORACLES))
    ap.add_argument("--window", type=float, default=0.5, help="seconds the true tempo is measured over")
    ap.add_argument("--lag", type=float, default=0.1, help="seconds late the true tempo is known")
    ap.add_argument("--react-ms", type=float, default=40.0,
                    help="ms after the soloist the 'react' ceiling hears the onsets they start together")
    ap.add_argument("--react-detector", default=None, metavar="KIND:THRESHOLD",
                    help="the 'react' ceiling released by this detector of benchmarks.solo_onsets (e.g. rise:0.1)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/follow_eval"))
    args = ap.parse_args()
    if args.react_detector is not None:
        kind, _, threshold = args.react_detector.partition(":")
        try:
            float(threshold)
        except ValueError:
            kind = ""
        if kind not in THRESHOLDS:
            raise SystemExit(f"heard_oracles: --react-detector wants KIND:THRESHOLD with KIND one of "
                             f"{', '.join(THRESHOLDS)} (got {args.react_detector!r})")
    cases = sorted(c for s in args.sets if s.is_dir() for c in ([s] if (s / "gt_dense.csv").exists() else s.iterdir())
                   if (c / "gt_dense.csv").exists() and (c / "notes.csv").exists())
    if not cases:
        raise SystemExit("no case with gt_dense.csv and notes.csv in " + " ".join(map(str, args.sets)))
    keys = ("h30", "h50", "h100", "h_signed_ms")
    print(f"{'case':28s} {'oracle':7s} " + " ".join(f"{k:>11s}" for k in keys))
    means: dict[str, list[dict]] = {o: [] for o in args.oracle}
    for case in cases:
        for oracle in args.oracle:
            row = run_oracle(case, args.work, oracle, args.window, args.lag, args.react_ms, args.react_detector)
            means[oracle].append(row)
            print(f"{case.name[:28]:28s} {oracle:7s} " + " ".join(f"{row[k]:11.1f}" for k in keys), flush=True)
    for oracle, rows in means.items():
        print(f"{'MEAN':28s} {oracle:7s} " + " ".join(f"{np.nanmean([r[k] for r in rows]):11.1f}" for k in keys))


if __name__ == "__main__":
    main()
