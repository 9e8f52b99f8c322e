"""Benchmark of batch ``prep build``: serial (--jobs 1) against parallel (--jobs 2) wall time.

It synthesises a few different recordings (default 4 x 60 s, stereo 44.1 kHz 16-bit: a
solo line over chords, deterministic, one seed each), then runs the installed ``prep``
console script as a child process on all of them, once with ``--jobs 1`` and once with
``--jobs N``, and prints both wall-clock times and their ratio parallel / serial (target
below 0.60 with 2 jobs). Each run includes the start-up a user sees (interpreter, imports,
spawning the workers). A short warm-up build first makes both runs start with the same
warm file and numba caches. The parallel bundles are checked against the serial ones
with ``prep diff`` (builds are deterministic).

    .venv/bin/python -m benchmarks.bench_batch [--files 4] [--seconds 60] [--jobs 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.bench_prep import emit
from shared.synth import ORGAN, VIOLIN, TimeMap, accompaniment, melody, render_notes


def synthesise(path: Path, seconds: float, seed: int, sr: int = 44100) -> None:
    """A deterministic stereo recording: violin-like solo over organ-like chords, with hiss."""
    bpm = 90.0 + 4.0 * seed
    beats = seconds / 60.0 * bpm
    notes = [n for n in melody(int(beats / 1.1) + 8, seed=seed) if n.beat < beats]
    chords = [n for n in accompaniment(notes, seed=seed) if n.beat < beats]
    tm = TimeMap.constant(bpm)
    solo = render_notes(notes, tm, sr, VIOLIN, vibrato_cents=10.0, length_s=seconds, seed=seed + 1)
    acc = render_notes(chords, tm, sr, ORGAN, gain=0.12, length_s=seconds, seed=seed + 2)
    hiss = np.random.default_rng(seed + 3).normal(0, 3e-4, (len(solo), 2)).astype(np.float32)
    stereo = np.stack([0.9 * solo + 1.1 * acc, 1.1 * solo + 0.9 * acc], axis=1) + hiss
    sf.write(path, stereo / max(1.0, float(np.abs(stereo).max()) / 0.9), sr, subtype="PCM_16")


def timed_batch(prep: Path, sources: list[Path], out: Path, jobs: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(prep), "build", *map(str, sources), "-o", f"{out}/", "--jobs", str(jobs), "-q"], check=True)
    return time.perf_counter() - t0


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    prep = Path(sys.executable).with_name("prep")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sources = []
        for i in range(args.files):
            sources.append(tmp / f"recording{i + 1}.wav")
            synthesise(sources[-1], args.seconds, seed=11 + i)
        print(f"synthesised {args.files} x {args.seconds:g} s in {time.perf_counter() - t0:.1f} s", flush=True)
        warm = tmp / "warm.wav"
        synthesise(warm, 3.0, seed=99)
        subprocess.run([str(prep), "build", str(warm), "-o", str(tmp / "warm.h5"), "-q"], check=True)
        print(f"load average before: {load_average()}", flush=True)
        serial = timed_batch(prep, sources, tmp / "serial", 1)
        print(f"--jobs 1: {serial:.2f} s (load average {load_average()})", flush=True)
        parallel = timed_batch(prep, sources, tmp / "parallel", args.jobs)
        print(f"--jobs {args.jobs}: {parallel:.2f} s (load average {load_average()})", flush=True)
        same = all(
            subprocess.run([str(prep), "diff", str(tmp / "serial" / f"{s.stem}.h5"), str(tmp / "parallel" / f"{s.stem}.h5")],
                           capture_output=True).returncode == 0
            for s in sources
        )
    result = {
        "files": args.files,
        "seconds_each": args.seconds,
        "jobs": args.jobs,
        "serial_wall_s": round(serial, 2),
        "parallel_wall_s": round(parallel, 2),
        "ratio_parallel_over_serial": round(parallel / serial, 3),
        "target_ratio": 0.60,
        "bundles_equivalent": same,
        "cores": os.cpu_count(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
