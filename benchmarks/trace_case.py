"""Trace the follower on one evaluation case: what it believed, frame by frame, against the
ground truth, and every verification the global search made. For finding out *why* a case
loses time (a drift in a held note, a false jump, a slow re-lock), not for scoring.

    .venv/bin/python -m benchmarks.trace_case CASE_DIR [--work /tmp/follow_eval]
        [--from 25 --to 30] [--every 5] [--mass] [--set kappa=4 ...] [--take-json TAKE.json]

Per printed frame (every ``--every`` frames between ``--from`` and ``--to`` seconds of U):
U time, position and true position in X (seconds), error, tempo (X s per U s), confidence,
whether the soloist was heard, and what the relocator is doing (screening, or the trial's
home track and candidates with their positions in X). ``--mass`` adds the filter's
posterior mass per second of X in its band (where a second mode grows before the filter
jumps to it). Then the verifications: screenings that passed, trials won or lost, and
home-track takeovers, with the true position at that moment.

``--take-json``: a long take of ``benchmarks.long_eval`` (its ``take.json``) starts where
that file says (``start_s``, and ``intro`` when the recording plays from there at once), as
``long_eval run`` plays it; the case folder then holds links to the take's U.flac, gt.csv
and gt_dense.csv and to the piece's X.flac.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from pathlib import Path

import numpy as np

from benchmarks.follow_eval import case_bundle, engine_config, read_map, read_take
from player.engine import Engine
from shared.bundle import load_bundle


def band_mass(follower, coarse_period_s: float, least: float = 1e-12) -> str:
    """The posterior's mass per whole second of X inside the band, ``second:mass``."""
    seconds = (follower.lo + np.arange(follower.posterior.size)) / follower.m * coarse_period_s
    bins = np.floor(seconds).astype(int)
    mass = np.bincount(bins - bins[0], weights=follower.posterior)
    return " ".join(f"{bins[0] + k}:{v:.1e}" for k, v in enumerate(mass) if v > least)


def relocator_state(relocator, coarse_period_s: float) -> str:
    if relocator is None:
        return ""
    if relocator.screening:
        return "screening"
    if relocator.on_trial:
        trial = relocator.trial
        where = ",".join(f"{s.position_states * coarse_period_s:.2f}" for s in trial.shadows)
        return (f"trial home={relocator.home.position_states * coarse_period_s:.2f} candidates={where}"
                f" onsets={trial.onsets}")
    return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("case", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/follow_eval"))
    ap.add_argument("--from", dest="t0", type=float, default=0.0, help="first U second printed")
    ap.add_argument("--to", dest="t1", type=float, default=None, help="last U second run and printed")
    ap.add_argument("--every", type=int, default=5, help="print every N-th frame")
    ap.add_argument("--mass", action="store_true", help="print the band's posterior mass per X second")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--take-json", type=Path, default=None, help="a long_eval take.json: start as it says")
    args = ap.parse_args()
    if args.take_json is not None:
        take = json.loads(args.take_json.read_text())
        args.overrides = [f"start_s={json.dumps(float(take.get('start_s', 0.0)))}",
                          f"intro={json.dumps(bool(take.get('intro', False)))}", *args.overrides]
    case = args.case
    truth_file = case / "gt_dense.csv" if (case / "gt_dense.csv").exists() else case / "gt.csv"
    du, dx = read_map(truth_file)
    u, sr = read_take(case)
    if args.t1 is not None:
        u = u[: int(args.t1 * sr)]
    bundle = load_bundle(case_bundle(case, args.work), spectra=False)
    cp = bundle.params.coarse_period_s
    engine = None
    frame = 0

    def on_frame(t: float, st) -> None:
        nonlocal frame
        frame += 1
        reloc = engine.relocator
        if t < args.t0 or frame % args.every:
            return
        truth = float(np.interp(t, du, dx))
        line = (f"u={t:7.2f} x={st.x_s:7.2f} truth={truth:7.2f} err={st.x_s - truth:+6.2f} "
                f"tempo={st.tempo:.3f} conf={st.confidence:.2f} {'playing' if st.active else 'silent '} "
                f"{relocator_state(reloc, cp)}")
        if args.mass:
            line += "  mass " + band_mass(engine.follower, cp)
        print(line.rstrip())

    engine = Engine(bundle, sr, engine_config(args.overrides), on_frame=on_frame)
    events: deque = deque()
    if engine.relocator is not None:
        engine.relocator.history = events  # keep them all, not only the last 64
    block = int(round(bundle.params.fine_period_s * sr))
    for i in range(0, len(u) - block + 1, block):
        engine.process(u[i:i + block])
    print("verifications (U s, filter's X s, candidate's X s, gain nats, outcome, true X s):")
    for now_s, main_state, cand_state, gain, what in events:
        if what == "screen" and gain <= -engine.config.relocator.screen_tolerance_nats:
            continue  # failed screenings are many and say little
        print(f"  {what:6s} u={now_s:7.2f} filter={main_state * cp:7.2f} candidate={cand_state * cp:7.2f} "
              f"gain={gain:+7.1f} truth={float(np.interp(now_s, du, dx)):7.2f}")
    bundle.close()


if __name__ == "__main__":
    main()
