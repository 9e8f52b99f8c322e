"""Live audio: a duplex PortAudio stream around the same engine the file mode drives.

The audio callback only copies samples between the device and two preallocated ring
buffers, meters the input into preallocated storage and counts problems; a worker thread
runs the engine on whole blocks with a headroom of ``headroom_blocks`` blocks of output
already queued, and applies restart requests (from the keyboard) between blocks.
PortAudio (through sounddevice) is imported only here, only when live audio is asked for,
and its absence is reported with how to install it.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from player.engine import Engine
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
    clipped_blocks: int = 0  # input blocks whose peak reached CLIP_LEVEL (the input gain is too high)


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
        engine: the engine (its input rate is the stream's rate).
        blocksize: frames per callback.
        in_channels: channels delivered by the input device.
        headroom_blocks: output blocks queued ahead (latency vs safety).
        ring_blocks: capacity of each ring, in blocks.
    """

    def __init__(self, engine: Engine, blocksize: int, in_channels: int = 1, headroom_blocks: int = 2,
                 ring_blocks: int = 32) -> None:
        self.engine = engine
        self.blocksize = blocksize
        self.out_channels = engine.output_channels
        self.in_ring = Ring(blocksize * ring_blocks, in_channels)
        self.out_ring = Ring(blocksize * ring_blocks, self.out_channels)
        self.counters = LiveCounters()
        self.headroom_blocks = headroom_blocks
        self.out_ring.write(np.zeros((blocksize * headroom_blocks, self.out_channels), np.float32))
        self._in_block = np.zeros((blocksize, in_channels), dtype=np.float32)
        self._scratch = np.zeros((blocksize, self.out_channels), dtype=np.float32)
        self._busy = False
        sr = float(getattr(engine, "input_sr", 48000))
        block_s = blocksize / sr
        self._meter = np.zeros((blocksize, in_channels), dtype=np.float32)
        self._level = np.zeros(2, dtype=np.float64)  # [falling peak (linear), mean square]
        self._ms_coeff = float(1.0 - np.exp(-block_s / LEVEL_RMS_TIME_S))
        self._peak_decay = float(10.0 ** (-LEVEL_PEAK_FALL_DB_S * block_s / 20.0))
        self._restart_lock = threading.Lock()
        self._restart_s: float | None = None
        self.restarts = 0  # restarts applied by the worker
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self.error: BaseException | None = None

    # ------------------------------------------------------------------ audio thread
    def callback(self, indata: np.ndarray, outdata: np.ndarray, frames: int, time_info, status) -> None:
        """The PortAudio callback: copies and counters only."""
        c = self.counters
        c.callbacks += 1
        if status:
            c.xruns += 1
        if indata.shape == self._meter.shape:  # the level meter, in place
            a = self._meter
            np.abs(indata, out=a)
            peak = float(a.max())
            np.multiply(a, a, out=a)
            ms = float(a.mean())
            lv = self._level
            if ms < 1e30:  # also false for NaN: a broken buffer must not poison the meter
                if peak >= CLIP_LEVEL:
                    c.clipped_blocks += 1
                held = lv[0] * self._peak_decay
                lv[0] = peak if peak > held else held
                lv[1] += self._ms_coeff * (ms - lv[1])
        if not self.in_ring.write(indata):
            c.dropped_blocks += 1
        if not self.out_ring.read_into(outdata):
            outdata.fill(0.0)
            c.late_blocks += 1
        self._wake.set()

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
                out = self.engine.process(self._in_block)
                if not self.out_ring.write(out):
                    self.counters.late_blocks += 1
                # after a stall the queue holds more than the headroom: drop the oldest output so
                # the latency returns to what it was instead of staying long for the whole session
                while self.out_ring.available > (self.headroom_blocks + 1) * self.blocksize:
                    self.out_ring.read_into(self._scratch)
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


def list_devices() -> str:
    """A printable table of the audio devices PortAudio sees."""
    return str(import_sounddevice().query_devices())


def run_live(engine: Engine, *, blocksize: int, input_device: str | int | None = None,
             output_device: str | int | None = None, latency: str | float = "low",
             on_tick: Callable[[LiveSession, float], None] | None = None, tick_s: float = 0.25) -> LiveCounters:
    """Run a duplex stream until Ctrl-C; ``on_tick(session, stream_latency_s)`` runs a few
    times per second outside the audio callback (for the display)."""
    sd = import_sounddevice()
    session = LiveSession(engine, blocksize, in_channels=1)
    try:
        stream = sd.Stream(samplerate=engine.input_sr, blocksize=blocksize, dtype="float32",
                           channels=(1, engine.output_channels), device=(input_device, output_device),
                           latency=latency, callback=session.callback)
    except ValueError as exc:  # unknown or ambiguous device name
        raise DeviceError(first_line(exc, 200)) from None
    except sd.PortAudioError as exc:
        raise DeviceError(f"cannot open the audio device: {exc}") from None
    engine.process(np.zeros((blocksize, 1), np.float32))  # warm up kernels before the stream starts
    gc_was_enabled = gc.isenabled()
    gc.disable()  # no collector pauses while performing
    session.start()
    try:
        with stream:
            latency_s = float(sum(stream.latency)) if isinstance(stream.latency, tuple) else float(stream.latency)
            # what the player hears lags the input block by the device and the queued output
            engine.output_latency_s = latency_s + session.headroom_blocks * blocksize / engine.input_sr
            while session.error is None:
                threading.Event().wait(tick_s)
                if on_tick is not None:
                    on_tick(session, latency_s)
    except KeyboardInterrupt:
        pass
    finally:
        session.stop()
        if gc_was_enabled:
            gc.enable()
    if session.error is not None:
        raise session.error
    return session.counters
