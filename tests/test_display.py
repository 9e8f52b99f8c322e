"""The live display of ``player run``: rendering from snapshots, snapshots from a running
session (fed by the fake duplex stream of test_live), the input level meter, the restart
request applied between blocks, the keys, and the plain and quiet modes of the command."""

import io
import math
import os
import re
import sys
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from player import live
from player.cli import app
from player.display import LiveDisplay, NullDisplay, PlainStatus, make_display
from player.engine import Engine
from player.keys import KeyCommands, KeyReader, parse_time
from player.live import LiveSession
from player.status import DisplaySnapshot, mmss, snapshot, status_line
from shared.synth import make_case

from .fake_sounddevice import FakeDevice, FakeDuplexStream, FakeSoundDevice
from .follow_helpers import bundle_for
from .test_live import blocksize_of, recording_engine


def render(display: LiveDisplay, snap: DisplaySnapshot, keys=None) -> str:
    buf = io.StringIO()
    Console(file=buf, width=100, force_terminal=False).print(display.render(snap, keys))
    return buf.getvalue()


def plain_display(clock=time.monotonic) -> LiveDisplay:
    return LiveDisplay(Console(file=io.StringIO(), width=100, force_terminal=False), clock=clock)


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


SNAP = DisplaySnapshot(position_s=95.4, duration_s=252.0, tempo=0.93, confidence=0.62, detune_cents=-12.3,
                       input_level_db=-23.4, input_peak_db=-9.0, xruns=3, dropped_blocks=1, late_blocks=2,
                       latency_s=0.042, queue_s=0.02, active=True, load=0.35)


def line_with(text: str, word: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith(word)]
    assert len(lines) == 1, text
    return lines[0]


# ----------------------------------------------------------------------------- rendering
def test_render_a_snapshot():
    text = render(plain_display(), SNAP)
    assert "01:35 / 04:12" in text
    assert "38%" in text  # 95.4 of 252 s
    assert "tempo 0.93x" in text
    assert "62%" in text  # confidence
    assert "-12 cents flat" in text
    assert "xruns 3" in text and "dropped 1" in text and "late 2" in text
    assert "latency 62 ms (device 42 + queue 20)" in text
    assert "-23 dBFS" in text and "peak -9.0" in text
    assert "cpu 35%" in text
    assert "playing" in text
    assert "CLIPPING" not in text
    assert all(len(line) <= 100 for line in text.splitlines())
    # the position bar: 38% of the line's bar is drawn (rich's bar: full cells, then a half cell)
    bar = re.search(r"04:12 (\S+)", text).group(1)
    assert bar.startswith("━━━━")


def test_render_sharp_rest_and_waiting():
    text = render(plain_display(), DisplaySnapshot(position_s=0.0, duration_s=59.9, tempo=1.2, detune_cents=30.4))
    assert "00:00 / 00:59" in text and "tempo 1.20x" in text
    assert "+30 cents sharp" in text
    assert "rest" in text
    text = render(plain_display(), DisplaySnapshot(position_s=3725.0, duration_s=4000.0, detune_cents=1.0,
                                                   waiting=True))
    assert "62:05 / 66:40" in text
    assert "+1 cents" in text and "sharp" not in text and "flat" not in text
    assert "waiting for your first note" in text
    text = render(plain_display(), DisplaySnapshot(position_s=1.0, duration_s=10.0, detune_cents=-0.3))
    assert "+0 cents" in text and "-0 " not in text
    text = render(plain_display(), DisplaySnapshot(position_s=float("nan"), duration_s=10.0))
    assert "00:00 / 00:10" in text and "0%" in text


def test_level_meter():
    def filled(level_db):
        line = line_with(render(plain_display(), DisplaySnapshot(0.0, 10.0, input_level_db=level_db,
                                                                 input_peak_db=level_db)), "input")
        return line.count("█"), line.count("░")

    assert filled(-120.0) == (0, 24)  # silence
    assert filled(-60.0) == (0, 24)  # the meter's floor
    assert filled(-30.0) == (12, 12)  # half way on a -60..0 dB scale
    assert filled(-23.4) == (15, 9)
    assert filled(-3.0) == (23, 1)
    assert filled(0.0) == (24, 0)
    assert filled(float("nan")) == (0, 24)


def test_ascii_console():
    """A console that cannot encode block characters gets ASCII bars and glyphs."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    console = Console(file=out, width=100, force_terminal=False)
    assert console.options.ascii_only
    display = LiveDisplay(console)
    keys = SimpleNamespace(enabled=True, typed="", message="", commands=KeyCommands(0.0, 10.0))
    console.print(display.render(SNAP, keys))
    console.print(display.render(SNAP, SimpleNamespace(enabled=True, typed="12", message="", commands=keys.commands)))
    out.flush()
    text = raw.getvalue().decode("ascii")
    assert line_with(text.split("restart there")[0], "input").count("#") == 15
    assert "tempo 0.93x" in text and "* playing" in text and "r: restart at 00:00 | Ctrl-C" in text
    assert "restart at > 12_" in text


def test_clipping_warning_is_held():
    clock = Clock()
    display = plain_display(clock)
    quiet_snap = DisplaySnapshot(0.0, 10.0, input_level_db=-20.0, input_peak_db=-12.0)
    assert "CLIPPING" not in render(display, quiet_snap)
    assert "CLIPPING" in render(display, DisplaySnapshot(0.0, 10.0, input_level_db=-6.0, input_peak_db=-0.5))
    clock.t += 1.0
    assert "CLIPPING" in render(display, quiet_snap)  # held a moment after the peak
    clock.t += 1.5
    assert "CLIPPING" not in render(display, quiet_snap)
    # a block clipped between two refreshes (the peak has fallen since): warned too
    assert "CLIPPING" in render(display, DisplaySnapshot(0.0, 10.0, input_peak_db=-12.0, clipped_blocks=1))
    clock.t += 3.0
    assert "CLIPPING" not in render(display, DisplaySnapshot(0.0, 10.0, input_peak_db=-12.0, clipped_blocks=1))


def test_live_display_draws_only_after_the_first_update():
    buf = io.StringIO()
    with LiveDisplay(Console(file=buf, width=100, force_terminal=True)):
        pass  # e.g. the device could not be opened
    assert buf.getvalue() == ""
    with LiveDisplay(Console(file=buf, width=100, force_terminal=True)) as display:
        display.update(SNAP)
        display.update(DisplaySnapshot(position_s=96.0, duration_s=252.0))
    assert "01:36" in buf.getvalue()


def test_status_line_and_plain_status():
    line = status_line(SNAP, "restarting at 01:35")
    assert line.startswith("01:35 / 04:12  tempo 0.93x  confidence 62%  detune -12 cents")
    assert "input -23 dBFS" in line and "xruns 3" in line and "latency 62 ms" in line
    assert line.endswith("| restarting at 01:35") and "\n" not in line

    clock, out = Clock(), io.StringIO()
    status = PlainStatus(out, clock=clock)
    for dt in (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 2.1):
        clock.t = 100.0 + dt
        status.update(SNAP)
    assert out.getvalue().count("\n") == 3  # at 0, 1.0 and 2.1 s: once a second


def test_quiet_display_prints_nothing(capsys):
    display = make_display(quiet=True)
    assert isinstance(display, NullDisplay) and not isinstance(display, (PlainStatus, LiveDisplay))
    with display:
        display.update(SNAP)
    assert capsys.readouterr() == ("", "")


def test_display_choice():
    tty = Console(file=io.StringIO(), force_terminal=True)
    pipe = Console(file=io.StringIO(), force_terminal=False)
    assert type(make_display(False, console=tty)) is LiveDisplay
    assert type(make_display(False, plain=True, console=tty)) is PlainStatus
    assert type(make_display(False, console=pipe)) is PlainStatus


def test_times():
    assert mmss(0) == "00:00" and mmss(59.99) == "00:59" and mmss(95.4) == "01:35" and mmss(3725) == "62:05"
    assert mmss(-3) == "00:00" and mmss(float("nan")) == "00:00"
    assert parse_time("95") == 95 and parse_time("95.5") == 95.5
    assert parse_time("1:35") == 95 and parse_time("1:02:05") == 3725 and parse_time("0:07.5") == 7.5
    for bad in ("", ":", "1:", ":5", "1:75", "1.2.3", "1:2:3:4", "abc", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_time(bad)


# ----------------------------------------------------------------------------- keys
def test_key_commands():
    clock = Clock()
    keys = KeyCommands(start_s=12.0, duration_s=200.0, clock=clock)
    assert keys.feed("r") == [12.0] and keys.message == "restarting at 00:12"
    assert keys.feed("95") == [] and keys.buffer == "95"
    assert keys.feed("\n") == [95.0] and keys.buffer == ""
    assert keys.feed("1:35\r") == [95.0]
    assert keys.feed("9x8\x7f7\n") == [97.0]  # unknown keys ignored, backspace edits
    assert keys.feed("12\x1b3\n") == [3.0]  # escape clears
    assert keys.feed("\n") == []  # nothing typed: nothing happens
    assert keys.feed("250\n") == [] and "past the end" in keys.message
    assert keys.feed("1:2:3:4\n") == [] and "not a time" in keys.message
    assert keys.feed("5\nr") == [5.0, 12.0]
    clock.t += 10.0
    assert keys.message == ""  # feedback fades

    display = plain_display(clock)
    reader = SimpleNamespace(enabled=True, typed="1:3", message="", commands=keys)
    assert "restart at › 1:3" in render(display, SNAP, reader)
    reader.typed, reader.message = "", "restarting at 00:12"
    assert "restarting at 00:12" in render(display, SNAP, reader)
    reader.message = ""
    assert "r: restart at 00:12" in render(display, SNAP, reader)
    reader.enabled = False
    assert "restart" not in render(display, SNAP, reader)


def test_key_reader_without_a_tty_is_disabled():
    reader = KeyReader(KeyCommands(0.0, 10.0), stream=io.StringIO("r12\n"))
    assert not reader.enabled
    with reader:
        assert reader._thread is None
    assert reader.poll() == []
    assert not KeyReader(KeyCommands(0.0, 10.0), stream=io.StringIO(), enable=False).enabled


@pytest.mark.skipif(not hasattr(os, "openpty") or sys.platform == "win32", reason="POSIX terminals only")
def test_key_reader_on_a_terminal():
    import termios

    master, slave = os.openpty()
    stream = os.fdopen(slave, "r")
    try:
        before = termios.tcgetattr(slave)
        reader = KeyReader(KeyCommands(30.0, 100.0), stream=stream)
        assert reader.enabled
        with reader:
            during = termios.tcgetattr(slave)
            assert not during[3] & termios.ICANON and not during[3] & termios.ECHO  # cbreak: keys at once
            os.write(master, b"r")
            times = []
            deadline = time.monotonic() + 5
            while not times and time.monotonic() < deadline:
                time.sleep(0.01)
                times += reader.poll()
            assert times == [30.0]  # no Enter needed for r
            os.write(master, b"1:05\n")
            deadline = time.monotonic() + 5
            while len(times) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
                times += reader.poll()
            assert times == [30.0, 65.0]
        assert not reader._thread.is_alive()
        assert termios.tcgetattr(slave) == before  # the terminal is given back as it was
    finally:
        stream.close()
        os.close(master)


# ----------------------------------------------------------------------------- with a session
@pytest.fixture(scope="module")
def display_case(tmp_path_factory):
    """A 12-note duet at 22.05 kHz: the bundle of X (loaded, and its path) and U."""
    case = make_case(n_notes=12, seed=4, sr=22050)
    folder = tmp_path_factory.mktemp("display")
    bundle = bundle_for(case, folder)
    yield case, bundle, folder / "x.h5"
    bundle.close()


class PassThrough:
    """An engine stand-in for the meter: returns its input."""

    output_channels = 1

    def __init__(self, sr):
        self.input_sr = sr

    def process(self, block):
        return np.asarray(block, np.float32).copy()


def test_input_level_in_dbfs():
    sr, block = 16000, 320
    session = LiveSession(PassThrough(sr), block, ring_blocks=4)
    stream = FakeDuplexStream(session)
    assert session.input_level_db == live.LEVEL_FLOOR_DB == session.input_peak_db  # nothing heard yet
    t = np.arange(2 * sr) / sr
    stream.feed((0.5 * np.sin(2 * np.pi * 441 * t)).astype(np.float32), drain=False)
    session.in_ring._read = session.in_ring._write  # no worker: just let the ring go
    assert session.input_level_db == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.1)  # -9.0 dB RMS
    assert session.input_peak_db == pytest.approx(20 * np.log10(0.5), abs=0.1)  # -6.0 dB peak
    assert session.counters.clipped_blocks == 0

    nan_block = np.full(block, np.nan, np.float32)
    stream.feed(nan_block, drain=False)  # a broken buffer does not poison the meter
    assert math.isfinite(session.input_level_db) and math.isfinite(session.input_peak_db)
    stream.feed(np.ones(3 * block, np.float32), drain=False)
    assert session.counters.clipped_blocks == 3
    assert session.input_peak_db == pytest.approx(0.0, abs=1e-6)

    session.in_ring._read = session.in_ring._write
    stream.feed(np.zeros(3 * sr, np.float32), drain=False)  # silence: the meter falls
    assert session.input_level_db < -45 and session.input_peak_db < -55  # ~14 and 20 dB per second


def test_callback_allocates_no_block_sized_memory():
    block = 4096
    session = LiveSession(PassThrough(48000), block, ring_blocks=8)
    indata = np.random.default_rng(0).uniform(-0.5, 0.5, (block, 1)).astype(np.float32)
    outdata = np.zeros((block, 1), np.float32)
    session.callback(indata, outdata, block, None, 0)  # warm up
    session.in_ring._read = session.in_ring._write
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(5):
            session.callback(indata, outdata, block, None, 0)
            session.in_ring._read = session.in_ring._write
            session.out_ring._write = session.out_ring._read + block  # always something to play
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < block * 4 // 2, f"the callback allocated {peak} bytes (a block is {4 * block})"


def test_snapshot_of_a_running_session(display_case):
    case, bundle, _ = display_case
    block = blocksize_of(bundle)
    engine = Engine(bundle, case.sr)
    session = LiveSession(engine, block, headroom_blocks=2, ring_blocks=8)
    stream = FakeDuplexStream(session)
    session.start()
    try:
        stream.feed(case.u[: 3 * case.sr])
        stream.feed(case.u[3 * case.sr: 3 * case.sr + 2 * block], status=1)  # two xruns
    finally:
        session.stop()
    assert session.error is None, repr(session.error)

    session.device_latency_s = 0.015
    snap = snapshot(engine, session)
    st = engine.state
    assert snap.position_s == st.x_s and snap.tempo == st.tempo and snap.detune_cents == st.detune_cents
    assert snap.confidence == st.confidence and snap.active == st.active
    assert snap.duration_s == bundle.duration_s
    assert snap.xruns == 2 and snap.dropped_blocks == 0 and snap.late_blocks == 0
    assert snap.latency_s == 0.015 and snap.queue_s == pytest.approx(block / case.sr)  # headroom 2: one block
    assert not snap.waiting and snap.load is not None and snap.load > 0
    tail = case.u[3 * case.sr - case.sr // 2: 3 * case.sr + 2 * block]
    rms_db = 10 * np.log10(np.mean(tail.astype(np.float64) ** 2))
    assert snap.input_level_db == pytest.approx(rms_db, abs=6.0)
    assert snap.input_peak_db >= snap.input_level_db
    assert snap.position_s > 1.0  # it followed the take

    text = render(plain_display(), snap)
    assert f"{mmss(st.x_s)} / {mmss(bundle.duration_s)}" in text
    assert f"tempo {st.tempo:.2f}x" in text
    assert f"{round(st.detune_cents):+d} cents" in text
    assert "xruns 2" in text and "dropped 0" in text
    assert f"{snap.input_level_db:4.0f} dBFS" in text
    assert line_with(text, "input").count("█") == round((snap.input_level_db + 60) / 60 * 24)


def test_restart_request_is_applied_between_blocks(display_case):
    case, bundle, _ = display_case
    block = blocksize_of(bundle)
    engine, _rows, produced = recording_engine(bundle, case.sr)
    session = LiveSession(engine, block, headroom_blocks=2, ring_blocks=8)
    stream = FakeDuplexStream(session)

    # without the worker nothing is applied, not even by the audio callback
    assert bundle.duration_s > 8.0
    session.request_restart(7.0)
    session.request_restart(5.0)  # the latest request wins
    stream.feed(case.u[:block], drain=False)
    assert session.restart_pending and engine.state.x_s == engine.music_start_s and engine.stats.blocks == 0

    session.start()
    try:
        session.drain()  # the restart first, then the queued block
        assert not session.restart_pending and session.restarts == 1
        assert engine.stats.blocks == 1
        assert engine.state.x_s == pytest.approx(5.0, abs=0.02)

        stream.feed(case.u[block: 4 * case.sr])  # the soloist plays from the start of the piece
        assert engine.follower.started and engine.stats.blocks == 4 * case.sr // block
        n_before = len(produced)
        assert np.abs(np.stack(produced[-10:])).max() > 0  # the accompaniment is playing

        later = round(0.7 * bundle.duration_s, 1)
        session.request_restart(later)
        session.drain()
        assert session.restarts == 2
        assert not engine.follower.started  # waiting for the soloist, as at the start
        assert engine.state.x_s == pytest.approx(later, abs=0.02)
        stream.feed(np.zeros(case.sr // 2, np.float32))  # silence: it waits there, quietly
        assert engine.state.x_s == pytest.approx(later, abs=0.02)
        assert not engine.follower.started
        np.testing.assert_array_equal(np.stack(produced[n_before:]), 0.0)

        session.request_restart(0.0)  # back to the beginning; the soloist plays it again
        stream.feed(case.u[: 4 * case.sr])
    finally:
        session.stop()
    assert session.error is None, repr(session.error)
    assert session.restarts == 3
    assert engine.follower.started
    truth = float(case.x_of_u(4.0 - 0.1))
    assert abs(engine.state.x_s - truth) < 0.3, (engine.state.x_s, truth)
    assert np.abs(np.stack(produced[-10:])).max() > 0


def test_restart_goes_through_the_engine():
    class RestartableEngine(PassThrough):
        def __init__(self):
            super().__init__(8000)
            self.restarted = []

        def restart(self, x_s):
            self.restarted.append(x_s)

    engine = RestartableEngine()
    session = LiveSession(engine, 80, ring_blocks=4)
    session.start()
    try:
        session.request_restart(42.0)
        session.drain()
    finally:
        session.stop()
    assert engine.restarted == [42.0] and session.restarts == 1


# ----------------------------------------------------------------------------- the command
def run_cli_live(monkeypatch, bundle_path, u, *args, sr=22050):
    sd = FakeSoundDevice(u, devices=[FakeDevice("Fake duplex", rate=sr, rates=(sr,))])
    monkeypatch.setattr(live, "import_sounddevice", lambda: sd)
    # what is printed is under test here, not the watchdog: a loaded test machine that stalls
    # the fake device's thread for 2 s must not count as a device that stopped calling back
    monkeypatch.setattr(live, "SILENT_DEVICE_S", 30.0)
    result = CliRunner().invoke(app, ["run", str(bundle_path), *args])
    assert sd.streams, result.output
    return result


def test_cli_live_quiet_prints_nothing(display_case, monkeypatch):
    case, _, bundle_path = display_case
    result = run_cli_live(monkeypatch, bundle_path, case.u[: 2 * case.sr], "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""


def test_cli_live_plain_status_without_a_terminal(display_case, monkeypatch):
    case, _, bundle_path = display_case
    result = run_cli_live(monkeypatch, bundle_path, case.u[: 2 * case.sr], "--start", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1] == "stopped: 0 xruns, 0 dropped and 0 late blocks; 22050 Hz, latency 60 ms"
    status = lines[:-1]
    assert 1 <= len(status) <= 3, result.stderr  # once a second, plain lines (no ANSI, no \r)
    duration = mmss(display_case[1].duration_s)
    for line in status:
        assert re.match(rf"\d\d:\d\d / {duration}  tempo \d\.\d\dx  confidence \d+%  detune [+-]\d+ cents  "
                        r"input -?\d+ dBFS", line), line
        assert "latency 60 ms" in line  # 10 + 20 ms of device; 1.5 blocks of 20 ms queued beyond a callback
        assert "\x1b" not in line and "\r" not in line
