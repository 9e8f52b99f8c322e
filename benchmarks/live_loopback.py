"""Live mode through a real audio server: JACK's dummy driver, the player's PortAudio stream,
and a JACK client that plays a take into the player and records what it plays.

For each server rate and period (and engine block size), on each case: the latency the
player assumes against the one measured in the loop (from its ``--record``ed take and
output, the device's own latency added: nothing in the loop is a sound card), the audible
offset of the live output against file mode's ``out.wav`` (median over the accompaniment's
onsets where both play the same thing, sample-precise), and the share of the
accompaniment's onsets heard within 50/100 ms of the ideal karaoke (``acc_on_U``). File
mode is run twice: on the take as it was fed (``file``), and on the take the live engine
recorded (``replay``: the same blocks, so the same path, to the microsecond; the take as
fed is cut into blocks at another phase, and the follower's path differs by up to a
tenth of a second in places, which is not the live path's doing). ``--soak MINUTES`` adds
one long live run (the take repeated) at the first rate and period: xruns, dropped, late
and skipped blocks, and the worker's CPU share.

    .venv/bin/python -m benchmarks.live_loopback ../shared/corpus [--cases dev01_mozart_k80_1 ...]
        [--rates 44100 48000] [--periods 256 1024] [--blocksizes 0 256] [--soak 10] [--json out.json]

(``--blocksizes 0``: the player's default, about 20 ms.) It needs jackd2, libportaudio2 and
JACK-Client (``.ci/run`` installs them); case folders hold X.flac, U.flac and acc_on_U.flac.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from benchmarks.follow_eval import case_bundle
from tests.jack_harness import (
    at_rate,
    jack_missing,
    jack_server,
    live_figures,
    live_run,
    player_exe,
)


def take_at(case: Path, rate: int) -> np.ndarray:
    """The case's take, mono float32 at ``rate``."""
    u, sr = sf.read(case / "U.flac", dtype="float32", always_2d=True)
    u = u.mean(axis=1)
    return u if sr == rate else soxr.resample(u, sr, rate).astype(np.float32)


def measure(case: Path, bundle: Path, rate: int, period: int, blocksize: int, work: Path) -> dict:
    take = take_at(case, rate)
    folder = work / f"{case.name}_{rate}_{period}_{blocksize}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sf.write(folder / "U.wav", take, rate, subtype="FLOAT")
    block_args = ["--blocksize", str(blocksize)] if blocksize else []
    subprocess.run([player_exe(), "run", str(bundle), "--input", str(folder / "U.wav"), "--output",
                    str(folder / "file.wav"), "-q", *block_args], check=True)
    with jack_server(rate, period) as server:
        looped, delay = live_run(server, bundle, take, folder / "rec", block_args)
    n = len(take)
    file_out = at_rate(folder / "file.wav", rate, n)
    ideal = at_rate(case / "acc_on_U.flac", rate, n)
    figures = live_figures(bundle, take, looped, delay, folder / "rec", block_args, ideal, {"file": file_out})
    return {"case": case.name, "rate": rate, "period": period, **figures}


def soak(case: Path, bundle: Path, rate: int, period: int, minutes: float, work: Path) -> dict:
    """One long live run: the take repeated for ``minutes``; the session's counters."""
    once = take_at(case, rate)
    take = np.tile(once, int(np.ceil(minutes * 60 * rate / once.size)))[: int(minutes * 60 * rate)]
    folder = work / f"soak_{rate}_{period}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    with jack_server(rate, period) as server:
        live_run(server, bundle, take, folder / "rec", [])
    timing = json.loads((folder / "rec" / "timing.json").read_text())
    keys = ("u_duration_s", "callbacks", "xruns", "dropped_blocks", "late_blocks", "skipped_blocks", "cpu_share",
            "assumed_latency_s")
    return {"minutes": minutes, "rate": rate, "period": period, **{k: timing[k] for k in keys}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", type=Path, help="a case folder, or a folder of them")
    ap.add_argument("--cases", dest="names", nargs="*", help="only these cases")
    ap.add_argument("--rates", nargs="*", type=int, default=[44100, 48000])
    ap.add_argument("--periods", nargs="*", type=int, default=[256, 1024])
    ap.add_argument("--blocksizes", nargs="*", type=int, default=[0], help="engine blocks (0: the default)")
    ap.add_argument("--soak", type=float, default=0.0, help="minutes of one long live run")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "live_loopback")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    missing = jack_missing()
    if missing:
        sys.exit(f"cannot run: {missing}")
    cases = [args.cases] if (args.cases / "U.flac").exists() else sorted(c for c in args.cases.iterdir()
                                                                          if (c / "U.flac").exists())
    cases = [c for c in cases if not args.names or c.name in args.names]
    rows = []
    for case in cases:
        bundle = case_bundle(case, args.work / "bundles")
        for rate in args.rates:
            for period in args.periods:
                for blocksize in args.blocksizes:
                    rows.append(measure(case, bundle, rate, period, blocksize, args.work))
                    print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    for key in ("offset_file_ms", "offset_replay_ms", "aud100_live", "aud100_file", "aud100_replay"):
        print(f"median {key}: {np.median([r[key] for r in rows]):.1f}")
    print("max |assumed - measured| (ms):", max(abs(r["assumed_ms"] - r["measured_ms"]) for r in rows))
    result = {"runs": rows}
    if args.soak > 0:
        result["soak"] = soak(cases[0], case_bundle(cases[0], args.work / "bundles"), args.rates[0], args.periods[0],
                              args.soak, args.work)
        print("soak", json.dumps(result["soak"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
