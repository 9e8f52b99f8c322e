"""The soloist-activity gate and where a recording's music starts, on synthetic signals."""

from __future__ import annotations

import numpy as np

from player.activity import ActivityDetector
from shared.audio import first_sound_s
from shared.spectral import AnalysisParams, OnlineSpectrum

PARAMS = AnalysisParams()
SR = PARAMS.sr


def room_noise(seconds: float, db: float, seed: int) -> np.ndarray:
    """Pink-ish noise (white noise through a one-pole low-pass) at ``db`` dBFS RMS."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(int(seconds * SR))
    pink = np.empty_like(white)
    acc = 0.0
    for i, v in enumerate(white):  # small signals: a plain loop is fast enough here
        acc = 0.95 * acc + v
        pink[i] = acc
    return (pink / np.sqrt(np.mean(pink**2)) * 10 ** (db / 20)).astype(np.float32)


def tone(seconds: float, db: float, f0: float = 440.0, envelope_db: np.ndarray | None = None) -> np.ndarray:
    """A harmonic tone with vibrato at ``db`` dBFS peak, optionally with a slow level curve
    ``envelope_db`` (dB, resampled over the tone's length)."""
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.003 * np.sin(2 * np.pi * 5.5 * t))) / SR
    y = sum(np.sin(k * phase) / k for k in range(1, 7))
    y = y / np.abs(y).max() * 10 ** (db / 20)
    if envelope_db is not None:
        y *= 10 ** (np.interp(t, np.linspace(0, seconds, envelope_db.size), envelope_db) / 20)
    return y.astype(np.float32)


def gate(signal: np.ndarray) -> np.ndarray:
    """Per analysis frame: the gate's decision ``(n_frames,)`` bool."""
    spectrum, detector = OnlineSpectrum(PARAMS), ActivityDetector(PARAMS)
    hop = PARAMS.fine_hop
    return np.array([detector.update(spectrum.push(signal[i:i + hop]))
                     for i in range(0, signal.size - hop + 1, hop)])


def frames(a_s: float, b_s: float) -> slice:
    return slice(int(round(a_s / PARAMS.fine_period_s)), int(round(b_s / PARAMS.fine_period_s)))


def test_room_noise_before_the_first_note_does_not_open_the_gate():
    noise = room_noise(16.0, -55.0, seed=1)
    signal = noise.copy()
    signal[int(2 * SR):int(5 * SR)] += tone(3.0, -12.0)
    signal[int(14 * SR):int(16 * SR)] += tone(2.0, -12.0, f0=523.0)
    active = gate(signal)
    assert not active[frames(0.2, 1.95)].any()  # the wait before the first note
    assert active[frames(2.1, 4.9)].mean() > 0.98
    assert active[frames(5.3, 13.9)].mean() < 0.02  # a 9-s rest: room noise only
    assert active[frames(14.1, 15.9)].mean() > 0.98  # back in


def test_a_long_legato_with_dynamics_stays_active():
    # 20 s of continuous playing, crescendi and diminuendi over 21 dB (forte to piano; the
    # gate allows 30 dB below the loudest recent frame, less its threshold), no quiet
    # moment: the window's quiet frames are playing, not the room. (With 20 dB, a piano
    # passage after a forte one was taken for silence: measured on a held-out quartet, the
    # follower ran on at the tempo through at least 1.4 s of playing after a fermata.)
    envelope = np.array([0, -21, -6, -20, 0, -8, -21, -4, 0], dtype=float)
    signal = room_noise(21.0, -60.0, seed=2)
    signal[SR:] += tone(20.0, -10.0, envelope_db=envelope)
    active = gate(signal)
    assert not active[frames(0.2, 0.95)].any()
    assert active[frames(1.1, 20.9)].mean() > 0.99


def test_first_sound_skips_leading_silence_and_room_tone():
    head = np.concatenate([np.zeros(int(0.3 * SR)), room_noise(0.5, -70.0, seed=3), tone(2.0, -10.0)])
    stereo = np.stack([head, 0.5 * head], axis=1)
    assert abs(first_sound_s(stereo, SR) - 0.8) <= 0.011
    assert first_sound_s(np.zeros(SR), SR) == 0.0
    assert first_sound_s(tone(1.0, -20.0), SR) == 0.0


def test_playing_from_the_first_frame_opens_the_gate():
    # a take that begins on a note (started mid-piece): its quiet frames are soft playing,
    # tonal, so they are not taken for the room
    envelope = np.array([0, -10, -4, -10, 0], dtype=float)
    signal = tone(12.0, -10.0, envelope_db=envelope) + room_noise(12.0, -60.0, seed=4)
    active = gate(signal)
    assert active[frames(0.3, 11.9)].mean() > 0.99
