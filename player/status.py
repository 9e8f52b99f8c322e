"""What the live display shows: a snapshot of the engine and the session, and its text.

:func:`snapshot` copies plain values out of the engine and the live session on the main
thread (never the audio callback); :func:`status_line` and the renderers of
:mod:`player.display` draw them.

Units: positions and durations in seconds of the recording X, tempo in X seconds per
second of playing (0.93x = 7 % slower than the recording), detune in cents (positive:
you are sharp of the recording), levels in dBFS (0 dB = digital full scale).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from rich.text import Text

#: Range of the input level meter (dBFS).
METER_FLOOR_DB = -60.0
#: A peak above this (dBFS) shows the clipping warning; the warning is held this long (s).
CLIP_WARN_DB = -1.0
CLIP_HOLD_S = 2.0


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


def snapshot(engine, session) -> DisplaySnapshot:
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
        clipped_blocks=c.clipped_blocks, latency_s=float(session.device_latency_s),
        queue_s=float(session.queue_s),
        active=bool(st.active), waiting=not engine.started,
        load=load, restarts=session.restarts)


def mmss(seconds: float) -> str:
    """``mm:ss`` (minutes go past 59 for long pieces); negative and NaN read 00:00."""
    s = int(seconds) if math.isfinite(seconds) and seconds > 0 else 0
    return f"{s // 60:02d}:{s % 60:02d}"


def confidence_style(confidence: float) -> str:
    return "green" if confidence >= 0.7 else "yellow" if confidence >= 0.4 else "red"


def detune_text(cents: float) -> Text:
    style = "green" if abs(cents) < 25 else "yellow" if abs(cents) < 50 else "red"
    word = " sharp" if cents >= 5 else " flat" if cents <= -5 else ""
    return Text(f"{cents_text(cents)} cents{word}", style=style)


def cents_text(cents: float) -> str:
    """Signed whole cents; never ``-0``."""
    return f"{round(cents) if math.isfinite(cents) else 0:+d}"


def level_style(db: float) -> str:
    return "green" if db < -18 else "yellow" if db < -6 else "red"


def counter_text(label: str, value: int) -> Text:
    return Text.assemble(f"{label} ", (str(value), "bold red" if value else "green"))


def status_line(snap: DisplaySnapshot, message: str = "") -> str:
    """One plain line (no colour, no bar) of the same information."""
    where = "waiting" if snap.waiting else "playing" if snap.active else "rest"
    load = f" cpu {100 * snap.load:.0f}%" if snap.load is not None else ""
    clip = " CLIPPING" if snap.input_peak_db >= CLIP_WARN_DB else ""
    line = (f"{mmss(snap.position_s)} / {mmss(snap.duration_s)}  tempo {snap.tempo:.2f}x  "
            f"confidence {100 * snap.confidence:.0f}%  detune {cents_text(snap.detune_cents)} cents  "
            f"input {snap.input_level_db:.0f} dBFS{clip}  {where}  xruns {snap.xruns}  "
            f"dropped {snap.dropped_blocks}  late {snap.late_blocks}  "
            f"latency {1000 * (snap.latency_s + snap.queue_s):.0f} ms{load}")
    return f"{line}  | {message}" if message else line


class Bar:
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
