"""The live display of ``player run``: where you are, how well you are followed, your level.

Everything here runs on the main thread, from ``run_live``'s ``on_tick`` (a few times per
second), never from the audio callback: :func:`snapshot` copies plain values out of the
engine and the session, and a display draws them.

- :class:`LiveDisplay`: a compact ``rich`` panel refreshed in place (a terminal).
- :class:`PlainStatus`: one plain status line per second (stderr is a file or a pipe).
- :class:`NullDisplay`: nothing at all (``--quiet``).

Keys (a terminal only): a number of seconds (or ``m:ss``) and Enter restarts the
accompaniment there, ``r`` restarts at the start position (``--start``, the beginning by
default). :class:`KeyCommands` turns keystrokes into restart times; :class:`KeyReader`
reads them from stdin in cbreak mode on a small thread (POSIX; disabled elsewhere or
without a TTY).

Units: positions and durations in seconds of the recording X, tempo in X seconds per
second of playing (0.93x = 7 % slower than the recording), detune in cents (positive:
you are sharp of the recording), levels in dBFS (0 dB = digital full scale).
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

#: Range of the input level meter (dBFS).
METER_FLOOR_DB = -60.0
#: A peak above this (dBFS) shows the clipping warning; the warning is held this long (s).
CLIP_WARN_DB = -1.0
CLIP_HOLD_S = 2.0
#: Messages from the keys are shown this long (s).
MESSAGE_S = 4.0


@dataclass(frozen=True)
class DisplaySnapshot:
    """Plain values for one refresh of the display.

    Attributes:
        position_s: where the player is believed to be in X (seconds).
        duration_s: length of X (seconds).
        tempo: X seconds per second of playing (1 = the recording's tempo).
        confidence: how sure the follower is, in [0, 1].
        detune_cents: the player's tuning relative to X (cents, + = sharp).
        input_level_db: recent RMS level of the microphone (dBFS).
        input_peak_db: recent peak of the microphone (dBFS).
        xruns: stream over/underflows reported by the device.
        dropped_blocks: input blocks lost because the engine fell behind.
        late_blocks: output blocks played as silence because the engine was late.
        clipped_blocks: input blocks that reached full scale.
        latency_s: the device's latency (input + output, seconds).
        queue_s: output queued ahead by the player (seconds).
        active: the soloist is heard now.
        waiting: the player waits for the soloist's first note (start or restart).
        load: engine CPU time per second of audio (None: not known yet).
        restarts: restarts asked with the keys so far.
    """

    position_s: float
    duration_s: float
    tempo: float = 1.0
    confidence: float = 0.0
    detune_cents: float = 0.0
    input_level_db: float = -120.0
    input_peak_db: float = -120.0
    xruns: int = 0
    dropped_blocks: int = 0
    late_blocks: int = 0
    clipped_blocks: int = 0
    latency_s: float = 0.0
    queue_s: float = 0.0
    active: bool = False
    waiting: bool = False
    load: float | None = None
    restarts: int = 0


def snapshot(engine, session, latency_s: float) -> DisplaySnapshot:
    """Copy the display's values out of a running engine and its live session (main thread)."""
    st = engine.state
    c = session.counters
    u_time = engine.u_time_s
    load = sum(engine.stats.seconds.values()) / u_time if u_time > 0.5 else None
    return DisplaySnapshot(
        position_s=float(st.x_s), duration_s=float(engine.bundle.duration_s), tempo=float(st.tempo),
        confidence=float(st.confidence), detune_cents=float(st.detune_cents),
        input_level_db=float(session.input_level_db), input_peak_db=float(session.input_peak_db),
        xruns=c.xruns, dropped_blocks=c.dropped_blocks, late_blocks=c.late_blocks,
        clipped_blocks=c.clipped_blocks, latency_s=float(latency_s),
        queue_s=session.headroom_blocks * session.blocksize / float(engine.input_sr),
        active=bool(st.active), waiting=not engine.started,
        load=load, restarts=session.restarts)


# ----------------------------------------------------------------------------- formatting
def mmss(seconds: float) -> str:
    """``mm:ss`` (minutes go past 59 for long pieces); negative and NaN read 00:00."""
    s = int(seconds) if math.isfinite(seconds) and seconds > 0 else 0
    return f"{s // 60:02d}:{s % 60:02d}"


def parse_time(text: str) -> float:
    """Seconds from ``95``, ``95.5``, ``1:35`` or ``1:02:05``; ValueError otherwise."""
    parts = text.strip().split(":")
    if not parts[0] or len(parts) > 3 or any(not p for p in parts):
        raise ValueError(text)
    seconds = 0.0
    for i, part in enumerate(parts):
        value = float(part)
        if not math.isfinite(value) or value < 0 or (i > 0 and value >= 60):
            raise ValueError(text)
        seconds = seconds * 60 + value
    return seconds


def _confidence_style(confidence: float) -> str:
    return "green" if confidence >= 0.7 else "yellow" if confidence >= 0.4 else "red"


def _detune_text(cents: float) -> Text:
    style = "green" if abs(cents) < 25 else "yellow" if abs(cents) < 50 else "red"
    word = " sharp" if cents >= 5 else " flat" if cents <= -5 else ""
    return Text(f"{_cents(cents)} cents{word}", style=style)


def _cents(cents: float) -> str:
    """Signed whole cents; never ``-0``."""
    return f"{round(cents) if math.isfinite(cents) else 0:+d}"


def _level_style(db: float) -> str:
    return "green" if db < -18 else "yellow" if db < -6 else "red"


def _counter(label: str, value: int) -> Text:
    return Text.assemble(f"{label} ", (str(value), "bold red" if value else "green"))


def status_line(snap: DisplaySnapshot, message: str = "") -> str:
    """One plain line (no colour, no bar) of the same information."""
    where = "waiting" if snap.waiting else "playing" if snap.active else "rest"
    load = f" cpu {100 * snap.load:.0f}%" if snap.load is not None else ""
    clip = " CLIPPING" if snap.input_peak_db >= CLIP_WARN_DB else ""
    line = (f"{mmss(snap.position_s)} / {mmss(snap.duration_s)}  tempo {snap.tempo:.2f}x  "
            f"confidence {100 * snap.confidence:.0f}%  detune {_cents(snap.detune_cents)} cents  "
            f"input {snap.input_level_db:.0f} dBFS{clip}  {where}  xruns {snap.xruns}  "
            f"dropped {snap.dropped_blocks}  late {snap.late_blocks}  "
            f"latency {1000 * (snap.latency_s + snap.queue_s):.0f} ms{load}")
    return f"{line}  | {message}" if message else line


class _Bar:
    """A fixed-width meter: ``fraction`` of ``width`` cells filled; each filled cell takes the
    style ``style_of(cell_fraction)``. ASCII on consoles that cannot draw blocks."""

    def __init__(self, fraction: float, width: int, style_of: Callable[[float], str]) -> None:
        self.fraction = min(1.0, max(0.0, fraction if math.isfinite(fraction) else 0.0))
        self.width = width
        self.style_of = style_of

    def text(self, ascii_only: bool) -> Text:
        full, empty = ("#", "-") if ascii_only else ("█", "░")
        n = round(self.fraction * self.width)
        out = Text()
        for i in range(n):
            out.append(full, style=self.style_of((i + 0.5) / self.width))
        out.append(empty * (self.width - n), style="bright_black")
        return out



# ----------------------------------------------------------------------------- keys
class KeyCommands:
    """Keystrokes -> restart times (pure; fed by :class:`KeyReader`, tested directly).

    ``r`` restarts at ``start_s``; digits, ``.`` and ``:`` build a time, Enter restarts
    there (seconds, ``m:ss`` or ``h:mm:ss``); Backspace edits, Escape clears.
    """

    def __init__(self, start_s: float, duration_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.start_s = float(start_s)
        self.duration_s = float(duration_s)
        self.clock = clock
        self.buffer = ""
        self._message = ""
        self._message_t = -math.inf

    @property
    def message(self) -> str:
        """The last feedback (restarting at..., not a time...) while it is fresh."""
        return self._message if self.clock() - self._message_t < MESSAGE_S else ""

    def _say(self, text: str) -> None:
        self._message, self._message_t = text, self.clock()

    def feed(self, chars: str) -> list[float]:
        """Consume typed characters; the restart times they ask for (usually none or one)."""
        times: list[float] = []
        for ch in chars:
            if ch in "rR":
                self.buffer = ""
                times.append(self.start_s)
                self._say(f"restarting at {mmss(self.start_s)}")
            elif ch.isdigit() or ch in ".:":
                if len(self.buffer) < 12:
                    self.buffer += ch
            elif ch in "\r\n":
                text, self.buffer = self.buffer, ""
                if not text:
                    continue
                try:
                    seconds = parse_time(text)
                except ValueError:
                    self._say(f"'{text}' is not a time (seconds or m:ss)")
                    continue
                if seconds >= self.duration_s:
                    self._say(f"{text} is past the end of the recording ({mmss(self.duration_s)})")
                    continue
                times.append(seconds)
                self._say(f"restarting at {mmss(seconds)}")
            elif ch in "\x7f\b":
                self.buffer = self.buffer[:-1]
            elif ch == "\x1b":
                self.buffer = ""
        return times

    def hint(self, ascii_only: bool = False) -> str:
        dot = " | " if ascii_only else " · "
        return dot.join(("type seconds + Enter: restart there", f"r: restart at {mmss(self.start_s)}", "Ctrl-C: stop"))


def stdin_is_tty(stream: TextIO | None = None) -> bool:
    stream = sys.stdin if stream is None else stream
    try:
        return stream is not None and stream.isatty()
    except (ValueError, OSError):  # closed or detached
        return False


class KeyReader:
    """Reads keys from a terminal's stdin on a daemon thread (cbreak mode: no Enter needed
    for ``r``, no echo, Ctrl-C still interrupts); the terminal is restored on exit.

    Restart times wait in a queue for :meth:`poll` (the main thread's tick), which hands
    them to the session; nothing here touches the engine. Disabled (``enabled`` False, a
    no-op) when stdin is not a terminal or the platform has no termios.
    """

    def __init__(self, commands: KeyCommands, stream: TextIO | None = None, enable: bool = True) -> None:
        self.commands = commands
        self.stream = sys.stdin if stream is None else stream
        self.enabled = enable and stdin_is_tty(self.stream)
        if self.enabled:
            try:
                import termios  # noqa: F401 - POSIX only
                import tty  # noqa: F401
            except ImportError:
                self.enabled = False
        self._times: queue.SimpleQueue[float] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._saved = None
        self._fd = -1

    def __enter__(self) -> Self:
        if not self.enabled:
            return self
        import termios
        import tty

        try:
            self._fd = self.stream.fileno()
            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        except (OSError, ValueError, termios.error):
            self.enabled = False
            return self
        self._thread = threading.Thread(target=self._run, name="keys", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved is not None:
            import termios

            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            except (OSError, termios.error):
                pass
            self._saved = None

    def _run(self) -> None:
        import select

        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._fd], [], [], 0.1)
                if not ready:
                    continue
                data = os.read(self._fd, 64)
            except (OSError, ValueError):
                return
            if not data:  # end of input
                return
            for t in self.commands.feed(data.decode("utf-8", errors="ignore")):
                self._times.put(t)

    def poll(self) -> list[float]:
        """Restart times typed since the last call (oldest first)."""
        out = []
        while True:
            try:
                out.append(self._times.get_nowait())
            except queue.Empty:
                return out

    @property
    def typed(self) -> str:
        return self.commands.buffer

    @property
    def message(self) -> str:
        return self.commands.message


# ----------------------------------------------------------------------------- displays
class NullDisplay:
    """``--quiet``: shows nothing."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, snap: DisplaySnapshot, keys: KeyReader | None = None) -> None:
        pass


class PlainStatus(NullDisplay):
    """One plain status line per ``every_s`` seconds (stderr is not a terminal)."""

    def __init__(self, file: TextIO | None = None, every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.file = file
        self.every_s = every_s
        self.clock = clock
        self._last = -math.inf

    def update(self, snap: DisplaySnapshot, keys: KeyReader | None = None) -> None:
        now = self.clock()
        if now - self._last < self.every_s:
            return
        self._last = now
        message = keys.message if keys is not None and keys.enabled else ""
        print(status_line(snap, message), file=self.file or sys.stderr, flush=True)


class LiveDisplay(NullDisplay):
    """A compact rich panel redrawn in place from the main thread's tick.

    ``render(snap)`` builds the renderable (tests render it into a string console);
    inside ``with display:`` each ``update(snap)`` redraws it (no refresh thread of its own).
    """

    def __init__(self, console: Console | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.console = console or Console(stderr=True)
        self.clock = clock
        self._live: Live | None = None
        self._entered = False
        self._clipped = 0
        self._clip_until = -math.inf

    def __enter__(self) -> Self:
        self._entered = True  # the Live starts at the first update: nothing drawn if the device fails
        return self

    def __exit__(self, *exc) -> None:
        self._entered = False
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, snap: DisplaySnapshot, keys: KeyReader | None = None) -> None:
        renderable = self.render(snap, keys)
        if self._live is None and self._entered:
            self._live = Live(renderable, console=self.console, auto_refresh=False, transient=False)
            self._live.start()
        if self._live is not None:
            self._live.update(renderable, refresh=True)

    def _clipping(self, snap: DisplaySnapshot) -> bool:
        """Near 0 dB now, or a clipped block within the last ``CLIP_HOLD_S``."""
        now = self.clock()
        if snap.clipped_blocks > self._clipped or snap.input_peak_db >= CLIP_WARN_DB:
            self._clip_until = now + CLIP_HOLD_S
        self._clipped = snap.clipped_blocks
        return now < self._clip_until

    def render(self, snap: DisplaySnapshot, keys: KeyReader | None = None) -> Group:
        duration = max(snap.duration_s, 1e-9)
        position = min(max(snap.position_s, 0.0), snap.duration_s) if math.isfinite(snap.position_s) else 0.0

        where = Table.grid(padding=(0, 1), expand=True)
        where.add_column(no_wrap=True)
        where.add_column(ratio=1)
        where.add_column(no_wrap=True, justify="right")
        where.add_row(Text.assemble((mmss(position), "bold"), f" / {mmss(snap.duration_s)}"),
                      ProgressBar(total=duration, completed=position, complete_style="cyan", finished_style="green"),
                      f"{100 * position / duration:3.0f}%")

        ascii_only = self.console.options.ascii_only
        if snap.waiting:
            state = Text("waiting for your first note", style="bold yellow")
        elif snap.active:
            state = Text(("* " if ascii_only else "● ") + "playing", style="green")
        else:
            state = Text(("- " if ascii_only else "○ ") + "rest", style="bright_black")
        follow = Text.assemble(
            "tempo ", (f"{snap.tempo:.2f}x", "bold cyan"), "   confidence ",
            _Bar(snap.confidence, 10, lambda _f: _confidence_style(snap.confidence)).text(ascii_only),
            " ", (f"{100 * snap.confidence:3.0f}%", _confidence_style(snap.confidence)),
            "   detune ", _detune_text(snap.detune_cents), "   ", state)

        span = -METER_FLOOR_DB
        meter = _Bar((snap.input_level_db - METER_FLOOR_DB) / span, 24,
                     lambda f: _level_style(METER_FLOOR_DB + f * span))
        level = Table.grid(padding=(0, 1))
        level.add_row(Text("input"), meter.text(ascii_only),
                      Text.assemble((f"{snap.input_level_db:4.0f} dBFS", _level_style(snap.input_level_db)),
                                    f"  peak {snap.input_peak_db:.1f}"),
                      Text("CLIPPING: lower the input gain", style="bold white on red") if self._clipping(snap)
                      else Text(""))

        load = Text("")
        if snap.load is not None:
            load = Text.assemble("   cpu ", (f"{100 * snap.load:.0f}%", "red" if snap.load > 0.7 else ""))
        counters = Text.assemble(
            _counter("xruns", snap.xruns), "  ", _counter("dropped", snap.dropped_blocks), "  ",
            _counter("late", snap.late_blocks),
            f"   latency {1000 * (snap.latency_s + snap.queue_s):.0f} ms "
            f"(device {1000 * snap.latency_s:.0f} + queue {1000 * snap.queue_s:.0f})", load)

        rows = [where, follow, level, counters]
        if keys is not None and keys.enabled:
            typed = keys.typed
            message = keys.message
            if typed:
                rows.append(Text.assemble(("restart at > " if ascii_only else "restart at › ", "bold"),
                                          (typed, "bold cyan"), "_" if ascii_only else "▏"))
            elif message:
                rows.append(Text(message, style="bold"))
            else:
                rows.append(Text(keys.commands.hint(ascii_only), style="bright_black"))
        return Group(*rows)


def make_display(quiet: bool, plain: bool = False, console: Console | None = None):
    """The display for ``player run``: none when quiet, rich on a terminal (unless
    ``plain``), else one plain line per second."""
    if quiet:
        return NullDisplay()
    console = console or Console(stderr=True)
    if plain or not console.is_terminal:
        return PlainStatus(file=console.file)
    return LiveDisplay(console)
