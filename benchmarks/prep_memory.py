"""Benchmark of ``prep build``'s memory on a long recording: peak RSS and wall time.

It synthesises a long stereo 44.1 kHz 16-bit WAV on disk block by block (a few minutes of
a synthetic harmonic melody over chords, repeated; or all digital silence with
``--silent``), so the benchmark itself needs little memory, then runs the installed
``prep`` console script on it as a child process and reports the child's peak resident
memory (``ru_maxrss`` from ``os.wait4``, exact, plus psutil polling as a cross-check) and
its wall time. A build of music must succeed; a silent recording must be refused (exit 2,
one line on stderr) and the figures say how fast and in how little memory.

    .venv/bin/python -m benchmarks.prep_memory [--hours 3] [--silent] [--keep DIR] [--check] [--json out.json]

``--keep DIR`` keeps the synthesised recording there and reuses it; ``--check`` also loads
the bundle with ``prep inspect --json`` (the player's validating loader) and reports it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.bench_prep import emit
from shared.synth import ORGAN, VIOLIN, TimeMap, accompaniment, melody, render_notes

SR = 44100
#: Length of the synthetic passage that is repeated (seconds).
PASSAGE_S = 180.0
#: Frames written to the WAV at a time.
WRITE_BLOCK = 1 << 20


def passage(seconds: float, sr: int = SR) -> np.ndarray:
    """A deterministic stereo passage, float32 ``(round(seconds * sr), 2)``: a violin-like
    melody with vibrato over organ-like chords and a faint noise floor, peak 0.9."""
    bpm = 100.0
    beats = seconds / 60.0 * bpm
    notes = [n for n in melody(int(beats / 1.1) + 8, seed=7) if n.beat < beats]
    chords = [n for n in accompaniment(notes, seed=7) if n.beat < beats]
    tm = TimeMap.constant(bpm)
    solo = render_notes(notes, tm, sr, VIOLIN, vibrato_cents=10.0, length_s=seconds, seed=1)
    acc = render_notes(chords, tm, sr, ORGAN, gain=0.12, length_s=seconds, seed=2)
    hiss = np.random.default_rng(3).normal(0, 3e-4, (len(solo), 2)).astype(np.float32)
    stereo = np.stack([0.9 * solo + 1.1 * acc, 1.1 * solo + 0.9 * acc], axis=1) + hiss
    return (stereo * (0.9 / float(np.abs(stereo).max()))).astype(np.float32)


def synthesise(path: Path, hours: float, silent: bool, sr: int = SR) -> None:
    """Write ``hours`` of stereo 16-bit audio to ``path`` in blocks of ``WRITE_BLOCK``
    frames (the passage repeated, or zeros): memory stays that of one passage."""
    total = int(round(hours * 3600 * sr))
    source = np.zeros((WRITE_BLOCK, 2), np.float32) if silent else passage(min(PASSAGE_S, hours * 3600), sr)
    with sf.SoundFile(path, "w", samplerate=sr, channels=2, subtype="PCM_16", format="WAV") as out:
        written = 0
        while written < total:
            pos = written % source.shape[0]
            n = min(WRITE_BLOCK, total - written, source.shape[0] - pos)
            out.write(source[pos:pos + n])
            written += n


def _poll_rss(pid: int, peak: list[int], stop: threading.Event) -> None:
    """Poll the child's RSS every 50 ms into ``peak[0]`` (bytes) until ``stop`` is set."""
    try:
        import psutil
    except ImportError:
        return
    try:
        proc = psutil.Process(pid)
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            stop.wait(0.05)
    except psutil.Error:  # the child has gone
        pass


def run_build(prep: Path, src: Path, out: Path) -> dict:
    """Run ``prep build src -o out -q``; its exit code, wall time (s), peak RSS (MB) and stderr."""
    errors = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(prep), "build", str(src), "-o", str(out), "-q"], stderr=errors)
    polled, stop = [0], threading.Event()
    poller = threading.Thread(target=_poll_rss, args=(proc.pid, polled, stop), daemon=True)
    poller.start()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    errors.seek(0)
    return {
        "exit_code": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "peak_rss_polled_mb": round(polled[0] / 2**20, 1),
        "stderr": errors.read().decode(errors="replace").strip(),
    }


def inspect(prep: Path, bundle: Path) -> dict:
    """Load ``bundle`` as the player would (``prep inspect --json``): its states and the time taken."""
    t0 = time.perf_counter()
    done = subprocess.run([str(prep), "inspect", "--json", str(bundle)], capture_output=True, text=True)
    wall = round(time.perf_counter() - t0, 2)
    if done.returncode != 0:
        return {"inspect_ok": False, "inspect_error": done.stderr.strip()[-300:]}
    info = json.loads(done.stdout)
    return {"inspect_ok": True, "inspect_s": wall, "states": info["states"], "onsets_heard": info["onsets"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=3.0, help="length of the recording (hours)")
    ap.add_argument("--silent", action="store_true", help="all digital silence (prep must refuse it)")
    ap.add_argument("--keep", type=Path, help="folder where the recording is kept and reused between runs")
    ap.add_argument("--check", action="store_true", help="load the bundle afterwards (prep inspect --json)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    prep = Path(sys.executable).with_name("prep")
    with tempfile.TemporaryDirectory(dir=args.keep.parent if args.keep else None) as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        src = folder / f"{'silence' if args.silent else 'music'}-{args.hours:g}h.wav"
        if not src.exists():
            t0 = time.perf_counter()
            synthesise(src, args.hours, args.silent)
            print(f"synthesised {args.hours:g} h in {time.perf_counter() - t0:.1f} s: {src}", flush=True)
        out = Path(tmp) / "bundle.h5"
        result = {"input": f"{'silent' if args.silent else 'music'} {args.hours:g} h stereo {SR} Hz PCM_16",
                  "wav_mb": round(src.stat().st_size / 1e6, 1)}
        result.update(run_build(prep, src, out))
        result["bundle_mb"] = round(out.stat().st_size / 1e6, 2) if out.exists() else None
        if args.check and out.exists():
            result.update(inspect(prep, out))
        result["cores"] = os.cpu_count()
    emit(result, args.json)
    expected_ok = not args.silent
    if (result["exit_code"] == 0) != expected_ok:
        sys.exit(f"unexpected exit code {result['exit_code']}: {result['stderr'][-300:]}")


if __name__ == "__main__":
    main()
