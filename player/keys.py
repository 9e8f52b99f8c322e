"""Keys of the live display (a terminal only): a number of seconds (or ``m:ss``) and Enter
restarts the accompaniment there, ``r`` restarts at the start position (``--start``, the
beginning by default).

:class:`KeyCommands` turns keystrokes into restart times (pure, tested directly);
:class:`KeyReader` reads them from stdin in cbreak mode on a small thread (POSIX; disabled
elsewhere or without a TTY).
"""

from __future__ import annotations

import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Self, TextIO

from player.status import mmss

#: Messages from the keys are shown this long (s).
MESSAGE_S = 4.0


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
