"""The live display of ``player run``: where you are, how well you are followed, your level.

Everything here runs on the main thread, from ``run_live``'s ``on_tick`` (a few times per
second), never from the audio callback; it draws a :class:`player.status.DisplaySnapshot`.

- :class:`LiveDisplay`: a compact ``rich`` panel refreshed in place (a terminal).
- :class:`PlainStatus`: one plain status line per second (stderr is a file or a pipe).
- :class:`NullDisplay`: nothing at all (``--quiet``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Self, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from player.keys import KeyReader
from player.status import (
    CLIP_HOLD_S,
    CLIP_WARN_DB,
    METER_FLOOR_DB,
    Bar,
    DisplaySnapshot,
    confidence_style,
    counter_text,
    detune_text,
    level_style,
    mmss,
    status_line,
)


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
            Bar(snap.confidence, 10, lambda _f: confidence_style(snap.confidence)).text(ascii_only),
            " ", (f"{100 * snap.confidence:3.0f}%", confidence_style(snap.confidence)),
            "   detune ", detune_text(snap.detune_cents), "   ", state)

        span = -METER_FLOOR_DB
        meter = Bar((snap.input_level_db - METER_FLOOR_DB) / span, 24,
                     lambda f: level_style(METER_FLOOR_DB + f * span))
        level = Table.grid(padding=(0, 1))
        level.add_row(Text("input"), meter.text(ascii_only),
                      Text.assemble((f"{snap.input_level_db:4.0f} dBFS", level_style(snap.input_level_db)),
                                    f"  peak {snap.input_peak_db:.1f}"),
                      Text("CLIPPING: lower the input gain", style="bold white on red") if self._clipping(snap)
                      else Text(""))

        load = Text("")
        if snap.load is not None:
            load = Text.assemble("   cpu ", (f"{100 * snap.load:.0f}%", "red" if snap.load > 0.7 else ""))
        counters = Text.assemble(
            counter_text("xruns", snap.xruns), "  ", counter_text("dropped", snap.dropped_blocks), "  ",
            counter_text("late", snap.late_blocks),
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
