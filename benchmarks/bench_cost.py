"""The player's CPU against Rubber Band's on the same audio (issue 23).

Runs, in one run and alternating, ``player run X.h5 --input U --output ... --alignment ...``
(file mode, the whole process: start-up included) and Rubber Band's R2 engine
(``rubberband -2 -D <U's duration> X out.wav``: stretching the same recording to the same
length, which is all Rubber Band does), each ``--runs`` times, and prints the median CPU
seconds (user + system of the child process) of each and their ratio (and each run's own
ratio, ``ratio_runs``: the spread this host's drift leaves). Also printed: the
player's start-up (CPU seconds of a run on the first half second of U), its run-loop
real-time factor and its per-stage milliseconds per 20-ms block (from the timing file the
player writes beside the alignment).

With a case folder (``X.flac``/``X.wav`` and ``U.flac``/``U.wav``, e.g. a corpus case) that
case is used; with several, their recordings are joined into one recording and their takes
into one take, in the order given and with :data:`GAP_S` of silence between pieces in both
(a whole programme played through: the start-up is then spread over minutes, as on a whole
concerto); without one a 1-minute duet is synthesised and its bundle built. Rubber Band
comes from Debian's ``rubberband-cli``.

    .venv/bin/python -m benchmarks.bench_cost [CASE_DIR ...] [--runs 5] [--json out.json] [--baseline DIR]

With ``--baseline DIR`` (a checkout of another revision, e.g. ``git worktree add DIR REV``)
that tree's player runs the same take too, alternating with this one (this host's speed
drifts by tens of percent between minutes: only interleaved runs compare), and the result
adds its CPU seconds, its start-up, its run-loop real-time factor and this tree's ratio to each.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

from benchmarks.bench_player import solo_take
from benchmarks.bench_prep import synthesise

#: Seconds of silence between the pieces of a joined recording (and between their takes).
GAP_S = 2.0


def join_cases(cases: list[Path], x_out: Path, u_out: Path) -> None:
    """Join the cases' recordings into ``x_out`` and their takes into ``u_out`` (WAV, float),
    in order, :data:`GAP_S` of silence after each piece but the last. Every case's X must
    share one sample rate and channel count, and so must every U."""
    for stem, out in (("X", x_out), ("U", u_out)):
        parts, rate, channels = [], None, None
        for k, case in enumerate(cases):
            audio, sr = sf.read(str(find_audio(case, stem)), dtype="float32", always_2d=True)
            if rate is None:
                rate, channels = sr, audio.shape[1]
            elif (sr, audio.shape[1]) != (rate, channels):
                raise SystemExit(f"bench_cost: {case}'s {stem} is {sr} Hz x {audio.shape[1]}, "
                                 f"the first case's {rate} Hz x {channels}: cannot join them")
            if k:
                parts.append(np.zeros((int(GAP_S * rate), channels), dtype=np.float32))
            parts.append(audio)
        sf.write(str(out), np.concatenate(parts), rate, subtype="FLOAT")


def child_cpu_s(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> float:
    """CPU seconds (user + system) that ``cmd`` spent, run to completion as a child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def find_audio(case: Path, stem: str) -> Path:
    for ext in (".flac", ".wav"):
        if (case / f"{stem}{ext}").exists():
            return case / f"{stem}{ext}"
    raise SystemExit(f"bench_cost: no {stem}.flac or {stem}.wav in {case}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cases", type=Path, nargs="*",
                    help="folder with X and U audio; several: joined into one (default: a synthesised duet)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--baseline", type=Path, help="a checkout of another revision whose player runs alternately")
    args = ap.parse_args()
    args.cases = [case.resolve() for case in args.cases]  # (the baseline's player runs in its own folder)
    if args.baseline is not None and not (args.baseline / "player" / "cli.py").is_file():
        raise SystemExit(f"bench_cost: {args.baseline} is not a checkout of this project (no player/cli.py)")
    rubberband = shutil.which("rubberband")
    if rubberband is None:
        raise SystemExit("bench_cost: Rubber Band not found: install it with 'apt install rubberband-cli'")
    # start-up as installed: with its modules' bytecode compiled (pip does it on install; an
    # editable checkout where PYTHONDONTWRITEBYTECODE is set would compile them at every start)
    for tree in [Path(__file__).resolve().parents[1], args.baseline]:
        if tree is not None:
            for package in ("shared", "player", "prep"):
                compileall.compile_dir(tree / package, quiet=1)
            if (tree / "shared" / "kernels.py").is_file():  # its kernels compiled ahead of time, as installed
                subprocess.run([sys.executable, "-m", "shared.kernels"], cwd=tree, check=False,
                               env={**os.environ, "PYTHONPATH": str(tree.resolve())})
    bindir = Path(sys.executable).parent
    prep, player = str(bindir / "prep"), str(bindir / "player")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if not args.cases:
            x_path, u_path = tmp / "X.wav", tmp / "U.wav"
            synthesise(x_path, 1.0)
            sf.write(u_path, solo_take(60.0), 44100, subtype="PCM_16")
        elif len(args.cases) == 1:
            x_path, u_path = find_audio(args.cases[0], "X"), find_audio(args.cases[0], "U")
        else:
            x_path, u_path = tmp / "X.wav", tmp / "U.wav"
            join_cases(args.cases, x_path, u_path)
        bundle = tmp / "X.h5"
        subprocess.run([prep, "build", str(x_path), "-o", str(bundle), "-q"], check=True)
        u_info = sf.info(str(u_path))
        u_s = u_info.frames / u_info.samplerate
        short = tmp / "first.wav"
        u, sr = sf.read(str(u_path), frames=int(0.5 * u_info.samplerate), dtype="float32")
        sf.write(short, u, sr)
        alignment = tmp / "path.csv"
        play = [player, "run", str(bundle), "--input", str(u_path), "--output", str(tmp / "out.wav"),
                "--alignment", str(alignment), "--force", "-q"]
        start = [player, "run", str(bundle), "--input", str(short), "--output", str(tmp / "first_out.wav"),
                 "--force", "-q"]
        stretch = [rubberband, "-2", "-q", "-D", f"{u_s:.6f}", str(x_path), str(tmp / "rb.wav")]
        # the baseline's player from its own tree (its modules first on the path)
        base_play = [sys.executable, "-c", "import sys; from player.cli import main; sys.argv[0] = 'player'; main()",
                     *play[1:]]
        base_start = [*base_play[:3], *start[1:]]
        base_env = {**os.environ, "PYTHONPATH": str(args.baseline.resolve())} if args.baseline is not None else None
        player_s, rb_s, start_s, loop_rtf, per_stage, base_s, base_rtf = [], [], [], [], [], [], []
        base_start_s = []
        timing_path = alignment.with_name(alignment.name + ".timing.json")
        for _ in range(max(1, args.runs)):  # alternating, so that a noisy spell hits both
            player_s.append(child_cpu_s(play))
            timing = json.loads(timing_path.read_text())
            loop_rtf.append(timing["rtf"])
            per_stage.append(timing["per_frame_ms"])
            rb_s.append(child_cpu_s(stretch))
            start_s.append(child_cpu_s(start))
            if args.baseline is not None:
                base_s.append(child_cpu_s(base_play, cwd=args.baseline, env=base_env))
                base_rtf.append(json.loads(timing_path.read_text())["rtf"])
                base_start_s.append(child_cpu_s(base_start, cwd=args.baseline, env=base_env))
    result = {
        "case": " + ".join(str(c) for c in args.cases) if args.cases else "synthesised 1-minute duet",
        "u_seconds": round(u_s, 2),
        "runs": len(player_s),
        "player_cpu_s": round(statistics.median(player_s), 3),
        "rubberband_r2_cpu_s": round(statistics.median(rb_s), 3),
        "ratio": round(statistics.median(player_s) / statistics.median(rb_s), 2),
        # each run's own (its two processes ran one after the other): the spread this host's drift leaves
        "ratio_runs": [round(p / r, 2) for p, r in zip(player_s, rb_s, strict=True)],
        "player_startup_cpu_s": round(statistics.median(start_s), 3),
        "run_loop_rtf": round(statistics.median(loop_rtf), 4),
        "rtf_including_startup": round(statistics.median(player_s) / u_s, 4),
        "per_block_ms": {k: round(statistics.median(p[k] for p in per_stage), 3) for k in per_stage[0]},
    }
    if base_s:
        result["baseline"] = str(args.baseline)
        result["baseline_cpu_s"] = round(statistics.median(base_s), 3)
        result["baseline_run_loop_rtf"] = round(statistics.median(base_rtf), 4)
        result["baseline_startup_cpu_s"] = round(statistics.median(base_start_s), 3)
        result["cpu_vs_baseline"] = round(statistics.median(player_s) / statistics.median(base_s), 3)
        result["startup_vs_baseline"] = round(statistics.median(start_s) / statistics.median(base_start_s), 3)
        result["run_loop_vs_baseline"] = round(statistics.median(loop_rtf) / statistics.median(base_rtf), 3)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
