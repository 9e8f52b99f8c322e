"""``prep``: analyse a recording once, ahead of rehearsal, into a bundle; inspect; diff."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from prep.batch import BatchError, Job, JobResult, output_dir_requested, plan_jobs, prepare_output_dir, run_batch
from prep.compare import diff_bundles
from prep.pipeline import BuildOptions, build_bundle
from prep.plots import check_plot_path, plot_bundle, require_matplotlib
from prep.progress import BatchDisplay, StageBars, err_console, normalised_note
from prep.summary import bundle_summary, print_summary_table
from shared.bundle import load_bundle
from shared.cli_support import EXIT_ERROR, EXIT_INTERRUPTED, deferred_interrupts, fail, make_app, one_line_errors
from shared.fileio import check_output_path
from shared.spectral import AnalysisParams
from shared.text import inert

app = make_app("Prepare recordings for the follow-me karaoke player.")

def _detune_grid(range_cents: float, steps: int) -> tuple[float, ...]:
    if steps < 1 or steps % 2 == 0:
        raise fail("--detune-steps must be an odd number >= 1 (the grid is symmetric around 0)")
    if not 0 <= range_cents <= 200:
        raise fail("--detune-range must be within 0..200 cents")
    if steps == 1:
        return (0.0,)
    return tuple(float(c) for c in np.linspace(-range_cents, range_cents, steps))


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
    jobs: int | None = typer.Option(None, "-j", "--jobs", show_default=False,
                                    help="Recordings built in parallel (worker processes, one core each). [default: 1]"),
    scheduler: str | None = typer.Option(None, "--scheduler", metavar="ADDRESS", show_default=False,
                                         help="Build on the workers of this Dask scheduler (tcp://host:8786; the "
                                              "'cluster' extra) instead of this machine: the recordings are sent to them "
                                              "and the bundles come back into the -o folder (a folder here; no --jobs)."),
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
    """Analyse each RECORDING into a bundle the player loads (several at once: -o FOLDER/ --jobs N,
    or on a Dask cluster: -o FOLDER/ --scheduler ADDRESS)."""
    _check_where(jobs, scheduler, output_dir_requested(output, len(sources)))
    # (a setting out of range raises ConfigError: one line, from one_line_errors)
    params = AnalysisParams(sr=sr, n_fft=n_fft, fine_hop=fine_hop, coarse_hop=coarse_hop, fmin_hz=fmin,
                            fmax_hz=fmax, detune_cents=_detune_grid(detune_range, detune_steps))
    options = BuildOptions(params=params, n_components=components, nmf_iter=nmf_iter, seed=seed)
    if output_dir_requested(output, len(sources)):
        _build_batch(sources, Path(output), options, force=force, jobs=jobs or 1, scheduler=scheduler, quiet=quiet)
        return
    source, output_path = sources[0], Path(output)
    if output_path.is_dir():
        raise fail(f"output path is a directory: {output_path} (to write {output_path / (source.stem + '.h5')} "
                   "inside it, end the path with '/')")
    # Ctrl-C, kill and a closed terminal stop the build at its next progress report, which
    # unwinds it cleanly (deferred_interrupts says why not at once).
    with deferred_interrupts() as interrupted, ExitStack() as stack:
        bars = None
        if not quiet:
            columns = (TextColumn("{task.description:<20}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
            bars = StageBars(stack.enter_context(Progress(*columns, console=err_console, transient=True)))

        def report(stage: str, done: int, total: int) -> None:
            if interrupted():
                raise KeyboardInterrupt
            if bars is not None:
                bars(stage, done, total)

        summary = build_bundle(source, output_path, options, force=force, progress=report)
    if summary.gain_db < 0:  # said even with -q: the stored audio is not the file's level
        print(f"note: {inert(source.name)} {normalised_note(summary.gain_db)}", file=sys.stderr)
    if not quiet:
        print(
            f"{summary.output}: {summary.duration_s:.1f} s, {summary.sample_rate} Hz x{summary.channels}, "
            f"{summary.n_states} states, {summary.n_detune} detune steps, {summary.n_components} NMF bases, "
            f"{summary.bundle_bytes / 1e6:.1f} MB, built in {summary.seconds:.1f} s"
        )


def _check_where(jobs: int | None, scheduler: str | None, into_folder: bool) -> None:
    """Refuse, in one line, what ``--jobs`` and ``--scheduler`` cannot do."""
    if jobs is not None and not 1 <= jobs <= max_jobs():
        raise fail(f"--jobs must be within 1..{max_jobs()} (this machine has {os.cpu_count() or 1} cores)")
    if scheduler is None:
        return
    if jobs is not None:
        raise fail("--jobs and --scheduler exclude each other: on a cluster, its workers' threads set how many "
                   "recordings are built at once")
    if not into_folder:
        raise fail("--scheduler writes into a folder: give -o a folder path ending in '/' (the bundle is "
                   "named after its recording)")


def _build_batch(sources: list[Path], out_dir: Path, options: BuildOptions, *, force: bool, jobs: int,
                 scheduler: str | None, quiet: bool) -> None:
    """``prep build a.wav b.flac ... -o DIR/``: exit 0 if every bundle was built, 2 otherwise."""
    try:
        planned = plan_jobs(sources, out_dir)
    except BatchError as exc:
        raise fail(str(exc)) from None
    started = time.perf_counter()
    display = BatchDisplay(len(planned), quiet)
    with ExitStack() as stack:
        how, run = _batch_runner(stack, planned, options, force, jobs, scheduler, display)
        try:
            prepare_output_dir(out_dir)  # (after connecting: a scheduler out of reach leaves no folder behind)
        except BatchError as exc:
            raise fail(str(exc)) from None
        if not quiet:
            print(f"building {len(planned)} recording(s) into {out_dir} ({how})", flush=True)
        try:
            with display:
                results = run()
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


def _batch_runner(stack: ExitStack, planned: list[Job], options: BuildOptions, force: bool, jobs: int,
                  scheduler: str | None, display: BatchDisplay) -> tuple[str, Callable[[], list[JobResult]]]:
    """How the batch runs (for its header line) and the call that runs it: local worker
    processes, or the cluster of ``scheduler`` (connected here, closed with ``stack``)."""
    if scheduler is None:
        workers = min(jobs, len(planned))
        how = f"{workers} worker processes" if workers > 1 else "one at a time"
        return how, lambda: run_batch(planned, options, force=force, workers=workers, observer=display)
    from prep.cluster import cluster_threads, connect, quiet_client_logs, run_batch_on_cluster  # the 'cluster' extra

    quiet_client_logs()
    client = stack.enter_context(connect(scheduler))
    n_workers, n_threads = cluster_threads(client)
    how = f"on the Dask cluster at {scheduler}: {n_workers} workers, {n_threads} threads"
    return how, lambda: run_batch_on_cluster(planned, options, client, force=force, observer=display)


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
        print_summary_table(bundle, info)
    if plot is not None:
        with load_bundle(bundle) as loaded:
            size = plot_bundle(loaded, plot, force=force)
        if not as_json:
            print(f"plot written to {plot} ({size / 1e3:.0f} kB)")


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
        print(f"  (volatile, ignored) {inert(line)}")
    for line in result.differences:
        print(f"  {inert(line)}")
    if result.identical:
        print("bundles are equivalent")
        raise typer.Exit(0)
    print(f"bundles differ in {len(result.differences)} place(s)")
    raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
