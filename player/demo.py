"""``player demo``: the whole chain on a small example, no audio hardware needed.

The example is synthesised deterministically (nothing is downloaded or shipped): a
24-note duet, violin-like solo over organ-like chords, as the "recording" X (stereo,
44.1 kHz), and a separate solo take U by another instrument (flute-like), 30 cents sharp,
with its own tempo curve (0.8x to 1.15x of the recording's), a pause and room noise.
The demo prepares X's bundle by running the ``prep`` tool (the player never loads the
analysis code), follows U in file mode (what ``player run --input`` does) and writes what
the speakers would play, the path and a report picture beside the inputs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from player.filemode import run_file
from player.report import write_report
from shared.alignment import causal_errors
from shared.bundle import load_bundle
from shared.errors import KaraokeError, OutputError, first_line
from shared.synth import FLUTE, VIOLIN, make_case

DEMO_FILES = ("X.wav", "U.wav", "truth.csv", "X.h5", "out.wav", "path.csv", "report.png")
DETUNE_CENTS = 30.0


@dataclass
class DemoResult:
    """Where the demo wrote its files and how well it followed.

    Attributes:
        folder: the output folder.
        pct_within_100ms: % of the take's onsets whose causal position error is within 100 ms.
        median_error_ms: median absolute error at the onsets (ms).
        rtf: real-time factor of the player (CPU seconds per second of U).
    """

    folder: Path
    pct_within_100ms: float
    median_error_ms: float
    rtf: float


def demo_case():
    """The demo's recordings (deterministic)."""
    return make_case(
        n_notes=24, seed=7, sr=44100, bpm_x=96.0,
        tempo_u=lambda beat: 96.0 * (0.975 + 0.175 * np.sin(2 * np.pi * beat / 16.0)),
        pauses={12.0: 0.6}, detune_cents=DETUNE_CENTS, solo_x=VIOLIN, solo_u=FLUTE, snr_db=35.0,
    )


def run_demo(folder: str | Path, *, force: bool = False, say: Callable[[str], None] = lambda _: None) -> DemoResult:
    """Synthesise, prepare, follow and report into ``folder``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder")
    taken = [name for name in DEMO_FILES if (folder / name).exists()]
    if taken and not force:
        raise OutputError(f"{folder} already holds a demo ({', '.join(taken)}); use --force to replace it")
    folder.mkdir(parents=True, exist_ok=True)
    say("synthesising the example recording and a solo take")
    case = demo_case()
    sf.write(folder / "X.wav", case.x, case.sr, subtype="PCM_16")
    sf.write(folder / "U.wav", case.u, case.sr, subtype="PCM_16")
    truth = np.column_stack([case.onsets_u, case.onsets_x])
    np.savetxt(folder / "truth.csv", truth, delimiter=",", header="u_time_s,x_time_s", comments="", fmt="%.6f")
    say("preparing the recording (prep build)")
    run_prep(["build", str(folder / "X.wav"), "-o", str(folder / "X.h5"), "--force", "--quiet"])
    say("following the take (player run --input)")
    with load_bundle(folder / "X.h5", spectra=False) as bundle:
        result = run_file(bundle, folder / "U.wav", output_path=folder / "out.wav",
                          alignment_path=folder / "path.csv", force=True, record=True)
    write_report(result.trace, folder / "report.png", truth=truth, force=True,
                 title=f"demo: flute take, {DETUNE_CENTS:+.0f} cents, own tempo, following a violin recording")
    err = np.abs(causal_errors(result.trace.path, truth))
    return DemoResult(folder, float(100 * np.mean(err <= 0.1)), float(1000 * np.median(err)), result.rtf)


def run_prep(args: list[str]) -> None:
    """Run the ``prep`` tool (this Python's ``-m prep``) with ``args``; its one-line error
    becomes ours."""
    done = subprocess.run([sys.executable, "-m", "prep", *args], capture_output=True, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise KaraokeError(f"prep {args[0]} failed: {first_line(lines[-1] if lines else done.returncode)}")
