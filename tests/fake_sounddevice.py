"""A stand-in for the ``sounddevice`` module: devices with names, host APIs, channels and
the rates they accept, and a duplex stream whose thread feeds a take through the session's
callback (as PortAudio would, one block per call) and then presses Ctrl-C."""

from __future__ import annotations

import _thread
import threading
import time

import numpy as np


class FakeDuplexStream:
    """Calls the session's callback the way PortAudio does: preallocated ``indata`` and
    ``outdata`` arrays, one block per call; waits for the worker between calls."""

    def __init__(self, session, in_channels: int = 1):
        self.session = session
        self.blocksize = session.blocksize
        self.indata = np.zeros((self.blocksize, in_channels), np.float32)
        self.outdata = np.zeros((self.blocksize, session.out_channels), np.float32)
        self.played: list[np.ndarray] = []

    def feed(self, u: np.ndarray, status=0, drain: bool = True) -> None:
        n = self.blocksize
        for i in range(0, len(u) - n + 1, n):
            self.indata[:] = u[i:i + n].reshape(n, -1)
            self.outdata.fill(np.nan)  # whatever the device left there must be overwritten
            self.session.callback(self.indata, self.outdata, n, None, status)
            self.played.append(self.outdata.copy())
            if drain:
                self.session.drain()


class PortAudioError(Exception):
    pass


class FakeDevice(dict):
    def __init__(self, name, hostapi=0, inputs=1, outputs=2, rate=48000.0, rates=(44100, 48000)):
        super().__init__(name=name, hostapi=hostapi, max_input_channels=inputs, max_output_channels=outputs,
                         default_samplerate=float(rate), default_low_input_latency=0.01,
                         default_low_output_latency=0.01)
        self.rates = tuple(rates)


class FakeSoundDevice:
    """Stands for the sounddevice module.

    Args:
        u: the take the stream plays into the callback (None: silence until stopped).
        devices: the devices (default: one duplex device at 48 kHz, 44.1 kHz accepted too).
        default: indices of the default input and output devices.
        linger_s: seconds the stream runs on after the take (a few ticks of the display).
        lose_device_after_s: the stream stops by itself after this long (a device unplugged).
    """

    PortAudioError = PortAudioError

    def __init__(self, u=None, devices=None, default=(0, 0), linger_s=0.8, lose_device_after_s=None):
        self.u = u
        self.devices = devices or [FakeDevice("Fake duplex")]
        self.default = type("Default", (), {"device": list(default)})()
        self.linger_s = linger_s
        self.lose_device_after_s = lose_device_after_s
        self.streams = []

    def query_hostapis(self):
        return ({"name": "ALSA"}, {"name": "JACK Audio Connection Kit"})

    def query_devices(self, device=None, kind=None):
        if kind is None and device is None:
            return list(self.devices)
        if device is None:
            index = self.default.device[0 if kind == "input" else 1]
            if index < 0:
                raise PortAudioError(f"no default {kind} device")
        elif isinstance(device, int):
            if not 0 <= device < len(self.devices):
                raise ValueError(f"No device with index {device}")
            index = device
        else:
            found = [i for i, d in enumerate(self.devices) if device.lower() in d["name"].lower()
                     and d[f"max_{kind}_channels"] > 0]
            if not found:
                raise ValueError(f"No {kind} device matching {device!r}")
            if len(found) > 1:
                raise ValueError(f"Multiple {kind} devices found for {device!r}")
            index = found[0]
        return {**self.devices[index], "index": index}

    def _check(self, device, samplerate, kind):
        d = self.devices[device]
        if d[f"max_{kind}_channels"] < 1 or int(samplerate) not in d.rates:
            raise PortAudioError("Invalid sample rate [PaErrorCode -9997]")

    def check_input_settings(self, device=None, channels=None, dtype=None, samplerate=None):
        self._check(device, samplerate, "input")

    def check_output_settings(self, device=None, channels=None, dtype=None, samplerate=None):
        self._check(device, samplerate, "output")

    def Stream(self, *, samplerate, blocksize, dtype, channels, device, latency, callback, finished_callback=None):
        stream = FakeStream(self, samplerate, channels, callback, finished_callback)
        self.streams.append(stream)
        return stream


class FakeStream:
    latency = (0.01, 0.02)

    def __init__(self, sd, samplerate, channels, callback, finished_callback):
        self.sd, self.samplerate, self.channels = sd, samplerate, channels
        self.callback, self.finished_callback = callback, finished_callback
        self.session = callback.__self__
        self._thread = None
        self._open = False
        self.active = False

    def _run(self):
        fake = FakeDuplexStream(self.session, in_channels=self.channels[0])
        if self.sd.u is not None:
            fake.feed(self.sd.u)
        if self.sd.lose_device_after_s is not None:
            time.sleep(self.sd.lose_device_after_s)
            self.active = False
            if self.finished_callback is not None:
                self.finished_callback()  # PortAudio stops the stream: the device went away
            return
        time.sleep(self.sd.linger_s)  # a few ticks of the display
        if self._open and self.session.error is None:
            _thread.interrupt_main()  # Ctrl-C

    def start(self):
        self._open = self.active = True
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self):
        self._open = self.active = False
        if self._thread is not None:
            self._thread.join(timeout=10)

    def close(self):
        self.closed = True


def silence(seconds: float, sr: int) -> np.ndarray:
    return np.zeros(int(seconds * sr), np.float32)
