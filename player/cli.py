"""``player``: follow a live (or recorded) solo with a prepared bundle."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from player.config import EngineConfig
from player.engine import Engine
from player.filemode import default_blocksize, run_file
from player.report import write_report
from shared.alignment import read_path
from shared.bundle import load_bundle
from shared.cli_support import fail, make_app, one_line_errors
from shared.errors import ConfigError
from shared.fileio import check_output_path
from shared.plotting import check_plot_path, require_matplotlib
from shared.text import inert

app = make_app("Play a prepared recording along with you, following your tempo, solo removed.")


@app.command()
@one_line_errors
def run(
    bundle: Path = typer.Argument(..., help="Bundle made by 'prep build'."),
    input: Path | None = typer.Option(None, "--input", "-i", help="Read the solo from this file (or a --record "
                                      "folder) instead of a microphone."),
    output: Path | None = typer.Option(None, "--output", "-o", help="With --input: write what the speakers would play."),
    alignment: Path | None = typer.Option(None, "--alignment", "-a", help="With --input: write the path (u_time_s,x_time_s)."),
    heard: Path | None = typer.Option(None, "--heard", help="With --input: write what each output block plays "
                                      "(heard_u_s,x_s,rate,seek: when it is heard, the X time, the rate, 1 at a seek)."),
    start: float = typer.Option(0.0, "--start", help="Where in the recording you start (seconds)."),
    intro: bool = typer.Option(False, "--intro", help="Play the recording at once (its introduction), not from your first note."),
    tempo: float = typer.Option(1.0, "--tempo", help="Your tempo against the recording's (0.7: practising at 70 %); "
                                "you are still followed wherever you go."),
    alpha: float = typer.Option(2.0, "--alpha", help="Solo removal strength, 0 (none: play the recording as is) to 2."),
    input_device: str | None = typer.Option(None, "--input-device", help="Microphone (name or index; see 'player devices')."),
    output_device: str | None = typer.Option(None, "--output-device", help="Speakers/headphones (name or index)."),
    samplerate: int | None = typer.Option(None, "--samplerate", help="Live: the devices' rate (Hz; default: theirs); "
                                          "with --input: out.wav's (default: the recording's)."),
    latency: str = typer.Option("low", "--latency", help="Device latency: 'low', 'high' or seconds "
                                "(with --input: play as through a device of that many seconds)."),
    record: Path | None = typer.Option(None, "--record", help="Live: keep the rehearsal in this folder (take, played, path)."),
    no_search: bool = typer.Option(False, "--no-search", help="Do not look for you elsewhere in the piece."),
    blocksize: int | None = typer.Option(None, "--blocksize", help="Samples per block (default: ~20 ms)."),
    report: Path | None = typer.Option(None, "--report", help="With --input: draw the run into this PNG."),
    truth: Path | None = typer.Option(None, "--truth", help="With --report: the true path (u_time_s,x_time_s CSV)."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No summary and, live, no display."),
    plain: bool = typer.Option(False, "--plain", help="Live: one plain status line a second instead of the live display."),
    keys: bool = typer.Option(True, "--keys/--no-keys", help="Live, on a terminal: type seconds + Enter (or 'r') to restart."),
) -> None:
    """Follow the soloist and play the recording along."""
    if blocksize is not None and not 16 <= blocksize <= 1 << 16:
        raise fail("--blocksize must be within 16..65536 samples")
    if samplerate is not None and not 8000 <= samplerate <= 384000:
        raise fail("--samplerate must be within 8000..384000 Hz")
    with naming_options(), load_bundle(bundle, spectra=False) as b:
        config = EngineConfig.from_overrides({"start_s": start, "intro": intro, "global_search": not no_search,
                                              "separation.alpha": alpha, "tempo": tempo})
        if input is None:
            if output is not None or alignment is not None or report is not None or heard is not None:
                raise fail("--output, --alignment, --heard and --report need --input FILE; to keep a live rehearsal, "
                           "use --record DIR (then 'player report DIR')")
            _run_live(b, config, blocksize, input_device, output_device, latency, quiet, plain=plain, keys=keys,
                      samplerate=samplerate, record=record, force=force)
            return
        if record is not None:
            raise fail("--record is for live audio (without --input); file mode writes --output and --alignment")
        if input.is_dir():  # a rehearsal kept with --record: its take
            from player.recorder import recorded_take

            input = recorded_take(input)
        truth_path = _check_report_options(report, truth, force)
        result = run_file(b, input, output_path=output, alignment_path=alignment, heard_path=heard, config=config,
                          blocksize=blocksize, force=force, record=report is not None,
                          latency_s=_file_latency(latency), output_sr=samplerate)
        if report is not None:
            write_report(result.trace, report, truth=truth_path, title=f"{input.name} on {bundle.name}", force=force)
    if not quiet:
        print(f"followed {result.u_duration_s:.1f} s of input in {result.wall_s:.1f} s "
              f"(real-time factor {result.rtf:.3f}, {result.counters['jumps']} relocations, "
              f"{result.counters['nan_blocks']} NaN blocks)", file=sys.stderr)
        hint = tempo_hint(result.trace.playing_tempo(), told=tempo)
        if hint:
            print(hint, file=sys.stderr)


#: A typical tempo outside this range (against the recording's) is worth a ``--tempo``.
PRACTICE_TEMPO_RANGE = (0.87, 1.15)


def tempo_hint(playing: float, told: float) -> str | None:
    """A line suggesting ``--tempo`` to a player whose typical tempo ``playing`` (X seconds
    per U second; NaN: unknown) is far from the one they gave (``told``), or None."""
    lo, hi = PRACTICE_TEMPO_RANGE
    if not math.isfinite(playing) or lo <= playing / told <= hi:
        return None
    return (f"you played at about {playing:.2f} of the recording's tempo: '--tempo {playing:.2f}' "
            "follows you from your first notes and plays the tutti at your tempo")


#: The option of ``player run`` that sets each engine setting (named in its errors).
OPTION_OF_SETTING = {"start_s": "--start", "alpha": "--alpha", "tempo": "--tempo"}


@contextmanager
def naming_options() -> Iterator[None]:
    """Prefix a setting's error with the option that set it (``--alpha: ...``)."""
    try:
        yield
    except ConfigError as exc:
        option = OPTION_OF_SETTING.get(exc.field or "")
        raise fail(f"{option}: {exc}" if option else str(exc)) from None


def _check_report_options(report: Path | None, truth: Path | None, force: bool):
    """Validate --report/--truth before the run (not after minutes of work); the truth array."""
    if report is None:
        if truth is not None:
            raise fail("--truth goes with --report")
        return None
    require_matplotlib()
    check_plot_path(report, "--report")
    check_output_path(report, force)
    return read_path(truth, "truth") if truth is not None else None


def _device(value: str | None):
    """A device given as an index stays an int; a name stays a string."""
    return int(value) if value is not None and value.isdigit() else value


def _latency(value: str):
    if value in ("low", "high"):
        return value
    try:
        seconds = float(value)
    except ValueError:
        raise fail("--latency must be 'low', 'high' or a number of seconds") from None
    if not 0.0 <= seconds <= 1.0:
        raise fail("--latency must be within [0, 1] seconds")
    return seconds


def _file_latency(value: str) -> float:
    """File mode's ``--latency``: seconds of a device to play as through (default none)."""
    latency = _latency(value)
    return 0.0 if isinstance(latency, str) else latency


def _run_live(bundle, config, blocksize, input_device, output_device, latency, quiet, *, plain: bool = False,
              keys: bool = True, samplerate: int | None = None, record: Path | None = None, force: bool = False) -> None:
    from player.devices import choose_devices
    from player.display import make_display
    from player.keys import KeyCommands, KeyReader
    from player.live import import_sounddevice, run_live  # PortAudio is loaded only for live audio
    from player.recorder import RehearsalRecorder, check_record_folder
    from player.status import snapshot

    if record is not None:
        check_record_folder(record, force)  # before the devices open
    sd = import_sounddevice()
    choice = choose_devices(sd, _device(input_device), _device(output_device), samplerate, bundle.audio.sr)
    rate = choice.samplerate
    block = blocksize or default_blocksize(rate, bundle.params)
    recorder = RehearsalRecorder(record, rate, 1, bundle.audio.channels, force=force) if record is not None else None
    engine = Engine(bundle, rate, config, on_frame=recorder.frame if recorder else None, output_sr=rate)
    display = make_display(quiet, plain)
    reader = KeyReader(KeyCommands(config.start_s, bundle.duration_s), enable=keys and not quiet)
    warned = []

    def tick(session):  # the main thread, a few times per second
        for x_s in reader.poll():
            session.request_restart(x_s)
        display.update(snapshot(engine, session), reader)
        if recorder is not None and recorder.warning and not warned:
            warned.append(recorder.warning)
            print(f"warning: {inert(recorder.warning)}", file=sys.stderr)

    session = None
    try:
        with reader, display:
            session = run_live(engine, choice, blocksize=block, latency=_latency(latency), on_tick=tick,
                               on_block=recorder.block if recorder else None, sd=sd)
    finally:
        if recorder is not None:
            recorder.close(_live_timing(engine, session, choice, block))
            if recorder.warning and recorder.warning not in warned:
                print(f"warning: {inert(recorder.warning)}", file=sys.stderr)
    c = session.counters
    if not quiet:
        print(f"stopped: {c.xruns} xruns, {c.dropped_blocks} dropped and {c.late_blocks} late blocks; "
              f"{choice.samplerate} Hz, latency {1000 * session.latency_s:.0f} ms"
              + (f"; rehearsal kept in {record}" if record is not None else ""), file=sys.stderr)


def _live_timing(engine, session, choice, block: int) -> dict:
    """The timing report of a live run (``timing.json`` of a recorded rehearsal)."""
    stats = engine.stats
    report = {"samplerate": choice.samplerate, "input_device": choice.input_name, "output_device": choice.output_name,
              "host_api": choice.host_api, "blocksize": block, "u_duration_s": round(engine.u_time_s, 3),
              "frames": stats.frames, "blocks": stats.blocks, "jumps": stats.jumps, "agains": stats.agains,
              "nan_blocks": stats.nan_blocks,
              "stage_s": {k: round(v, 4) for k, v in stats.seconds.items()},
              "cpu_share": round(sum(stats.seconds.values()) / max(engine.u_time_s, 1e-9), 4)}
    if session is not None:
        c = session.counters
        report.update(device_latency_s=round(session.device_latency_s, 6), queue_s=round(session.queue_s, 6),
                      assumed_latency_s=round(session.latency_s, 6),
                      primed_latency_s=round(session.primed_latency_s, 6), xruns=c.xruns, dropped_blocks=c.dropped_blocks,
                      late_blocks=c.late_blocks, skipped_blocks=c.skipped_blocks, callbacks=c.callbacks,
                      restarts=session.restarts)
    return report


@app.command()
@one_line_errors
def demo(
    folder: Path = typer.Argument(Path("karaoke-demo"), help="Folder to write the demo into."),
    force: bool = typer.Option(False, "--force", help="Replace an earlier demo in that folder."),
) -> None:
    """Run the whole chain on a synthesised example (no audio hardware needed)."""
    from player.demo import run_demo  # builds a bundle: needs the prep side of the package

    require_matplotlib()
    result = run_demo(folder, force=force, say=lambda msg: print(f"demo: {msg}", file=sys.stderr))
    print(f"demo: {result.pct_within_100ms:.0f}% of the take's notes followed within 100 ms "
          f"(median error {result.median_error_ms:.0f} ms), real-time factor {result.rtf:.2f}", file=sys.stderr)
    print(f"demo written to {result.folder.resolve()}: out.wav (what the speakers would play), "
          f"path.csv, report.png, X.h5")


@app.command("report")
@one_line_errors
def report_command(
    folder: Path = typer.Argument(..., help="A rehearsal kept with 'player run ... --record DIR'."),
    truth: Path | None = typer.Option(None, "--truth", help="The true path (u_time_s,x_time_s CSV)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="The PNG to draw (default: DIR/report.png)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing picture."),
) -> None:
    """Draw a recorded rehearsal: path, error against --truth, tempo and confidence."""
    from player.trace import read_trace

    require_matplotlib()
    target = output or folder / "report.png"
    check_plot_path(target, "--output")
    check_output_path(target, force or output is None)
    trace = read_trace(folder)
    truth_path = read_path(truth, "truth") if truth is not None else None
    write_report(trace, target, truth=truth_path, title=f"rehearsal {folder.name}", force=True)
    print(f"report written to {inert(target)}")


@app.command()
@one_line_errors
def devices() -> None:
    """List the audio devices (needs PortAudio)."""
    from player.live import list_devices

    print(list_devices())


@app.callback()
def _root() -> None:
    """Commands of the player."""


def main() -> None:
    app()
