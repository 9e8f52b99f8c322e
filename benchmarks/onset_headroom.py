"""How predictable are a take's onsets? The causal headroom of a case.

The scorer takes the causal position at the very moment of each solo onset: no follower
has heard that note yet, so its position there is an extrapolation from what came before.
This script scores an idealised follower that knows the true path exactly up to the
previous onset and extrapolates at the true tempo of the last ``--memory`` seconds (X
seconds per U second). Where this ideal gets few onsets within 100 ms (strong rubato,
long notes), no causal follower can do much better; a follower far below it on a case
has room to improve there.

    .venv/bin/python -m benchmarks.onset_headroom ../shared/corpus [--memory 2 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.follow_eval import read_map

TOLERANCES_MS = (50, 100, 250)


def extrapolation_errors(case: Path, memory_s: float) -> np.ndarray:
    """Errors (seconds of X) at onsets 2..N of the ideal extrapolating follower."""
    gu, gx = read_map(case / "gt.csv")
    du, dx = read_map(case / "gt_dense.csv")
    errors = []
    for i in range(1, len(gu)):
        t_last = gu[i - 1]
        t0 = max(du[0], t_last - memory_s)
        if t_last - t0 > 0.3:
            tempo = (np.interp(t_last, du, dx) - np.interp(t0, du, dx)) / (t_last - t0)
        else:  # too little history: the follower's own prior
            tempo = 1.0
        errors.append(gx[i - 1] + tempo * (gu[i] - gu[i - 1]) - gx[i])
    return np.asarray(errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", type=Path, help="folders of cases (as ../shared/corpus)")
    ap.add_argument("--memory", nargs="+", type=float, default=[2.0, 4.0],
                    help="seconds of U over which the ideal follower measures the tempo")
    args = ap.parse_args()
    cases = sorted(c for s in args.sets for c in s.iterdir() if (c / "gt_dense.csv").exists())
    if not cases:
        raise SystemExit("no cases (folders with gt.csv and gt_dense.csv) found")
    for memory in args.memory:
        rows = []
        for case in cases:
            err_ms = np.abs(extrapolation_errors(case, memory)) * 1000
            row = [100 * float(np.mean(err_ms <= t)) for t in TOLERANCES_MS]
            rows.append(row)
            print(f"memory={memory:g}s case={case.name} "
                  + " ".join(f"<={t}={v:.1f}" for t, v in zip(TOLERANCES_MS, row, strict=True)))
        mean = np.mean(rows, axis=0)
        print(f"memory={memory:g}s MEAN " + " ".join(f"<={t}={v:.1f}" for t, v in zip(TOLERANCES_MS, mean, strict=True)))


if __name__ == "__main__":
    main()
