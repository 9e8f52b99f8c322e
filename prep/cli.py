"""``prep``: analyse a recording once, ahead of rehearsal, into a bundle; inspect; diff."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from prep.batch import BatchError, Job, JobResult, output_dir_requested, plan_jobs, prepare_output_dir, run_batch
from prep.compare import diff_bundles
from prep.pipeline import STAGES, BuildOptions, build_bundle
from prep.plots import check_plot_path, plot_bundle, require_matplotlib
from shared.bundle import load_bundle
from shared.fileio import check_output_path
from shared.cli_support import EXIT_ERROR, EXIT_INTERRUPTED, fail, make_app, one_line_errors
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


def max_jobs() -> int:
    """Largest ``--jobs`` accepted: four per core (more only adds memory and contention)."""
    return (os.cpu_count() or 1) * 4


@app.command()
@one_line_errors
def build(
    sources: list[Path] = typer.Argument(..., help="Recording(s) to prepare (WAV, FLAC, OGG or MP3; any rate and channels).",
                                         show_default=False, metavar="RECORDING"),
    output: str = typer.Option(..., "-o", "--output",
                               help="Bundle to write (.h5); with several recordings (or a path ending in '/'), "
                                    "a folder that receives one <stem>.h5 per recording (created if missing)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing bundles."),
    jobs: int = typer.Option(1, "-j", "--jobs", help="Recordings built in parallel (worker processes, one core each)."),
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
    """Analyse each RECORDING into a bundle the player loads (several at once: -o FOLDER/ --jobs N)."""
    if not 1 <= jobs <= max_jobs():
        raise fail(f"--jobs must be within 1..{max_jobs()} (this machine has {os.cpu_count() or 1} cores)")
    try:
        params = AnalysisParams(sr=sr, n_fft=n_fft, fine_hop=fine_hop, coarse_hop=coarse_hop, fmin_hz=fmin,
                                fmax_hz=fmax, detune_cents=_detune_grid(detune_range, detune_steps))
        options = BuildOptions(params=params, n_components=components, nmf_iter=nmf_iter, seed=seed)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if output_dir_requested(output, len(sources)):
        _build_batch(sources, Path(output), options, force=force, jobs=jobs, quiet=quiet)
        return
    source, output_path = sources[0], Path(output)
    if output_path.is_dir():
        raise fail(f"output path is a directory: {output_path} (to write {output_path / (source.stem + '.h5')} "
                   "inside it, end the path with '/')")
    if quiet:
        summary = build_bundle(source, output_path, options, force=force)
    else:
        columns = (TextColumn("{task.description:<20}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err_console, transient=True) as progress:
            summary = build_bundle(source, output_path, options, force=force, progress=_Bars(progress))
    if not quiet:
        print(
            f"{summary.output}: {summary.duration_s:.1f} s, {summary.sample_rate} Hz x{summary.channels}, "
            f"{summary.n_states} states, {summary.n_detune} detune steps, {summary.n_components} NMF bases, "
            f"{summary.bundle_bytes / 1e6:.1f} MB, built in {summary.seconds:.1f} s"
        )


class _BatchDisplay:
    """The whole batch's progress: one result line per recording as it finishes (stdout),
    plus, when stderr is a terminal, live bars (recordings done / total, and each running
    build's stage). Without a terminal (CI logs) there are only the plain lines."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.done = total, quiet, 0
        self.bars: Progress | None = None
        self.overall = None
        self.rows: dict[int, int] = {}

    def __enter__(self) -> "_BatchDisplay":
        if not self.quiet and err_console.is_terminal:
            columns = (TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
            self.bars = Progress(*columns, console=err_console, transient=True,
                                 redirect_stdout=False, redirect_stderr=False)
            self.bars.start()
            self.overall = self.bars.add_task(f"{self.total} recordings", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self.bars is not None:
            self.bars.stop()

    def _emit(self, line: str) -> None:
        if self.bars is not None and sys.stdout.isatty():
            self.bars.console.print(line, markup=False, highlight=False, soft_wrap=True)  # above the bars
        else:
            print(line, flush=True)

    def started(self, job: Job) -> None:
        if self.bars is not None:
            if job.index in self.rows:  # a retry after a worker died
                self.bars.remove_task(self.rows.pop(job.index))
            self.rows[job.index] = self.bars.add_task(f"  {_shorten(job.source.name, 32)}", total=1.0)

    def progress(self, job: Job, stage: str, done: int, total: int) -> None:
        if self.bars is not None and job.index in self.rows:
            position = STAGES.index(stage) if stage in STAGES else 0
            fraction = (position + min(done, total) / max(total, 1)) / len(STAGES)
            label = STAGE_LABELS.get(stage, stage)
            self.bars.update(self.rows[job.index], completed=fraction,
                             description=f"  {_shorten(job.source.name, 32 - len(label) - 4)}: {label}")

    def finished(self, result: JobResult) -> None:
        self.done += 1
        if self.bars is not None:
            if result.job.index in self.rows:
                self.bars.remove_task(self.rows.pop(result.job.index))
            self.bars.update(self.overall, completed=self.done)
        if not self.quiet:
            self._emit(f"[{self.done}/{self.total}] {batch_line(result)}")


def _shorten(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 3] + "..."


def batch_line(result: JobResult) -> str:
    """One line about one recording of a batch: its figures, or why it failed."""
    job = result.job
    if result.ok:
        return (f"{job.source} -> {job.output}: {result.duration_s:.1f} s of audio, built in {result.seconds:.1f} s, "
                f"{result.bundle_bytes / 1e6:.1f} MB")
    return f"{job.source} FAILED: {result.message}"


def _build_batch(sources: list[Path], out_dir: Path, options: BuildOptions, *, force: bool, jobs: int,
                 quiet: bool) -> None:
    """``prep build a.wav b.flac ... -o DIR/``: exit 0 if every bundle was built, 2 otherwise."""
    try:
        planned = plan_jobs(sources, out_dir)
        prepare_output_dir(out_dir)
    except BatchError as exc:
        raise fail(str(exc)) from None
    workers = min(jobs, len(planned))
    started = time.perf_counter()
    if not quiet:
        how = f"{workers} worker processes" if workers > 1 else "one at a time"
        print(f"building {len(planned)} recording(s) into {out_dir} ({how})", flush=True)
    display = _BatchDisplay(len(planned), quiet)
    try:
        with display:
            results = run_batch(planned, options, force=force, workers=workers, observer=display)
    except KeyboardInterrupt:
        raise fail(f"interrupted ({display.done} of {len(planned)} recordings finished; no partial bundle left)",
                   EXIT_INTERRUPTED) from None
    failed = [r for r in results if not r.ok]
    if not quiet:
        print(f"{len(results) - len(failed)} of {len(results)} bundles built in {out_dir} "
              f"({time.perf_counter() - started:.1f} s)" + (f"; {len(failed)} failed" if failed else ""), flush=True)
    for result in failed:
        print(f"error: {result.job.source}: {result.message}", file=sys.stderr)
    if failed:
        raise typer.Exit(EXIT_ERROR)


def count_onsets(strength: np.ndarray, threshold: float = 0.5) -> int:
    """Onsets in an onset-strength curve ``(n_frames,)``: rises through ``threshold``."""
    above = np.asarray(strength) >= threshold
    return int(above[0]) + int(np.count_nonzero(above[1:] & ~above[:-1]))


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
            "onsets": count_onsets(b.onsets),
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
    plot: Path = typer.Option(None, "--plot", help="Also draw the spectrogram, states and NMF bases into this PNG "
                                                   "(needs matplotlib: the 'plot' extra).", show_default=False),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --plot file."),
) -> None:
    """Print a readable summary of a bundle (and draw it with --plot out.png)."""
    if plot is not None:  # fail before any work: no matplotlib, wrong name, existing file
        require_matplotlib()
        check_output_path(check_plot_path(plot), force)
    info = bundle_summary(bundle)
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        _print_summary_table(bundle, info)
    if plot is not None:
        with load_bundle(bundle) as loaded:
            size = plot_bundle(loaded, plot, force=force)
        if not as_json:
            print(f"plot written to {plot} ({size / 1e3:.0f} kB)")


def _print_summary_table(bundle: Path, info: dict) -> None:
    table = Table(title=f"{bundle.name}", show_header=False)
    minutes, seconds = divmod(info["source"]["duration_s"], 60)
    rows = [
        ("source", f"{info['source']['name']} ({int(minutes)}:{seconds:04.1f})"),
        ("sha256", info["source"]["sha256"][:16] + "..."),
        ("audio", f"{info['audio']['sample_rate']} Hz, {info['audio']['channels']} ch, {info['audio']['codec']}"),
        ("states", f"{info['states']} at {info['state_rate_hz']:g}/s (live frames {info['live_frame_rate_hz']:g}/s)"),
        ("detune", ", ".join(f"{c:+g}" for c in info["detune_cents"]) + " cents"),
        ("observation", f"{info['observation_bins']} bins, {info['params']['fmin_hz']:g}-{info['params']['fmax_hz']:g} Hz"),
        ("onsets", f"{info['onsets']} heard in the recording "
                   f"({info['onsets'] / max(info['source']['duration_s'], 1e-9) * 60:.0f} per minute)"),
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
