"""``player``: follow a live (or recorded) solo with a prepared bundle."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from player.engine import EngineConfig
from player.filemode import run_file
from shared.bundle import load_bundle
from shared.cli_support import fail, make_app, one_line_errors

app = make_app("Play a prepared recording along with you, following your tempo, solo removed.")


@app.command()
@one_line_errors
def run(
    bundle: Path = typer.Argument(..., help="Bundle made by 'prep build'."),
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Read the solo from this file instead of a microphone."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="With --input: write what the speakers would play."),
    alignment: Optional[Path] = typer.Option(None, "--alignment", "-a", help="With --input: write the path (u_time_s,x_time_s)."),
    start: float = typer.Option(0.0, "--start", help="Where in the recording you start (seconds)."),
    no_search: bool = typer.Option(False, "--no-search", help="Do not look for you elsewhere in the piece."),
    blocksize: Optional[int] = typer.Option(None, "--blocksize", help="Samples per block (default: ~20 ms)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No summary."),
) -> None:
    """Follow the soloist and play the recording along."""
    if blocksize is not None and not 16 <= blocksize <= 1 << 16:
        raise fail("--blocksize must be within 16..65536 samples")
    with load_bundle(bundle) as b:
        if not 0.0 <= start < b.duration_s:
            raise fail(f"--start {start:g} s is outside the recording (0..{b.duration_s:.1f} s)")
        config = EngineConfig(start_s=start, search=not no_search)
        if input is None:
            raise fail("live audio is not available yet; use --input FILE")
        result = run_file(b, input, output_path=output, alignment_path=alignment, config=config,
                          blocksize=blocksize, force=force)
    if not quiet:
        print(f"followed {result.u_duration_s:.1f} s of input in {result.wall_s:.1f} s "
              f"(real-time factor {result.rtf:.3f}, {result.counters['jumps']} relocations)", file=sys.stderr)


@app.callback()
def _root() -> None:
    """Commands of the player."""


def main() -> None:
    app()
