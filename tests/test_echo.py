"""The leak canceller: finds the loop delay and gain of the player's own output in the
input, subtracts it, and leaves an input without leak alone."""

import numpy as np

from player.echo import LeakCanceller, LeakConfig
from shared.spectral import AnalysisParams

P = AnalysisParams()


def harmonic_spectrum(f0: float, n_harm: int = 8) -> np.ndarray:
    """A magnitude spectrum ``(n_bins,)`` with peaks at the harmonics of ``f0``."""
    freqs = np.arange(P.n_bins) * P.sr / P.n_fft
    mag = np.zeros(P.n_bins)
    for h in range(1, n_harm + 1):
        mag += np.exp(-0.5 * ((freqs - h * f0) / 8.0) ** 2) / h
    return mag.astype(np.float32)


def scene(n_frames: int, lag: int, gain: float, seed: int = 0):
    """Solo notes (input) and accompaniment chords (output) changing at their own times;
    the input also holds the output ``lag`` frames late, times ``gain``."""
    rng = np.random.default_rng(seed)
    solo_f0 = rng.uniform(400, 900, n_frames // 12 + 1).repeat(12)[:n_frames]
    acc_f0 = rng.uniform(100, 300, n_frames // 25 + 1).repeat(25)[:n_frames]
    solo_on = (np.arange(n_frames) % 12) < 10  # short gaps between notes
    out = np.stack([harmonic_spectrum(f) for f in acc_f0])
    solo = np.stack([harmonic_spectrum(f) * on for f, on in zip(solo_f0, solo_on, strict=True)])
    leak = np.zeros_like(out)
    leak[lag:] = out[: n_frames - lag]
    noise = 1e-3 * rng.random(out.shape).astype(np.float32)
    return solo, out, solo + gain * leak + noise


def run(canceller: LeakCanceller, out, inp):
    cleaned = []
    for o, x in zip(out, inp, strict=True):
        canceller.push_output(o)
        cleaned.append(canceller.cancel(x).copy())
    return np.array(cleaned)


def test_finds_the_loop_delay_and_removes_the_leak():
    solo, out, inp = scene(1200, lag=7, gain=0.8)
    canceller = LeakCanceller(P)
    cleaned = run(canceller, out, inp)
    assert canceller.lag == 7
    assert 0.6 < canceller.gain < 1.6, canceller.gain
    late = slice(900, None)  # after the estimate has settled
    leak_in = np.sum((inp[late] - solo[late]) ** 2)
    leak_left = np.sum(np.maximum(cleaned[late] - solo[late], 0.0) ** 2)
    assert leak_left < 0.1 * leak_in, leak_left / leak_in  # at least 10 dB of the leak gone
    kept = np.sum(np.minimum(cleaned[late], solo[late]) ** 2) / np.sum(solo[late] ** 2)
    assert kept > 0.5, kept  # the solo itself mostly stays


def test_leaves_an_input_without_leak_alone():
    solo, out, inp = scene(1200, lag=7, gain=0.0)
    canceller = LeakCanceller(P)
    cleaned = run(canceller, out, inp)
    assert canceller.lag == -1 and canceller.gain == 0.0
    np.testing.assert_array_equal(cleaned, inp)


def test_disabled_is_identity():
    solo, out, inp = scene(300, lag=3, gain=1.0)
    cleaned = run(LeakCanceller(P, LeakConfig(enabled=False)), out, inp)
    np.testing.assert_array_equal(cleaned, inp)
