"""Benchmark of ``prep build``: wall time, CPU time, peak memory and bundle size.

By default it synthesises a 10-minute stereo 44.1 kHz 16-bit recording (a solo line over
chords, deterministic), or uses ``--input FILE``. It runs the installed ``prep`` console
script as a child process, so the figures include start-up, exactly as a user sees them.

    .venv/bin/python -m benchmarks.bench_prep [--minutes 10] [--input FILE] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from shared.synth import ORGAN, VIOLIN, TimeMap, accompaniment, melody, render_notes


def synthesise(path: Path, minutes: float, sr: int = 44100) -> None:
    bpm = 100.0
    beats_needed = minutes * bpm
    notes = melody(int(beats_needed / 1.1) + 8, seed=7)
    notes = [n for n in notes if n.beat < beats_needed]
    chords = [n for n in accompaniment(notes, seed=7) if n.beat < beats_needed]
    tm = TimeMap.constant(bpm)
    length = minutes * 60.0
    solo = render_notes(notes, tm, sr, VIOLIN, vibrato_cents=10.0, length_s=length, seed=1)
    acc = render_notes(chords, tm, sr, ORGAN, gain=0.12, length_s=length, seed=2)
    rng = np.random.default_rng(3)
    hiss = rng.normal(0, 3e-4, (len(solo), 2)).astype(np.float32)  # a real recording's noise floor
    stereo = np.stack([0.9 * solo + 1.1 * acc, 1.1 * solo + 0.9 * acc], axis=1) + hiss
    sf.write(path, stereo / max(1.0, float(np.abs(stereo).max()) / 0.9), sr, subtype="PCM_16")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--input", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    prep = Path(sys.executable).with_name("prep")
    with tempfile.TemporaryDirectory() as tmp:
        src = args.input
        if src is None:
            src = Path(tmp) / "recording.wav"
            t0 = time.perf_counter()
            synthesise(src, args.minutes)
            print(f"synthesised {args.minutes:g} min in {time.perf_counter() - t0:.1f} s")
        info = sf.info(str(src))
        wav_bytes = info.frames * info.channels * 2 + 44
        out = Path(tmp) / "bundle.h5"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([str(prep), "build", str(src), "-o", str(out), "-q"], check=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result = {
            "input": str(args.input or f"synthetic {args.minutes:g} min"),
            "duration_s": round(info.duration, 2),
            "sample_rate": info.samplerate,
            "channels": info.channels,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "peak_rss_mb": round(after.ru_maxrss / 1024, 1),
            "bundle_mb": round(out.stat().st_size / 1e6, 2),
            "wav16_mb": round(wav_bytes / 1e6, 2),
            "bundle_over_wav": round(out.stat().st_size / wav_bytes, 3),
            "build_seconds_per_audio_minute": round(wall / (info.duration / 60), 2),
            "cores": os.cpu_count(),
        }
    emit(result, args.json)


def emit(result: dict, json_path: Path | None) -> None:
    """Print the figures as JSON, and write them to ``json_path`` if given."""
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        json_path.write_text(text)


if __name__ == "__main__":
    main()
