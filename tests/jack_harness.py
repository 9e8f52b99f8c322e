"""A real audio server for the live tests and the loopback benchmark: JACK's dummy driver
(no sound card), and a JACK client that plays a take into the player's input and records
what the player plays, sample by sample on the server's clock.

Needs Debian's ``jackd2`` (the server) and ``libportaudio2`` (for the player), and the
``JACK-Client`` Python package; :func:`jack_missing` says which is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from ctypes.util import find_library
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


def jack_missing() -> str | None:
    """Why a JACK loopback cannot run here (None when it can)."""
    if shutil.which("jackd") is None:
        return "jackd is not installed (apt-get install jackd2)"
    if find_library("portaudio") is None:
        return "PortAudio is not installed (apt-get install libportaudio2)"
    try:
        import jack  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"the JACK-Client package cannot load ({exc})"
    return None


@dataclass
class JackServer:
    """A running dummy JACK server: its ``name`` (for ``JACK_DEFAULT_SERVER``), rate, period."""

    name: str
    rate: int
    period: int
    process: subprocess.Popen

    def env(self) -> dict:
        """The environment of a process that should use this server."""
        return {**os.environ, "JACK_DEFAULT_SERVER": self.name, "JACK_NO_START_SERVER": "1"}


def stop(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not ended within ``grace_s`` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


#: JACK's shared registry (``/dev/shm/jack-shm-registry``) holds 8 servers. A server that is
#: killed (the dying-server test does it on purpose) stays in it until a server *of the same
#: name* starts; names that differ run to run (a pid in them) would fill it for good.
REGISTRY = Path("/dev/shm/jack-shm-registry")


def _start_jackd(name: str, rate: int, period: int) -> subprocess.Popen:
    return subprocess.Popen(["jackd", "-n", name, "--no-realtime", "-d", "dummy", "-r", str(rate), "-p", str(period)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_until_up(proc: subprocess.Popen, name: str, timeout_s: float) -> str | None:
    """None once a client can open server ``name``; else why jackd ended (or timed out)."""
    import jack

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            jack.Client("probe", servername=name, no_start_server=True).close()
            return None
        except jack.JackOpenError:
            if proc.poll() is not None:
                return proc.stderr.read()[-500:]
            if time.monotonic() > deadline:
                stop(proc, 5.0)
                return f"no client could connect within {timeout_s:.0f} s"
            time.sleep(0.1)


def reclaim_stale_registry() -> bool:
    """Remove JACK's server registry when no ``jackd`` runs on this machine: every entry in it
    is then a server that was killed, and the next server makes a new one. True if removed."""
    if not REGISTRY.exists() or subprocess.run(["pgrep", "-x", "jackd"], capture_output=True).returncode == 0:
        return False
    REGISTRY.unlink(missing_ok=True)
    return True


@contextmanager
def jack_server(rate: int = 48000, period: int = 256, timeout_s: float = 15.0) -> Iterator[JackServer]:
    """Start ``jackd`` with the dummy driver (no real-time scheduling: no privileges needed);
    stop it on exit.

    The name is the same from run to run (``karaoke-test-<rate>-<period>``), so a server left
    dead in JACK's registry is reclaimed by the next one; a second test run on the machine at
    the same time gets a name with its pid. A registry full of killed servers is removed
    when no server runs.
    """
    names = [f"karaoke-test-{rate}-{period}", f"karaoke-test-{rate}-{period}-{os.getpid()}"]
    failures = []
    for name in names:
        proc = _start_jackd(name, rate, period)
        failure = _wait_until_up(proc, name, timeout_s)
        if failure is not None and "Too many servers" in failure and reclaim_stale_registry():
            proc = _start_jackd(name, rate, period)
            failure = _wait_until_up(proc, name, timeout_s)
        if failure is None:
            break
        failures.append(" / ".join(dict.fromkeys(line for line in failure.splitlines() if line.strip())))
    else:
        raise RuntimeError(f"jackd did not start: {'; '.join(failures)}")
    try:
        yield JackServer(name, rate, period, proc)
    finally:
        stop(proc, 5.0)


class Loopback:
    """A JACK client that plays ``take`` (mono float32 at the server's rate) into another
    client's input and records that client's outputs, on the server's clock.

    ``recording[i]`` holds what the other client played in the cycle that carried
    ``take[i]`` to it; :meth:`calibrate` measures what the loop itself adds (JACK delays one
    edge of a cycle in the graph by a period).
    """

    def __init__(self, server: JackServer, channels: int, name: str = "loopback") -> None:
        import jack

        self.client = jack.Client(name, servername=server.name, no_start_server=True)
        self.rate, self.period = self.client.samplerate, self.client.blocksize
        self.feed = self.client.outports.register("take")
        self.recs = [self.client.inports.register(f"rec_{k + 1}") for k in range(channels)]
        self._take = np.zeros(0, dtype=np.float32)
        self.recording = np.zeros((0, channels), dtype=np.float32)
        self._pos = 0
        self._running = False
        self.done = threading.Event()
        self.client.set_process_callback(self._process)
        self.client.activate()

    def _process(self, frames: int) -> None:
        out = self.feed.get_array()
        if not self._running:
            out.fill(0.0)
            return
        pos, n = self._pos, min(frames, self._take.size - self._pos)
        out[:n] = self._take[pos:pos + n]
        out[n:] = 0.0
        for k, port in enumerate(self.recs):
            self.recording[pos:pos + n, k] = port.get_array()[:n]
        self._pos += n
        if self._pos >= self._take.size:
            self._running = False
            self.done.set()

    def play(self, take: np.ndarray, timeout_s: float) -> np.ndarray:
        """Play ``take`` from the next cycle on; the recording ``(len(take), channels)``."""
        self.start(take)
        return self.wait(timeout_s)

    def start(self, take: np.ndarray) -> None:
        """Start playing ``take`` (mono float32) from the next cycle on."""
        self._take = np.ascontiguousarray(take, dtype=np.float32)
        self.recording = np.zeros((self._take.size, len(self.recs)), dtype=np.float32)
        self._pos = 0
        self.done.clear()
        self._running = True

    @property
    def position(self) -> int:
        """Samples of the take played so far."""
        return self._pos

    def wait(self, timeout_s: float) -> np.ndarray:
        """Wait for the end of the take; the recording ``(len(take), channels)``."""
        if not self.done.wait(timeout_s):
            self._running = False
            raise TimeoutError(f"the take was not played within {timeout_s:.0f} s")
        return self.recording

    def connect_to(self, other_inputs: list[str], other_outputs: list[str]) -> None:
        """Feed the first of ``other_inputs``; record ``other_outputs`` (one per channel)."""
        for port in other_inputs + other_outputs:  # away from the dummy sound card
            for peer in self.client.get_all_connections(port):
                if peer.name.startswith("system:"):
                    if self.client.get_port_by_name(port).is_input:
                        self.client.disconnect(peer, port)
                    else:
                        self.client.disconnect(port, peer)
        self.client.connect(self.feed, other_inputs[0])
        for rec, out in zip(self.recs, other_outputs, strict=False):
            self.client.connect(out, rec)

    def close(self) -> None:
        self.client.deactivate()
        self.client.close()


def new_client_ports(loopback: Loopback, known: set[str], timeout_s: float = 30.0,
                     proc: subprocess.Popen | None = None) -> tuple[list[str], list[str]]:
    """The audio input and output ports of the client that appeared since ``known`` (the
    player's), once it has both; raises if ``proc`` exits first or nothing comes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the player exited ({proc.returncode}): {proc.stderr.read()[-800:]}")
        ports = [p for p in loopback.client.get_ports(is_audio=True) if p.name not in known]
        ins = sorted(p.name for p in ports if p.is_input)
        outs = sorted(p.name for p in ports if p.is_output)
        if ins and outs:
            return ins, outs
        time.sleep(0.05)
    raise TimeoutError("the player's JACK ports did not appear")


def port_names(loopback: Loopback) -> set[str]:
    return {p.name for p in loopback.client.get_ports(is_audio=True)}


@contextmanager
def running_player(server: JackServer, args: list[str], player: str, tty: bool = False) -> Iterator[subprocess.Popen]:
    """``player ARGS`` on ``server``; stopped on exit with SIGTERM, which the player takes as
    Ctrl-C (a SIGINT would be ignored when this runs in the background)."""
    master = slave = None
    if tty:  # a terminal for the keys (``proc.keys`` writes to it); plain status lines
        master, slave = os.openpty()
        args = [*args, "--plain"]
    else:
        args = [*args, "-q", "--no-keys"]
    proc = subprocess.Popen([player, *args], env=server.env(), stdin=slave if tty else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    proc.keys = (lambda text: os.write(master, text.encode())) if tty else None
    try:
        yield proc
    finally:
        if proc.poll() is None:
            stop(proc, 20.0)
        if tty:
            os.close(master)
            os.close(slave)


def echo_client(server: JackServer, name: str = "echo"):
    """A JACK client that copies its input to its output in the same cycle (calibration)."""
    import jack

    client = jack.Client(name, servername=server.name, no_start_server=True)
    inp, out = client.inports.register("in"), client.outports.register("out")

    @client.set_process_callback
    def process(frames):
        out.get_array()[:] = inp.get_array()

    client.activate()
    return client


def loop_delay(server: JackServer) -> int:
    """Samples the loopback itself adds (what a client that echoes in the same cycle shows
    in the recording)."""
    echo = echo_client(server)
    loop = Loopback(server, 1, name="calibration")
    try:
        loop.connect_to(["echo:in"], ["echo:out"])
        click = np.zeros(server.rate // 2, dtype=np.float32)
        click[server.rate // 4] = 1.0
        rec = loop.play(click, timeout_s=10.0)[:, 0]
        return int(np.argmax(np.abs(rec))) - server.rate // 4
    finally:
        loop.close()
        echo.deactivate()
        echo.close()


def player_exe() -> str:
    """The ``player`` command of this environment."""
    import sys

    return str(Path(sys.executable).with_name("player"))


def lag_of(signal: np.ndarray, reference: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The lag (samples) at which ``reference`` (mono) best matches ``signal`` (mono, at
    least as long), within ``0..max_lag``, and the normalised correlation there."""
    from scipy.signal import correlate

    n = reference.size
    seg = signal[: n + max_lag]
    corr = correlate(seg, reference, mode="valid", method="fft")
    energy = np.sqrt(np.convolve(seg * seg, np.ones(n), "valid") * float(reference @ reference)) + 1e-12
    k = int(np.argmax(corr / energy))
    return k, float(corr[k] / energy[k])


def first_loud(y: np.ndarray) -> int:
    """Index of ``y``'s first sample (mono) above 1 % of its peak: where the take starts."""
    return int(np.argmax(np.abs(y) > 0.01 * np.abs(y).max()))


def input_lags(fed: np.ndarray, take: np.ndarray, sr: int, window_s: float = 1.0, every_s: float = 0.5) -> np.ndarray:
    """For each sample of ``fed`` (what the loopback played into the player), how many
    samples later it lies in ``take`` (the player's recording of its input: the stream's
    clock), as int64 ``(len(fed),)``. Tracked window by window: an xrun of the dummy server
    can skip a period of the player's input (never the loopback's), and every later sample
    then lies a period earlier on the stream. Windows that match poorly (quiet, cut) keep the
    lag before them."""
    mono = lambda a: a.mean(axis=1) if a.ndim == 2 else a  # noqa: E731
    fed, take = mono(fed), mono(take)
    win, step, reach = int(window_s * sr), int(every_s * sr), sr // 2
    start = first_loud(fed)
    d, _ = lag_of(take[start:], fed[start:start + win], take.size - start - win)  # take index - fed index
    lags = np.full(fed.size, d, dtype=np.int64)
    for t in range(start, fed.size - win, step):
        lo = max(0, t + d - reach)
        if take.size - lo - win <= 0:
            break
        k, corr = lag_of(take[lo:], fed[t:t + win], min(2 * reach, take.size - lo - win))
        if corr >= 0.99:
            d = lo + k - t
        lags[t:] = d
    return lags


def measured_latency_s(fed: np.ndarray, looped: np.ndarray, take: np.ndarray, played: np.ndarray, blocksize: int,
                       sr: int, loop_delay: int, window_s: float = 1.0, every_s: float = 1.0) -> float:
    """The player's real delay from the end of an input block to the first sample of the
    output it answers, on the stream's clock, measured in a loopback: the delay most windows
    of the run share (a late block or an xrun of the dummy server moves it once, and the
    median of a run split evenly between two delays would be neither).

    ``fed``: what the loopback played into the player; ``looped``: what it recorded of the
    player's output (``loop_delay`` samples late by the loop itself); ``take`` and
    ``played``: what the player's ``--record`` kept (its input from the stream's start, and
    its engine's output blocks in order). For each window of the fed signal,
    :func:`input_lags` says where it lies on the stream's input clock; the loop recording,
    where the engine's output for that input was played. Input block ``k`` ends at input
    index ``(k + 1) * blocksize`` and its output starts at output index ``k * blocksize``:
    the delay is ``d_out - blocksize`` samples. The device's own latency is not in the loop
    (nothing is a sound card here): add it.
    """
    mono = lambda a: a.mean(axis=1) if a.ndim == 2 else a  # noqa: E731
    fed, looped, take, played = mono(fed), mono(looped), mono(take), mono(played)
    win, step, reach = int(window_s * sr), int(every_s * sr), sr // 2
    lags = input_lags(fed, take, sr, window_s)
    start = first_loud(fed)
    delays = []
    for t in range(start, fed.size - win - sr, step):
        m = t + int(lags[t])  # the engine's output for this input starts here (played index)
        if m < 0 or m + win > played.size or np.abs(played[m:m + win]).max() < 1e-3:
            continue
        lo = max(0, t - reach)
        k, c_out = lag_of(looped[lo:], played[m:m + win], min(2 * reach + sr, looped.size - lo - win))
        if c_out < 0.9:
            continue
        # played index m is heard at loop index lo + k, i.e. (lo + k - t) after fed index t,
        # which is input index m: the input's end of block is blocksize after its start
        delays.append(lo + k - t - loop_delay - blocksize)
    if len(delays) < 3:
        raise AssertionError(f"the loop's signals do not match ({len(delays)} windows)")
    values, counts = np.unique(np.asarray(delays), return_counts=True)
    return float(values[np.argmax(counts)]) / sr


def on_take_timeline(y: np.ndarray, lags: np.ndarray) -> np.ndarray:
    """``y`` (on the stream's clock) moved onto the fed take's: sample ``i`` of the result is
    ``y[i + lags[i]]`` (``lags`` from :func:`input_lags`), zeros where ``y`` has none."""
    idx = np.arange(lags.size) + lags
    ok = (idx >= 0) & (idx < len(y))
    out = np.zeros((lags.size, *y.shape[1:]), dtype=y.dtype)
    out[ok] = y[idx[ok]]
    return out


def at_rate(path: Path, rate: int, n: int) -> np.ndarray:
    """An audio file as float32 ``(n, channels)`` at ``rate`` (cut or padded)."""
    y, sr = sf.read(path, dtype="float32", always_2d=True)
    if sr != rate:
        y = soxr.resample(y, sr, rate).astype(np.float32)
    return np.vstack([y, np.zeros((max(0, n - len(y)), y.shape[1]), np.float32)])[:n]


def live_run(server: JackServer, bundle: Path, take: np.ndarray, record: Path, args: list[str],
             during=None) -> tuple[np.ndarray, int]:
    """Play ``take`` (mono, at the server's rate) through ``player run BUNDLE --record
    RECORD ARGS`` on ``server``; what the loop recorded, and the loop's own delay (samples).
    ``during(loopback, proc)``, if given, runs while the take plays (e.g. types keys)."""
    delay = loop_delay(server)
    loop = Loopback(server, 2)
    try:
        known = port_names(loop)
        with running_player(server, ["run", str(bundle), "--record", str(record), *args], player_exe(),
                            tty=during is not None) as proc:
            ins, outs = new_client_ports(loop, known, proc=proc)
            loop.connect_to(ins, outs)
            time.sleep(0.5)
            loop.start(take)
            if during is not None:
                during(loop, proc)
            looped = loop.wait(timeout_s=3 * take.size / server.rate + 30)
    finally:
        loop.close()
    if proc.returncode not in (0, -2, 130):
        raise RuntimeError(f"the player failed ({proc.returncode}): {proc.stderr.read()[-500:]}")
    return looped, delay


def shifted(y: np.ndarray, k: int) -> np.ndarray:
    """``y`` moved ``k`` samples earlier (later for ``k`` < 0), zeros where nothing is left."""
    out = np.zeros_like(y)
    if k >= 0:
        out[: len(y) - k] = y[k:]
    else:
        out[-k:] = y[: len(y) + k]
    return out


def live_figures(bundle: Path, take: np.ndarray, looped: np.ndarray, delay: int, record: Path, block_args: list[str],
                 ideal: np.ndarray, others: dict[str, np.ndarray] | None = None) -> dict:
    """The figures of a live run in the loopback (``looped``, ``delay``: from
    :func:`live_run`; ``record``: its ``--record`` folder; ``ideal``: the ideal karaoke on the
    take's timeline; ``others``: more outputs on that timeline to compare with, by name).

    ``assumed_ms`` against ``measured_ms``: the latency the player schedules for and the one
    measured in the loop (the device's own latency added: nothing here is a sound card).
    ``offset_NAME_ms``: how much later the live output plays what an output plays (median
    over the onsets where both play the same thing), for ``replay`` (file mode on the take
    the live engine recorded: the same blocks, the same path), ``replay_latency`` (the same
    played as through a device of the latency the live run assumed: it should be the live
    output itself) and ``others``.
    ``aud50_NAME`` / ``aud100_NAME``: % of the ideal's onsets heard within 50/100 ms;
    ``lag_gap_NAME_ms`` / ``lag_gap_median_NAME_ms``: the most (the median) the live
    output's audible lag differs from NAME's at those onsets (a sub-millisecond shift can
    move an onset across the 100-ms line, and the lag's alignment a frame or three).
    """
    from player.recorder import recorded_take
    from tests.audible import audible_lags, offset_s, within

    rate = int(sf.info(str(recorded_take(record))).samplerate)
    timing = json.loads((record / "timing.json").read_text())
    rec_take, _ = sf.read(recorded_take(record), dtype="float32")
    played, _ = sf.read(record / "played.flac", dtype="float32")
    loop_s = measured_latency_s(take, looped, rec_take, played, timing["blocksize"], rate, delay)
    device = timing["device_latency_s"]
    n = len(take)
    heard = shifted(looped, delay - int(round(device * rate)))  # the loop's delay out, the device's in
    lags = input_lags(take, rec_take, rate)  # take's clock -> the stream's, through any xrun
    outputs = {}
    for name, latency in (("replay", 0.0), ("replay_latency", timing["assumed_latency_s"])):
        replay_wav = record.parent / f"{record.name}_{name}.wav"
        subprocess.run([player_exe(), "run", str(bundle), "--input", str(record), "--output", str(replay_wav), "-q",
                        "--force", "--latency", repr(latency), "--samplerate", str(rate), *block_args], check=True)
        outputs[name] = on_take_timeline(at_rate(replay_wav, rate, n + int(lags.max(initial=0))), lags)
    outputs.update(others or {})
    row = {"blocksize": timing["blocksize"], "assumed_ms": round(1000 * timing["assumed_latency_s"], 2),
           "primed_ms": round(1000 * timing["primed_latency_s"], 2),
           "measured_ms": round(1000 * (loop_s + device), 2), "device_ms": round(1000 * device, 2)}
    for name, reference in outputs.items():
        offset, matched = offset_s(heard, reference, rate)
        row[f"offset_{name}_ms"] = round(1000 * offset, 1)
        row[f"matched_{name}"] = matched
    heard_lags = {}
    for name, signal_ in {"live": heard, **outputs}.items():
        heard_lags[name] = audible_lags(signal_, ideal, rate)
        row[f"aud50_{name}"] = round(within(heard_lags[name], 0.05), 1)
        row[f"aud100_{name}"] = round(within(heard_lags[name], 0.1), 1)
    for name in outputs:
        gap = np.abs(heard_lags["live"] - heard_lags[name])
        row[f"lag_gap_{name}_ms"] = round(1000 * float(np.max(gap)), 1)
        row[f"lag_gap_median_{name}_ms"] = round(1000 * float(np.median(gap)), 1)
    row.update(xruns=timing["xruns"], late=timing["late_blocks"], dropped=timing["dropped_blocks"],
               cpu_share=timing["cpu_share"])
    return row
