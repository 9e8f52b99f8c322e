"""``prep``: analyse a recording once, ahead of rehearsal, into a bundle; inspect; diff."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from prep.compare import diff_bundles
from prep.pipeline import STAGES, BuildOptions, build_bundle
from shared.bundle import load_bundle
from shared.cli_support import fail, make_app, one_line_errors
from shared.pgnmf import GammaPriors
from shared.spectral import AnalysisParams

app = make_app("Prepare recordings for the follow-me karaoke player.")
err_console = Console(stderr=True)

STAGE_LABELS = {
    "load": "Loading audio",
    "analyse": "Spectral analysis",
    "templates": "Detuned templates",
    "nmf": "Learning NMF bases",
    "write": "Writing bundle",
}


def _detune_grid(range_cents: float, steps: int) -> tuple[float, ...]:
    if steps < 1 or steps % 2 == 0:
        raise fail("--detune-steps must be an odd number >= 1 (the grid is symmetric around 0)")
    if not 0 <= range_cents <= 200:
        raise fail("--detune-range must be within 0..200 cents")
    if steps == 1:
        return (0.0,)
    return tuple(float(c) for c in np.linspace(-range_cents, range_cents, steps))


class _Bars:
    """One rich progress bar per build stage."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(STAGE_LABELS.get(stage, stage), total=max(total, 1))
        self.progress.update(self.tasks[stage], completed=done, total=max(total, 1))


@app.command()
@one_line_errors
def build(
    source: Path = typer.Argument(..., help="Recording to prepare (WAV, FLAC, OGG or MP3; any rate and channels)."),
    output: Path = typer.Option(..., "-o", "--output", help="Bundle to write (.h5)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing bundle."),
    sr: int = typer.Option(AnalysisParams.sr, help="Analysis sample rate (Hz)."),
    n_fft: int = typer.Option(AnalysisParams.n_fft, help="Analysis window length (samples at --sr)."),
    fine_hop: int = typer.Option(AnalysisParams.fine_hop, help="Live analysis hop (samples at --sr), ~50 frames/s."),
    coarse_hop: int = typer.Option(AnalysisParams.coarse_hop, help="State hop of the recording (samples at --sr), ~10 states/s."),
    fmin: float = typer.Option(AnalysisParams.fmin_hz, help="Lowest frequency of the observation band (Hz)."),
    fmax: float = typer.Option(AnalysisParams.fmax_hz, help="Highest frequency of the observation band (Hz)."),
    detune_range: float = typer.Option(50.0, help="Largest detune covered by the templates (cents)."),
    detune_steps: int = typer.Option(5, help="Number of detuned template variants (odd)."),
    components: int = typer.Option(32, help="Number of accompaniment NMF bases."),
    nmf_iter: int = typer.Option(100, help="VB iterations for learning the bases."),
    seed: int = typer.Option(0, help="Seed of the NMF initialisation."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars or summary."),
) -> None:
    """Analyse SOURCE into a bundle the player loads."""
    try:
        params = AnalysisParams(sr=sr, n_fft=n_fft, fine_hop=fine_hop, coarse_hop=coarse_hop, fmin_hz=fmin,
                                fmax_hz=fmax, detune_cents=_detune_grid(detune_range, detune_steps))
        options = BuildOptions(params=params, n_components=components, nmf_iter=nmf_iter, seed=seed,
                               priors=GammaPriors(a=1.0, b=1.0, c=0.5, d=1.0))
    except ValueError as exc:
        raise fail(str(exc)) from None
    if quiet:
        summary = build_bundle(source, output, options, force=force)
    else:
        columns = (TextColumn("{task.description:<20}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as progress:
            summary = build_bundle(source, output, options, force=force, progress=_Bars(progress))
    if not quiet:
        print(
            f"{summary.output}: {summary.duration_s:.1f} s, {summary.sample_rate} Hz x{summary.channels}, "
            f"{summary.n_states} states, {summary.n_detune} detune steps, {summary.n_components} NMF bases, "
            f"{summary.bundle_bytes / 1e6:.1f} MB, built in {summary.seconds:.1f} s"
        )


def bundle_summary(path: Path) -> dict:
    """A JSON-ready description of a bundle (validated first)."""
    with load_bundle(path) as b:
        p = b.params
        return {
            "path": str(path),
            "format_version": int(b.attrs["format_version"]),
            "created_utc": str(b.attrs.get("created_utc", "")),
            "tool_version": str(b.attrs.get("tool_version", "")),
            "source": {"name": b.source.name, "sha256": b.source.sha256, "duration_s": round(b.source.duration_s, 3)},
            "audio": {"sample_rate": b.audio.sr, "channels": b.audio.channels, "samples": b.audio.n_samples,
                      "codec": b.audio.codec},
            "states": b.n_states,
            "state_rate_hz": round(1.0 / p.coarse_period_s, 3),
            "live_frame_rate_hz": round(1.0 / p.fine_period_s, 3),
            "detune_cents": list(p.detune_cents),
            "observation_bins": p.n_obs_bins,
            "nmf_components": int(b.nmf.w_shape.shape[0]),
            "nmf_priors": b.nmf.priors,
            "params": p.to_dict(),
            "bytes": path.stat().st_size,
        }


@app.command()
@one_line_errors
def inspect(
    bundle: Path = typer.Argument(..., help="Bundle to describe."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for scripts."),
) -> None:
    """Print a readable summary of a bundle."""
    info = bundle_summary(bundle)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"{bundle.name}", show_header=False)
    minutes, seconds = divmod(info["source"]["duration_s"], 60)
    rows = [
        ("source", f"{info['source']['name']} ({int(minutes)}:{seconds:04.1f})"),
        ("sha256", info["source"]["sha256"][:16] + "..."),
        ("audio", f"{info['audio']['sample_rate']} Hz, {info['audio']['channels']} ch, {info['audio']['codec']}"),
        ("states", f"{info['states']} at {info['state_rate_hz']:g}/s (live frames {info['live_frame_rate_hz']:g}/s)"),
        ("detune", ", ".join(f"{c:+g}" for c in info["detune_cents"]) + " cents"),
        ("observation", f"{info['observation_bins']} bins, {info['params']['fmin_hz']:g}-{info['params']['fmax_hz']:g} Hz"),
        ("NMF bases", f"{info['nmf_components']} (c={info['nmf_priors']['c']:g})"),
        ("size", f"{info['bytes'] / 1e6:.1f} MB"),
        ("format", f"v{info['format_version']}, made {info['created_utc']} by {info['tool_version']}"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)


@app.command()
@one_line_errors
def diff(
    a: Path = typer.Argument(..., help="First bundle."),
    b: Path = typer.Argument(..., help="Second bundle."),
    rtol: float = typer.Option(1e-5, help="Relative tolerance for floating-point data."),
    atol: float = typer.Option(1e-6, help="Absolute tolerance for floating-point data."),
) -> None:
    """Compare two bundles' contents: exit 0 if equivalent, 1 if they differ, 2 on error."""
    result = diff_bundles(a, b, rtol=rtol, atol=atol)
    for line in result.volatile:
        print(f"  (volatile, ignored) {line}")
    for line in result.differences:
        print(f"  {line}")
    if result.identical:
        print("bundles are equivalent")
        raise typer.Exit(0)
    print(f"bundles differ in {len(result.differences)} place(s)")
    raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
