"""The per-frame kernels against the numpy formulations they replaced (session 36): the same
values to float rounding (the kernels sum in another order), on random and edge inputs."""

from __future__ import annotations

import numpy as np
import pytest

from player import echo, follower, separation
from player.activity import _band_power
from shared.spectral import (
    AnalysisParams,
    OnlineSpectrum,
    OnsetStrength,
    analysis_window,
    observation_features,
    onset_filterbank,
)

P = AnalysisParams()
RNG = np.random.default_rng(11)


def test_prediction_is_the_truncated_convolution_with_a_normalised_gaussian():
    posterior = RNG.uniform(0, 1, 480)
    steps = np.arange(12, dtype=np.float64)
    for mean, std in ((5.0, 0.5), (0.3, 2.0), (11.5, 0.7)):
        out = np.empty(480)
        follower._predicted(posterior, steps, mean, std, np.empty(steps.size), out)
        weights = np.exp(-0.5 * ((steps - mean) / std) ** 2)
        expected = np.convolve(posterior, weights / weights.sum())[:480]
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-300)


def test_onset_weighting_scales_by_the_term_with_its_peak_at_one():
    heard, unheard = RNG.normal(0, 2, 900), RNG.normal(0, 2, 900)
    posterior = RNG.uniform(0, 1, 480)
    for lo, onset in ((0, 0.0), (200, 0.4), (420, 1.0)):
        out = posterior.copy()
        follower._weigh_by_onset(heard, unheard, lo, onset, out)
        term = heard[lo:lo + 480] * onset + unheard[lo:lo + 480] * (1.0 - onset)
        np.testing.assert_allclose(out, posterior * np.exp(term - term.max()), rtol=1e-12)


def test_floor_normalisation_and_local_mean():
    posterior = RNG.uniform(0, 1, 480) ** 8
    for mode, reach, halfwidth in ((0, 10, 5), (240, 30, 5), (479, 5, 3)):
        a = posterior.copy()
        follower._floor_and_normalise(a, mode, reach, 1e-3)
        expected = posterior.copy()
        expected[max(0, mode - reach): mode + reach + 1] += 1e-3
        expected /= expected.sum()
        np.testing.assert_allclose(a, expected, rtol=1e-12)
        local = np.empty(2)
        follower._local_mean(a, mode, halfwidth, local)
        i0, i1 = max(0, mode - halfwidth), min(a.size, mode + halfwidth + 1)
        assert local[0] == pytest.approx(a[i0:i1].sum(), rel=1e-12)
        assert local[1] == pytest.approx((a[i0:i1] * np.arange(i0, i1)).sum() / a[i0:i1].sum(), rel=1e-12)


def test_detune_update_pruning_and_mixture():
    log_w = np.array([-3.0, -0.5, 0.0, -9.0, -1.2])
    evidence = np.array([-40.0, -41.0, -39.5, -1e300, -45.0])
    scored = np.array([True, True, True, False, True])
    out = log_w.copy()
    assert follower._forget_and_add(out, evidence, scored, 0.9, 0.2) == 4
    expected = np.where(scored, 0.9 * log_w + 0.2 * (evidence - evidence.max()), log_w)
    np.testing.assert_allclose(out, expected, rtol=1e-15)
    near = np.empty(5, dtype=bool)
    follower._near_favourite(log_w, 1.0, np.array([False, False, False, True, False]), near)
    np.testing.assert_array_equal(near, [False, True, True, True, False])
    cents = np.array([-40.0, -20.0, 0.0, 20.0, 40.0])
    w = np.exp(log_w - log_w.max())
    assert follower._mixture_mean(log_w, cents) == pytest.approx((w @ cents) / w.sum(), rel=1e-12)


def test_hellinger_overlap_of_two_observations():
    u = RNG.uniform(0, 1, P.n_obs_bins).astype(np.float32)
    u /= u.sum()
    prev = np.sqrt(RNG.dirichlet(np.ones(P.n_obs_bins))).astype(np.float32)
    root = np.empty(P.n_obs_bins, dtype=np.float32)
    overlap = follower._root_overlap(u, root, prev)
    np.testing.assert_allclose(root, np.sqrt(u), rtol=1e-6)
    assert overlap == pytest.approx(float(np.dot(np.sqrt(u).astype(np.float64), prev)), rel=1e-5)
    assert follower._root_overlap(u, root, np.sqrt(u)) == pytest.approx(1.0, abs=1e-5)  # itself: distance 0


@pytest.mark.parametrize("scale", [1.0, 1e-6, 0.0])
def test_observation_features_are_the_compressed_normalised_band(scale):
    mag = (RNG.uniform(0, 1, (3, P.n_bins)) * scale).astype(np.float32)
    feats = observation_features(mag, P)
    band = mag[:, P.obs_bins].astype(np.float64)
    if scale == 0.0:
        np.testing.assert_allclose(feats, 1.0 / P.n_obs_bins)  # silence: the uniform vector
        return
    comp = np.log1p(P.compression_gain * band / band.max(axis=1, keepdims=True))
    np.testing.assert_allclose(feats, comp / comp.sum(axis=1, keepdims=True), rtol=2e-5)
    out = np.empty(P.n_obs_bins, dtype=np.float32)
    assert observation_features(mag[1], P, out=out) is out
    np.testing.assert_array_equal(out, feats[1])


def test_onset_bands_over_their_own_bins_are_the_dense_product():
    bank = onset_filterbank(P)
    onsets = OnsetStrength(P, bank)
    mag = RNG.uniform(0, 1, P.n_bins).astype(np.float32)
    energies = np.empty(P.onset_bands, dtype=np.float32)
    from shared.spectral import _bank_energies

    top = _bank_energies(onsets._bank, onsets._first, onsets._stop, mag, energies)
    dense = bank.astype(np.float64) @ mag
    np.testing.assert_allclose(energies, dense, rtol=1e-5)
    assert top == pytest.approx(dense.max(), rel=1e-5)


def test_onset_strength_rises_at_a_new_note_and_not_on_a_held_one():
    onsets = OnsetStrength(P)
    tone = np.zeros(P.n_bins, dtype=np.float32)
    tone[40:44] = 1.0
    held = [onsets.push(tone) for _ in range(30)]
    new_note = tone.copy()
    new_note[90:94] = 1.0
    rise = onsets.push(new_note)
    assert max(held[10:]) < 0.05 and rise > 0.5


def test_the_spectrum_slides_one_hop_and_windows_the_latest_n_fft_samples():
    spectrum = OnlineSpectrum(P)
    signal = RNG.normal(0, 0.1, 5 * P.fine_hop).astype(np.float32)
    for k in range(5):
        mag = spectrum.push(signal[k * P.fine_hop:(k + 1) * P.fine_hop]).copy()
    latest = np.concatenate([np.zeros(P.n_fft, np.float32), signal])[-P.n_fft:]
    expected = np.abs(np.fft.rfft(latest * analysis_window(P.n_fft)))
    np.testing.assert_allclose(mag, expected, rtol=1e-4, atol=1e-4 * expected.max())


def test_band_power_and_mean_log():
    mag = RNG.uniform(0, 1, P.n_bins).astype(np.float32)
    out = np.empty(2)
    _band_power(mag, 10, 300, out)
    band = mag[10:300].astype(np.float64)
    assert out[0] == pytest.approx(np.dot(band, band), rel=1e-6)  # (float32 squares, as numpy's float32 dot)
    assert out[1] == pytest.approx(np.log(band + 1e-12).mean(), rel=1e-12)


def test_leak_similarity_is_the_running_mean_cosine_per_lag():
    lo, n = 9, 50
    out_c = RNG.uniform(0, 1, (6, n)).astype(np.float32)
    out_c[3] = 0.0  # a silent output frame counts 0
    norms = np.sqrt((out_c.astype(np.float64) ** 2).sum(axis=1))
    in_mag = RNG.uniform(0, 1, 80).astype(np.float32)
    similarity = RNG.uniform(0, 1, 5)
    before = similarity.copy()
    root = np.empty(n, dtype=np.float32)
    power = echo._track_similarity(in_mag, lo, root, out_c, norms, 7, similarity, 4)
    x = np.sqrt(in_mag[lo:lo + n].astype(np.float64))
    for lag in range(5):
        row = (7 - lag) % 6
        now = 0.0 if norms[row] == 0 else out_c[row] @ x / (norms[row] * np.linalg.norm(x))
        assert similarity[lag] == pytest.approx(before[lag] + (now - before[lag]) / 4, rel=1e-6)
    assert power == pytest.approx(float((in_mag[lo:lo + n].astype(np.float64) ** 2).sum()), rel=1e-6)
    assert echo._band_root(in_mag, lo, root) == pytest.approx(np.linalg.norm(x), rel=1e-6)


def test_separation_kept_ratio_and_smoothed_gain():
    h = RNG.uniform(0, 2, (2, 8))
    w = RNG.uniform(0, 1, (8, 64))
    support = RNG.uniform(0, 1, 64)
    ratio = np.empty(64)
    separation._kept_ratio(h, w, 0.7, support, True, ratio)
    tutti = h[0] @ w
    kept = np.maximum(h[0] - 0.7 * h[1], 0.0) @ w
    tiny = 1e-6 * tutti.max() + 1e-12
    plain = np.clip((kept + tiny) / (tutti + tiny), 0.0, 1.0)
    np.testing.assert_allclose(ratio, 1.0 - (1.0 - plain) * support, rtol=1e-12)
    separation._kept_ratio(h, w, 0.7, support, False, ratio)
    np.testing.assert_allclose(ratio, plain, rtol=1e-12)
    history = RNG.uniform(0, 1, (4, 64))
    last = RNG.uniform(0, 1, 64)
    gain = np.empty(64)
    expected_history = history.copy()
    expected_history[2] = 1.0 - 0.6 * (1.0 - last)
    separation._smoothed_gain(history, 2, last, 0.6, 2.0, gain)
    np.testing.assert_allclose(history, expected_history, rtol=1e-15)
    np.testing.assert_allclose(gain, expected_history.mean(axis=0) ** 2, rtol=1e-12)


def test_the_vocoders_gain_is_clipped_and_nan_is_silence():
    from player.vocoder import _clip_gain

    gain = np.array([-1.0, 0.0, 0.25, 1.0, 3.0, np.nan, np.inf, -np.inf])
    _clip_gain(gain)
    np.testing.assert_array_equal(gain, [0.0, 0.0, 0.25, 1.0, 1.0, 0.0, 1.0, 0.0])
