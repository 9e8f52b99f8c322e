"""Follower accuracy on synthetic takes (shared/synth.py): a quick, corpus-independent check
that a tuning gain holds beyond four cases (slow practice, fast, rubato, pauses, detune,
other timbre, noise, rests).

    .venv/bin/python -m benchmarks.synth_eval [--set kappa=4 ...] [--no-search]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.follow_eval import analysis_overrides, engine_config, print_mean, print_row
from shared.spectral import AnalysisParams
from shared.synth import FLUTE, OBOE, PIANO, VIOLIN, make_case
from tests.follow_helpers import bundle_for, causal_errors, follow, pct_within

CASES = {
    "rubato": dict(n_notes=40, seed=21),
    "slow_0.7": dict(n_notes=40, seed=22, tempo_u=lambda b: 70.0),
    "fast_1.3": dict(n_notes=40, seed=23, tempo_u=lambda b: 130.0),
    "accel": dict(n_notes=40, seed=24, tempo_u=lambda b: 75.0 + 1.2 * b),
    "pauses": dict(n_notes=40, seed=25, pauses={10.0: 1.5, 25.0: 3.0}),
    "detune+45": dict(n_notes=40, seed=26, detune_cents=45.0),
    "oboe_vs_violin": dict(n_notes=40, seed=27, solo_x=OBOE, solo_u=VIOLIN, snr_db=25.0),
    "flute_loud_acc": dict(n_notes=40, seed=28, solo_x=FLUTE, solo_u=FLUTE, acc=PIANO, acc_db=6.0),
    "rests": dict(n_notes=48, seed=29, solo_rests=((12.0, 20.0), (32.0, 36.0))),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-search", action="store_true")
    ap.add_argument("--cases", nargs="*")
    args = ap.parse_args()
    po = analysis_overrides(args.overrides)
    config = engine_config(args.overrides, search=not args.no_search)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in CASES.items():
            if args.cases and name not in args.cases:
                continue
            case = make_case(**kwargs)
            folder = Path(tmp) / name
            folder.mkdir()
            bundle = bundle_for(case, folder, params=AnalysisParams(**po))
            path = follow(bundle, case.u, case.sr, config)
            err = causal_errors(path, case.onsets_u, case.onsets_x)
            row = {"case": name, "<=50": pct_within(err, 0.05), "<=100": pct_within(err, 0.1),
                   "<=250": pct_within(err, 0.25), "<=1000": pct_within(err, 1.0), "median_ms": 1000 * float(np.median(err))}
            rows.append(row)
            print_row(row)
    print_mean(rows)


if __name__ == "__main__":
    main()
