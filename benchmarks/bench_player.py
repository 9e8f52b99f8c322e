"""Benchmark of the player: per-frame cost vs piece length (follower, search, separation,
vocoder), the real-time factor of `player run` in file mode with the per-stage split, the
algorithmic latency and the player's peak memory on the long bundle.

It synthesises recordings of 1 and 40 minutes (5 detune steps), builds their bundles, and
follows the same 60-second solo take with both (starting mid-piece in the long one),
alternately, ``--runs`` times (per-field medians; the ratio is the median of the runs'),
so the per-frame cost is compared on identical input. Reported as ratios and per-frame
milliseconds, never as assertions.

    .venv/bin/python -m benchmarks.bench_player [--long-minutes 40] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.bench_prep import synthesise
from player.config import EngineConfig
from player.engine import Engine
from shared.bundle import load_bundle
from shared.synth import VIOLIN, TimeMap, melody, render_notes


def solo_take(seconds: float, sr: int = 44100) -> np.ndarray:
    notes = melody(int(seconds * 100 / 60 / 1.1) + 4, seed=7)
    tm = TimeMap.constant(100.0 * 1.07)
    return render_notes(notes, tm, sr, VIOLIN, vibrato_cents=12.0, length_s=seconds, seed=5)


def follow_cost(bundle_path: Path, u: np.ndarray, sr: int, start_s: float) -> dict:
    with load_bundle(bundle_path, spectra=False) as b:
        engine = Engine(b, sr, EngineConfig(start_s=start_s))
        block = int(round(b.params.fine_period_s * sr))
        engine.process(np.zeros(block, np.float32))  # warm-up
        for k in engine.stats.seconds:
            engine.stats.seconds[k] = 0.0
        frames0 = engine.stats.frames
        cpu0 = time.process_time()
        for i in range(0, len(u) - block + 1, block):
            engine.process(u[i:i + block])
        cpu = time.process_time() - cpu0
        frames = engine.stats.frames - frames0
        per_frame = {k: 1000 * v / frames for k, v in engine.stats.seconds.items()}
        return {
            "states": b.n_states,
            "frames": frames,
            "rtf": round(cpu / (len(u) / sr), 4),
            "follower_ms_per_frame": round(per_frame["follower"], 4),
            "search_ms_per_frame": round(per_frame["search"], 4),
            "analysis_ms_per_frame": round(per_frame["analysis"], 4),
            "separation_ms_per_frame": round(per_frame["separation"], 4),
            "vocoder_ms_per_frame": round(per_frame["vocoder"], 4),
            "tracking_ms_per_frame": round(per_frame["follower"] + per_frame["search"], 4),
            # input to output: the one block the engine buffers (the vocoder reads X ahead)
            "algorithmic_latency_ms": round(1000 * block / sr, 1),
        }


def median_fields(runs: list[dict]) -> dict:
    """The per-field median of several :func:`follow_cost` results (counts from the first)."""
    return {k: (v if isinstance(v, int) else round(float(np.median([r[k] for r in runs])), 4))
            for k, v in runs[0].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long-minutes", type=float, default=40.0)
    ap.add_argument("--take-seconds", type=float, default=60.0)
    ap.add_argument("--runs", type=int, default=3, help="runs of each bundle, alternating (medians reported)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.runs < 1:
        raise SystemExit("--runs must be at least 1")
    prep = Path(sys.executable).with_name("prep")
    import subprocess

    results = {}
    u = solo_take(args.take_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        bundles = {}
        for name, minutes in (("short", 1.0), ("long", args.long_minutes)):
            wav, h5 = Path(tmp) / f"{name}.wav", Path(tmp) / f"{name}.h5"
            synthesise(wav, minutes)
            subprocess.run([str(prep), "build", str(wav), "-o", str(h5), "-q"], check=True)
            wav.unlink()
            bundles[name] = (h5, minutes, 0.0 if name == "short" else minutes * 60 / 2)
        # the two bundles alternate, so that a slow spell of the machine weighs on both
        runs = {name: [] for name in bundles}
        for _ in range(args.runs):
            for name, (h5, _, start) in bundles.items():
                runs[name].append(follow_cost(h5, u, 44100, start))
        for name, (h5, minutes, start) in bundles.items():
            results[name] = {"minutes": minutes, **median_fields(runs[name])}
            print(name, json.dumps(results[name]), flush=True)
            if name == "long":
                # file mode end to end, as `player run` does it
                u_path = Path(tmp) / "take.wav"
                sf.write(u_path, u, 44100, subtype="PCM_16")
                t0 = time.perf_counter()
                player = Path(sys.executable).with_name("player")
                cmd = [str(player), "run", str(h5), "--input", str(u_path), "--output", str(Path(tmp) / "out.wav"),
                       "--alignment", str(Path(tmp) / "path.csv"), "--start", str(start), "-q"]
                # a fresh parent, so the peak memory is the player's alone (not the prep builds')
                probe = ("import resource, subprocess, sys, json; subprocess.run(sys.argv[1:], check=True); "
                         "r = resource.getrusage(resource.RUSAGE_CHILDREN); "
                         "print(json.dumps([r.ru_utime + r.ru_stime, r.ru_maxrss]))")
                out = subprocess.run([sys.executable, "-c", probe, *cmd], check=True, capture_output=True, text=True)
                cpu, maxrss_kb = json.loads(out.stdout.strip().splitlines()[-1])
                timing = json.loads((Path(tmp) / "path.csv.timing.json").read_text())
                results["file_mode_long"] = {
                    "wall_s": round(time.perf_counter() - t0, 2),
                    "process_cpu_s": round(cpu, 2),
                    "rtf_including_startup": round(cpu / args.take_seconds, 4),
                    "rtf_run_loop": timing["rtf"],
                    "per_frame_ms": timing["per_frame_ms"],
                    "player_peak_rss_mb": round(maxrss_kb / 1024, 1),
                }
                print("file_mode_long", json.dumps(results["file_mode_long"]), flush=True)
    short, long = results["short"], results["long"]
    results["long_over_short_tracking_cost"] = round(long["tracking_ms_per_frame"] / short["tracking_ms_per_frame"], 3)
    ratios = [lg["rtf"] / sh["rtf"] for sh, lg in zip(runs["short"], runs["long"], strict=True)]
    results["long_over_short_rtf"] = round(float(np.median(ratios)), 3)
    results["long_over_short_rtf_runs"] = [round(r, 3) for r in ratios]
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
