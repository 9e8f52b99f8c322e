"""Re-lock after jumps: splices of the corpus takes (backwards and forwards) and starts in
the middle of the piece without --start. Reports the seconds of U, after the splice (or
the start), until the causal position error is below 0.5 s and stays so for 1 s; and the
same counted from the soloist's first note after the splice (nobody can follow a player
who jumps into a rest before they play).

Splice points are fractions of the take: each pair ``(a, b)`` gives a forward jump (cut at
a, resume at b), a backward one (cut at b, resume at a) and a start at a without --start.
``--back S ...`` adds short restarts at a: the player goes back S seconds of the take, as
when repeating the last bar or two.
With ``--pause S`` the player stops for S seconds at the cut (the take's own room noise
from before its first note) and then restarts at the other point; times then count from
the restart. ``--again S`` adds a take played to its end, S seconds of the room, and the
take again from the top (``again``: a musician playing the piece a second time).

    .venv/bin/python -m benchmarks.jump_eval CASES_DIR [--work /tmp/follow_eval] [--pairs 0.3,0.65 ...] [--pause 2]
        [--back 1.5 2.5 4] [--again 3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.follow_eval import add_pink_noise, case_bundle, engine_config, read_map, read_take
from player.config import EngineConfig
from player.engine import Engine
from player.trace import TraceRecorder
from shared.bundle import load_bundle


def run(bundle, u: np.ndarray, sr: int, config: EngineConfig) -> np.ndarray:
    """The path ``(n_frames, 2)`` of the engine over the take ``u``, block by block."""
    recorder = TraceRecorder()
    engine = Engine(bundle, sr, config, on_frame=recorder.frame)
    block = int(round(bundle.params.fine_period_s * sr))
    for i in range(0, len(u) - block + 1, block):
        engine.process(u[i:i + block])
    return recorder.result().path


def relock_time(rows: np.ndarray, u_from: float, truth, u_end: float) -> float:
    """Seconds after u_from until |error| < 0.5 s for 1 s (inf if never)."""
    t = rows[:, 0]
    sel = (t >= u_from) & (t <= u_end)
    err = np.abs(rows[sel, 1] - truth(t[sel]))
    ok = err < 0.5
    need = int(round(1.0 / np.median(np.diff(t))))
    for i in range(len(ok) - need):
        if ok[i:i + need].all():
            return float(t[sel][i] - u_from)
    return float("inf")


def spliced_truth(du: np.ndarray, dx: np.ndarray, restart: float, resume: float):
    """The true X position (s) at U times ``t`` of a take that plays the original up to
    ``restart`` s and from there plays the original from ``resume`` s on (gt_dense map
    ``du -> dx``)."""
    return lambda t: np.interp(np.where(t < restart, t, t - restart + resume), du, dx)


def room_noise(u: np.ndarray, sr: int, first_onset_s: float, seconds: float) -> np.ndarray:
    """``seconds`` of the take's room noise: the part before its first note, repeated."""
    n = int(round(seconds * sr))
    quiet = u[: max(1, int(0.8 * first_onset_s * sr))]
    if n == 0 or quiet.size < sr // 10:
        return np.zeros(n, dtype=np.float32)
    return np.resize(quiet, n).astype(np.float32)


def silence_before_first_note(onsets: np.ndarray, t: float) -> float:
    """Seconds from ``t`` to the soloist's first onset at or after it (0 if none)."""
    after = onsets[onsets >= t]
    return float(after[0] - t) if after.size else 0.0


def print_result(r: tuple) -> None:
    """One re-lock: case, kind, splice point, seconds from the splice and from the first note."""
    print(f"{r[0]:<26} {r[1]:<10} at {r[2]:.2f}  relock {r[3]:6.2f} s  from the first note {r[4]:6.2f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/follow_eval"))
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--pairs", nargs="+", default=["0.3,0.65"],
                    help="splice points as fractions of the take, a,b (default 0.3,0.65)")
    ap.add_argument("--noise-snr", type=float, default=None,
                    help="add pink noise this many dB below each take's RMS")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="seconds the player stops (room noise) between cut and restart")
    ap.add_argument("--back", nargs="*", type=float, default=[],
                    help="also restart this many seconds of the take back from each pair's first point")
    ap.add_argument("--again", type=float, default=None,
                    help="also play the take to its end, stop this many seconds and play it again from the top")
    args = ap.parse_args()
    config = engine_config(args.overrides)
    pairs = [tuple(float(v) for v in p.split(",")) for p in args.pairs]
    results = []
    for case in sorted(c for c in args.cases.iterdir() if (c / "gt_dense.csv").exists()):
        bundle_path = case_bundle(case, args.work)
        u, sr = read_take(case)
        if args.noise_snr is not None:
            u = add_pink_noise(u, args.noise_snr)
        du, dx = read_map(case / "gt_dense.csv")
        onsets = np.loadtxt(case / "gt.csv", delimiter=",", skiprows=1, ndmin=2)[:, 0]
        span = du[-1] - du[0]
        gap = room_noise(u, sr, onsets[0], args.pause)
        pause = gap.size / sr
        with load_bundle(bundle_path, spectra=False) as bundle:
            for fa, fb in pairs:
                first = len(results)
                a, b = du[0] + fa * span, du[0] + fb * span
                splices = {"forward": (a, b), "backward": (b, a)}
                splices.update({f"back{d:g}s": (a, max(du[0], a - d)) for d in args.back})
                for name, (cut, resume) in splices.items():
                    spliced = np.concatenate([u[: int(cut * sr)], gap, u[int(resume * sr):]])
                    restart = cut + pause
                    truth = spliced_truth(du, dx, restart, resume)
                    rows = run(bundle, spliced, sr, config)
                    end = restart + (du[-1] - resume)
                    lost = relock_time(rows, restart, truth, end)
                    silent = silence_before_first_note(onsets, resume)
                    results.append((case.name, name, fa, lost, max(0.0, lost - silent)))
                start = a
                rows = run(bundle, u[int(start * sr):], sr, config)
                truth = spliced_truth(du, dx, 0.0, start)
                lost = relock_time(rows, 0.0, truth, du[-1] - start)
                silent = silence_before_first_note(onsets, start)
                results.append((case.name, "start_mid", fa, lost, max(0.0, lost - silent)))
                for r in results[first:]:
                    print_result(r)
            if args.again is not None:
                room = room_noise(u, sr, onsets[0], args.again)
                cut = len(u) / sr
                restart = cut + room.size / sr
                rows = run(bundle, np.concatenate([u, room, u]), sr, config)
                lost = relock_time(rows, restart, spliced_truth(du, dx, restart, 0.0), restart + du[-1])
                results.append((case.name, "again", 1.0, lost, max(0.0, lost - onsets[0])))
                print_result(results[-1])
    kinds = ("forward", "backward", *(f"back{d:g}s" for d in args.back), "start_mid",
             *(("again",) if args.again is not None else ()))
    for kind in kinds:
        vals = np.array([r[3] for r in results if r[1] == kind])
        played = np.array([r[4] for r in results if r[1] == kind])
        print(f"{kind:<10} max {vals.max():6.2f} s  mean {vals.mean():6.2f} s  median {np.median(vals):6.2f} s"
              f"  | from the first note: max {played.max():6.2f} s  mean {played.mean():6.2f} s")


if __name__ == "__main__":
    main()
