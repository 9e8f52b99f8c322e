"""Benchmark of hostile input (issue 25): fuzzed bundles, interrupted builds, the loader's cost.

Three measurements, each printed as one line of figures:

- ``fuzz``: ``--mutations`` damaged copies of a bundle (90 % of the changes in the bytes
  libhdf5 parses, see ``tests/bundle_fuzz.py``) loaded as the player would: how many
  loaded, were refused, were stopped by the sandbox's deadline (libhdf5 looping), escaped
  as another exception, or were accepted broken; the largest child's peak memory.
- ``kill``: ``prep build`` killed with SIGKILL at ``--moments`` evenly spread moments of
  a build (and SIGTERM, SIGHUP once each): temporary files left in the output folder.
- ``load``: the loader's wall time on a bundle (median of 20), in process and sandboxed.

    .venv/bin/python -m benchmarks.hostile_input [--bundle B.h5] [--mutations 10000] [--moments 10] [--json out.json]

Without ``--bundle`` a 20-second recording is synthesised and built first.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

from benchmarks.bench_batch import synthesise
from shared.bundle import load_bundle
from shared.bundle_check import read_validated
from shared.fileio import staged_outputs
from tests.bundle_fuzz import fuzz
from tests.follow_helpers import tiled_wav

ROOT = Path(__file__).resolve().parents[1]


def build(source: Path, output: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "prep", "build", str(source), "-o", str(output), "-q", "--force"],
                   check=True, cwd=ROOT)
    return time.perf_counter() - t0


def kill_moments(source: Path, work: Path, moments: int, build_s: float) -> dict:
    """Kill builds at evenly spread moments; count what each left behind."""
    left, finished = [], 0
    plan = [(signal.SIGKILL, build_s * (i + 0.5) / moments) for i in range(moments)]
    plan += [(signal.SIGTERM, build_s * 0.6), (signal.SIGHUP, build_s * 0.6)]
    for signum, delay in plan:
        folder = work / f"kill-{signum.name}-{delay:.2f}"
        folder.mkdir()
        output = folder / "x.h5"
        output.write_bytes(b"the old bundle")
        proc = subprocess.Popen([sys.executable, "-m", "prep", "build", str(source), "-o", str(output), "-q",
                                 "--force"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        writing = bool(staged_outputs(proc.pid, folder))
        proc.send_signal(signum)
        proc.wait(timeout=120)
        finished += proc.returncode == 0
        extra = [p.name for p in folder.iterdir() if p.name != "x.h5"]
        intact = output.read_bytes() == b"the old bundle" or _loads(output)
        left.append({"signal": signum.name, "at_s": round(delay, 2), "exit": proc.returncode, "while_writing": writing,
                     "left": extra, "bundle_intact": bool(intact)})
    return {"runs": len(plan), "finished_before_signal": finished,
            "signalled_while_writing": sum(r["while_writing"] for r in left),
            "temporary_files_left": sum(len(r["left"]) for r in left),
            "damaged_bundles": sum(not r["bundle_intact"] for r in left), "runs_detail": left}


def _loads(path: Path) -> bool:
    try:
        load_bundle(path).close()
        return True
    except Exception:  # noqa: BLE001 - a damaged result is what this counts
        return False


def load_cost(bundle: Path, repeats: int = 20) -> dict:
    """Median wall time of loading ``bundle`` in process (as before the sandbox) and sandboxed."""
    def median_ms(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return round(1000 * sorted(times)[len(times) // 2], 2)

    def in_process() -> None:
        with h5py.File(bundle, "r") as f:
            read_validated(f, bundle)

    return {"bundle_mb": round(bundle.stat().st_size / 1e6, 2), "in_process_ms": median_ms(in_process),
            "sandboxed_ms": median_ms(lambda: load_bundle(bundle).close())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="bundle to mutate (default: synthesise and build one)")
    ap.add_argument("--mutations", type=int, default=10000)
    ap.add_argument("--moments", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        work = Path(tmp)
        source = work / "x.wav"
        synthesise(source, 20.0, seed=3)
        built = work / "built.h5"
        build(source, built)
        bundle = args.bundle or built
        figures = {"load": load_cost(bundle)}
        print(f"load: {figures['load']}", flush=True)
        report = fuzz(bundle, work, args.mutations, seed=args.seed)
        figures["fuzz"] = dict(vars(report))
        print(f"fuzz: tried {report.tried}, loaded {report.accepted}, refused {report.refused} "
              f"(of which stopped at the deadline {report.timeouts}), uncaught {report.uncaught}, "
              f"wrongly accepted {report.wrongly_accepted}, largest child {report.child_peak_mb:.0f} MB, "
              f"parent {_self_peak_mb():.0f} MB, {report.seconds:.0f} s; examples {report.examples}", flush=True)
        long_source = tiled_wav(source, work / "long.wav", 300.0)  # 5 minutes: most of a build writes
        figures["kill"] = kill_moments(long_source, work, args.moments, build(long_source, work / "long.h5"))
        k = figures["kill"]
        print(f"kill: {k['runs']} builds of 5 minutes of music signalled ({k['signalled_while_writing']} while "
              f"writing the bundle), {k['finished_before_signal']} finished first, temporary files left "
              f"{k['temporary_files_left']}, damaged bundles {k['damaged_bundles']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))


def _self_peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


if __name__ == "__main__":
    main()
