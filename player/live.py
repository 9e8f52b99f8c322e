"""Live audio: a duplex PortAudio stream around the same engine the file mode drives.

The stream runs at the device's rate and calls back with whatever the host delivers (a
JACK period, an ALSA period: PortAudio adds no buffering of its own); the callback only
copies samples between the device and two preallocated ring buffers, meters the input into
preallocated storage and counts problems. A worker thread runs the engine on whole blocks
of ``blocksize`` frames and applies restart requests (from the keyboard) between blocks.

Latency. The first callback primes the output ring with ``Q = frames + (headroom_blocks -
1) * blocksize`` frames of silence (``frames``: the host's period): enough that the next
callbacks always find output while the worker turns each input block into an output block.
The engine's output for an input block then starts ``Q - blocksize`` frames after the end
of that block on the stream's clock, plus the device's own input and output latency; the
worker tells the engine exactly that before every block (``Engine.output_latency_s``), and
keeps it exact when a late block inserts silence or a backlog is dropped.

PortAudio (through sounddevice) is imported only here, only when live audio is asked for,
and its absence is reported with how to install it.
"""

from __future__ import annotations

import atexit
import gc
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from player.devices import DeviceChoice, device_table
from player.engine import Engine
from shared.cli_support import EXIT_ERROR
from shared.errors import DeviceError, first_line

PORTAUDIO_HINT = ("the PortAudio library is not installed; install it with "
                  "'sudo apt-get install libportaudio2' (Debian/Ubuntu) or 'brew install portaudio' (macOS)")


def import_sounddevice():
    """Import sounddevice, turning a missing PortAudio into a DeviceError with a hint."""
    try:
        import sounddevice
    except OSError:
        raise DeviceError(PORTAUDIO_HINT) from None
    except ImportError:
        raise DeviceError("the sounddevice package is missing; reinstall with 'pip install sounddevice'") from None
    return sounddevice


class Ring:
    """Single-producer single-consumer ring of float32 frames ``(capacity, channels)``.

    Writes and reads copy into/out of a preallocated array; no allocation per call.
    """

    def __init__(self, capacity: int, channels: int) -> None:
        self.buf = np.zeros((capacity, channels), dtype=np.float32)
        self.capacity = capacity
        self._write = 0  # total frames written (monotone)
        self._read = 0  # total frames read (monotone)

    @property
    def available(self) -> int:
        return self._write - self._read

    @property
    def free(self) -> int:
        return self.capacity - self.available

    def write(self, data: np.ndarray) -> bool:
        n = data.shape[0]
        if n > self.free:
            return False
        start = self._write % self.capacity
        first = min(n, self.capacity - start)
        self.buf[start:start + first] = data[:first]
        self.buf[: n - first] = data[first:]
        self._write += n
        return True

    def read_into(self, out: np.ndarray) -> bool:
        n = out.shape[0]
        if n > self.available:
            return False
        start = self._read % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self.buf[start:start + first]
        out[first:] = self.buf[: n - first]
        self._read += n
        return True


@dataclass
class LiveCounters:
    """Problems seen by the callback; shown to the user, never fatal."""

    callbacks: int = 0
    xruns: int = 0  # PortAudio reported an input overflow or output underflow
    dropped_blocks: int = 0  # input blocks lost because the engine fell behind
    late_blocks: int = 0  # output blocks played as silence because the engine was late
    skipped_blocks: int = 0  # output blocks dropped to bring the latency back after a stall
    late_frames: int = 0  # frames of silence played because the engine was late (they delay what follows)
    clipped_blocks: int = 0  # input blocks whose peak reached CLIP_LEVEL (the input gain is too high)


#: Seconds without a callback after which the device is taken for gone (unplugged, or its
#: audio server stopped: some host APIs then simply stop calling back).
SILENT_DEVICE_S = 2.0
#: Input peak (linear, full scale 1.0) counted as clipping: -0.1 dBFS.
CLIP_LEVEL = 10.0 ** (-0.1 / 20.0)
#: Floor of the reported input levels (dBFS): digital silence reads this.
LEVEL_FLOOR_DB = -120.0
#: Time constant (seconds) of the input RMS meter, and fall rate (dB per second) of its peak.
LEVEL_RMS_TIME_S = 0.3
LEVEL_PEAK_FALL_DB_S = 20.0


class LiveSession:
    """Connects an audio callback to the engine through rings and a worker thread.

    Input level: the callback keeps a running RMS (``LEVEL_RMS_TIME_S`` time constant) and a
    falling peak of the input in a preallocated array; read them as ``input_level_db`` and
    ``input_peak_db`` (dBFS: 0 dB is full scale, a full-scale sine reads -3 dB RMS).

    Restart: ``request_restart(x_s)`` (any thread) asks the worker to restart the engine at
    ``x_s`` seconds of X; it is applied between blocks, never inside the audio callback.

    Args:
        engine: the engine (its input and output rates are the stream's rate).
        blocksize: frames per engine block.
        in_channels: channels delivered by the input device.
        headroom_blocks: output queued beyond the host's period, in blocks (see the module
            docstring): 2 is the least that never runs dry when the worker is fast (it then
            has one host period per block); :func:`run_live` uses 2.5 (half a block more,
            for a chunk of X to decode or a busy machine), at the cost of that much latency.
        ring_blocks: capacity of each ring, in blocks (at least two of the longest callbacks).
        max_callback_frames: the most frames one callback may bring (metering and priming
            use buffers of this size, allocated once).
        on_block: called by the worker after each engine block with ``(input block, output
            block)`` (the rehearsal recorder; must be quick and never block).

    Attributes:
        device_latency_s: the stream's own input + output latency (set by :func:`run_live`).
        queue_frames: frames of output queued ahead of the engine's (see the module docstring).
    """

    def __init__(self, engine: Engine, blocksize: int, in_channels: int = 1, headroom_blocks: float = 2.0,
                 ring_blocks: int = 32, max_callback_frames: int = 8192,
                 on_block: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
        self.engine = engine
        self.blocksize = blocksize
        self.out_channels = engine.output_channels
        self.sr = float(getattr(engine, "input_sr", 48000))
        capacity = max(blocksize * ring_blocks, 2 * max_callback_frames)  # a burst of callbacks fits
        self.in_ring = Ring(capacity, in_channels)
        self.out_ring = Ring(capacity, self.out_channels)
        self.counters = LiveCounters()
        self.headroom_blocks = headroom_blocks
        self.on_block = on_block
        self.device_latency_s = 0.0
        # one writer each (the callback primes and counts late frames, the worker skips), so
        # no update is lost between the threads
        self._primed_frames = 0
        self._skipped_frames = 0
        self._primed = False
        self._max_frames = max_callback_frames
        self._zeros = np.zeros((max_callback_frames + int(np.ceil(headroom_blocks * blocksize)), self.out_channels),
                               np.float32)
        self._in_block = np.zeros((blocksize, in_channels), dtype=np.float32)
        self._scratch = np.zeros((blocksize, self.out_channels), dtype=np.float32)
        self._busy = False
        self._meter = np.zeros((max_callback_frames, in_channels), dtype=np.float32)
        self._level = np.zeros(2, dtype=np.float64)  # [falling peak (linear), mean square]
        self._restart_lock = threading.Lock()
        self._restart_s: float | None = None
        self.restarts = 0  # restarts applied by the worker
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.error: BaseException | None = None

    @property
    def queue_frames(self) -> int:
        """Frames of output queued ahead of the engine's: the priming, plus the silence of
        late blocks, minus the backlog dropped."""
        return self._primed_frames + self.counters.late_frames - self._skipped_frames

    @property
    def queue_s(self) -> float:
        """Seconds from the end of an input block until its output starts, on the stream's
        clock (the device's own latency not included)."""
        return (self.queue_frames - self.blocksize) / self.sr

    @property
    def latency_s(self) -> float:
        """What the engine looks ahead by: the device's latency plus :attr:`queue_s`."""
        return self.device_latency_s + self.queue_s

    @property
    def primed_latency_s(self) -> float:
        """:attr:`latency_s` as the stream started (before any late block moved it)."""
        return self.device_latency_s + (self._primed_frames - self.blocksize) / self.sr

    # ------------------------------------------------------------------ audio thread
    def callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info, status) -> None:
        """The PortAudio callback: copies and counters only."""
        c = self.counters
        c.callbacks += 1
        if status:
            c.xruns += 1
        if not self._primed:  # the first call tells the host's period: queue the headroom
            self._prime(frames)
        if frames <= self._max_frames and indata.shape[1] == self._meter.shape[1]:  # the level meter, in place
            a = self._meter[:frames]
            np.abs(indata, out=a)
            peak = float(a.max()) if frames else 0.0
            np.multiply(a, a, out=a)
            ms = float(a.mean()) if frames else 0.0
            lv = self._level
            if ms < 1e30:  # also false for NaN: a broken buffer must not poison the meter
                if peak >= CLIP_LEVEL:
                    c.clipped_blocks += 1
                decay, coeff = self._meter_coefficients(frames)
                held = lv[0] * decay
                lv[0] = peak if peak > held else held
                lv[1] += coeff * (ms - lv[1])
        if not self.in_ring.write(indata):
            c.dropped_blocks += 1
        if not self.out_ring.read_into(outdata):
            outdata.fill(0.0)
            c.late_blocks += 1
            c.late_frames += frames  # what follows plays that much later
        self._wake.set()

    def _prime(self, frames: int) -> None:
        want = frames + int(round((self.headroom_blocks - 1.0) * self.blocksize))
        want = max(0, min(want, self._zeros.shape[0]))
        self.out_ring.write(self._zeros[:want])
        self._primed_frames = want
        self._primed = True

    def _meter_coefficients(self, frames: int) -> tuple[float, float]:
        """Peak decay and RMS smoothing for a callback of ``frames`` (their time constants are
        in seconds, whatever the host's period)."""
        block_s = frames / self.sr
        return 10.0 ** (-LEVEL_PEAK_FALL_DB_S * block_s / 20.0), 1.0 - math.exp(-block_s / LEVEL_RMS_TIME_S)

    @property
    def input_level_db(self) -> float:
        """Recent RMS level of the input (dBFS, floored at ``LEVEL_FLOOR_DB``)."""
        ms = float(self._level[1])
        return max(LEVEL_FLOOR_DB, 10.0 * np.log10(ms)) if ms > 0.0 else LEVEL_FLOOR_DB

    @property
    def input_peak_db(self) -> float:
        """Recent peak of the input (dBFS; falls by ``LEVEL_PEAK_FALL_DB_S`` per second)."""
        peak = float(self._level[0])
        return max(LEVEL_FLOOR_DB, 20.0 * np.log10(peak)) if peak > 0.0 else LEVEL_FLOOR_DB

    # ------------------------------------------------------------------ restart
    def request_restart(self, x_s: float) -> None:
        """Ask the worker to restart the engine at ``x_s`` seconds of X (thread-safe; the
        latest request wins). Applied between blocks."""
        with self._restart_lock:
            self._restart_s = float(x_s)
        self._wake.set()

    @property
    def restart_pending(self) -> bool:
        return self._restart_s is not None

    def _apply_restart(self) -> None:
        with self._restart_lock:
            x_s, self._restart_s = self._restart_s, None
        if x_s is None:
            return
        self.engine.restart(x_s)
        self.restarts += 1

    # ------------------------------------------------------------------ worker thread
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._restart_s is not None:
                    self._busy = True  # before the request is taken: drain() sees no gap
                    self._apply_restart()
                    self._busy = False
                if self.in_ring.available < self.blocksize:
                    self._wake.wait(0.1)
                    self._wake.clear()
                    continue
                self._busy = True
                self.in_ring.read_into(self._in_block)
                self.engine.output_latency_s = self.latency_s
                out = self.engine.process(self._in_block)
                if not self.out_ring.write(out):
                    self.counters.late_blocks += 1
                if self.on_block is not None:
                    self.on_block(self._in_block, out)
                # after a stall, late blocks have pushed what follows later: drop the backlog
                # so the latency returns to what it was instead of staying long
                while (self.queue_frames - self._primed_frames >= self.blocksize
                       and self.out_ring.available >= self.blocksize):
                    self.out_ring.read_into(self._scratch)
                    self._skipped_frames += self.blocksize
                    self.counters.skipped_blocks += 1
                self._busy = False
        except BaseException as exc:  # noqa: BLE001 - reported by the caller, not lost in a thread
            self.error = exc

    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, name="engine", daemon=True)
        self._worker.start()

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until the worker has processed every queued input block and restart request
        (tests, file feeds)."""
        pause = threading.Event()
        deadline = time.monotonic() + timeout  # wall clock: a loaded machine stretches each wait
        self._wake.set()
        while ((self.in_ring.available >= self.blocksize or self._busy or self._restart_s is not None)
               and time.monotonic() < deadline and self.error is None and not self._stop.is_set()):
            pause.wait(0.001)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=5.0)


def _leave_portaudio_alone(sd) -> None:
    """A stream whose device or server went away cannot be closed: PortAudio's JACK host
    API asserts (aborts the process) when it tries, and again when it terminates at exit.
    Leave it open, and leave the process without PortAudio's exit handler, once our own
    files are closed and the error is printed (atexit runs this before sounddevice's)."""
    if getattr(sd, "__name__", "") != "sounddevice":  # a stand-in (tests): nothing to guard
        return

    def leave() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_ERROR)

    atexit.register(leave)


def _stop_on_sigterm():
    """SIGTERM (a service manager, ``kill``) stops a live run as Ctrl-C does: files closed,
    the recording finished. Returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


def list_devices() -> str:
    """A printable table of the audio devices PortAudio sees (host API, channels, rate)."""
    return device_table(import_sounddevice())


def open_engine_stream(sd, session: LiveSession, choice: DeviceChoice, latency: str | float, on_finished):
    """The duplex stream of ``session`` on ``choice``'s devices (one line on failure)."""
    try:
        return sd.Stream(samplerate=choice.samplerate, blocksize=0, dtype="float32",
                         channels=(session.in_ring.buf.shape[1], session.out_channels),
                         device=(choice.input, choice.output), latency=latency, callback=session.callback,
                         finished_callback=on_finished)
    except ValueError as exc:  # a device the host API refuses for these settings
        raise DeviceError(first_line(exc, 200)) from None
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot open the audio device: {first_line(exc, 200)}") from None


def run_live(engine: Engine, choice: DeviceChoice, *, blocksize: int, latency: str | float = "low",
             headroom_blocks: float = 2.5, on_tick: Callable[[LiveSession], None] | None = None,
             on_block: Callable[[np.ndarray, np.ndarray], None] | None = None, tick_s: float = 0.25,
             sd=None) -> LiveSession:
    """Run a duplex stream on ``choice`` until Ctrl-C; ``on_tick(session)`` runs a few times
    per second outside the audio callback (the display, the recorder's checks).

    Raises:
        DeviceError: the stream cannot open, or it stops by itself (a device that went away).
    """
    sd = sd or import_sounddevice()
    session = LiveSession(engine, blocksize, in_channels=1, headroom_blocks=headroom_blocks, on_block=on_block)
    finished = threading.Event()
    stream = open_engine_stream(sd, session, choice, latency, finished.set)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # no collector pauses while performing
    session.start()
    lost = False
    previous_term = _stop_on_sigterm()
    # known once the stream is open: set before it starts, so the first block is scheduled right
    session.device_latency_s = float(sum(stream.latency)) if isinstance(stream.latency, tuple) else float(stream.latency)
    try:
        stream.start()
        heard, last_heard = -1, time.monotonic()
        while session.error is None:
            if finished.wait(tick_s) or not stream.active:
                lost = True
                break
            if session.counters.callbacks != heard:
                heard, last_heard = session.counters.callbacks, time.monotonic()
            elif time.monotonic() - last_heard > SILENT_DEVICE_S:  # the host stopped calling back
                lost = True
                break
            if on_tick is not None:
                on_tick(session)
    except KeyboardInterrupt:
        pass
    except sd.PortAudioError as exc:
        lost = True
        raise DeviceError(f"the audio device failed: {first_line(exc, 200)}") from None
    finally:
        session.stop()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if gc_was_enabled:
            gc.enable()
        if lost:
            _leave_portaudio_alone(sd)
        else:
            try:
                stream.stop()
                stream.close()
            except sd.PortAudioError:
                _leave_portaudio_alone(sd)
    if session.error is not None:
        raise session.error
    if lost:
        raise DeviceError(f"the audio stream stopped by itself (was '{choice.output_name}' disconnected, or its "
                          f"server stopped?) after {engine.u_time_s:.1f} s")
    return session
