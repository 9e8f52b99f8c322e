"""Spectral analysis: shapes, rates, feature normalisation, detuned templates, onset strength."""

import numpy as np
import pytest

from shared.spectral import (
    AnalysisParams,
    OnlineSpectrum,
    OnsetStrength,
    QuantizedTemplates,
    detune_spectrum,
    log_templates,
    observation_features,
    onset_strength_curve,
    peak_indices,
    stft_magnitude,
)
from shared.synth import VIOLIN, Note, TimeMap, render_notes

P = AnalysisParams()


def tone(pitch: float, seconds: float = 1.0, detune: float = 0.0) -> np.ndarray:
    return render_notes([Note(0.0, seconds, pitch)], TimeMap.constant(60.0), P.sr, VIOLIN,
                        detune_cents=detune, length_s=seconds)


def test_rates_and_shapes():
    y = tone(69, 2.0)
    fine = stft_magnitude(y, P, P.fine_hop)
    coarse = stft_magnitude(y, P, P.coarse_hop)
    assert fine.shape == (len(y) // P.fine_hop + 1, P.n_bins)
    assert coarse.shape == (len(y) // P.coarse_hop + 1, P.n_bins)
    assert abs(1 / P.fine_period_s - 50.0) < 1e-9 and abs(1 / P.coarse_period_s - 10.0) < 1e-9
    assert P.fine_per_coarse == 5
    lo, hi = P.obs_bins.start * P.sr / P.n_fft, (P.obs_bins.stop - 1) * P.sr / P.n_fft
    assert P.fmin_hz <= lo < P.fmin_hz + P.sr / P.n_fft and P.fmax_hz - P.sr / P.n_fft < hi <= P.fmax_hz


def test_peak_at_fundamental():
    mag = stft_magnitude(tone(69, 1.0), P, P.coarse_hop)
    peak_hz = np.argmax(mag[5]) * P.sr / P.n_fft
    assert abs(peak_hz - 440.0) < P.sr / P.n_fft


def test_features_normalised_level_invariant_and_finite():
    mag = stft_magnitude(tone(72, 1.0), P, P.coarse_hop)
    f1 = observation_features(mag, P)
    f2 = observation_features(mag * 0.01, P)
    assert f1.shape == (mag.shape[0], P.n_obs_bins)
    np.testing.assert_allclose(f1.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(f1, f2, atol=1e-6)  # a quieter microphone gives the same feature
    silent = observation_features(np.zeros((1, P.n_bins), np.float32), P)
    np.testing.assert_allclose(silent, 1.0 / P.n_obs_bins)


def test_templates_never_log_zero():
    mag = stft_magnitude(np.zeros(P.sr, np.float32), P, P.coarse_hop)
    lt = log_templates(mag, P)
    assert lt.shape == (len(P.detune_cents), mag.shape[0], P.n_obs_bins)
    assert np.isfinite(lt).all() and (lt < 0).all()


@pytest.mark.parametrize("cents", [-40.0, 30.0])
def test_detuned_template_matches_detuned_signal_better(cents):
    """A template detuned by c matches a signal really played c cents off better than the plain one."""
    params = AnalysisParams(detune_cents=(-50.0, -25.0, 0.0, 25.0, 50.0))
    for pitch in (64, 71, 79):
        x = stft_magnitude(tone(pitch, 1.0), params, params.coarse_hop)[3:7]
        u = observation_features(stft_magnitude(tone(pitch, 1.0, detune=cents), params, params.coarse_hop)[3:7], params)
        lt = log_templates(x, params)
        ll = np.einsum("dsb,sb->d", lt, u)  # log-likelihood per detune variant
        best = int(np.argmax(ll))
        assert params.detune_cents[best] != 0.0
        assert abs(params.detune_cents[best] - cents) <= 25.0
        assert ll[best] > ll[params.detune_cents.index(0.0)]


def test_detune_spectrum_moves_peak():
    mag = stft_magnitude(tone(69, 1.0), P, P.coarse_hop)[5]
    shifted = detune_spectrum(mag, 100.0, P)  # one semitone up
    hz = np.argmax(shifted) * P.sr / P.n_fft
    assert abs(hz - 440 * 2 ** (1 / 12)) < P.sr / P.n_fft


def test_online_spectrum_equals_offline_frames():
    """The streaming STFT gives the offline frames (window ending at the newest sample)."""
    import librosa

    params = AnalysisParams(n_fft=2048, fine_hop=512, coarse_hop=2048)
    y = tone(67, 1.0)
    online = OnlineSpectrum(params)
    frames = np.array([online.push(y[i:i + 512]).copy() for i in range(0, len(y) - 511, 512)])
    offline = np.abs(librosa.stft(y, n_fft=2048, hop_length=512, center=False)).T
    # online frame k ends at sample (k+1)*512, i.e. it starts where offline frame k-3 starts
    np.testing.assert_allclose(frames[3:3 + len(offline)], offline[: len(frames) - 3], rtol=1e-3,
                               atol=1e-4 * offline.max())
    with pytest.raises(ValueError):
        online.push(np.zeros(3, np.float32))


def test_params_validation_and_roundtrip():
    with pytest.raises(ValueError):
        AnalysisParams(coarse_hop=1000)  # not a multiple of the fine hop
    with pytest.raises(ValueError):
        AnalysisParams(detune_cents=(-10.0, 10.0))  # no 0
    with pytest.raises(ValueError):
        AnalysisParams(onset_bands=1)
    with pytest.raises(ValueError):
        AnalysisParams(onset_scale=0.0)
    assert AnalysisParams.from_dict(P.to_dict()) == P


def test_spectral_subtract_keeps_a_floor_and_needs_no_allocation():
    from shared.spectral import spectral_subtract

    mag = np.array([1.0, 2.0, 0.5, 4.0], dtype=np.float32)
    noise = np.array([0.5, 3.0, 0.5, 1.0], dtype=np.float32)
    expected = np.array([0.5, 0.2, 0.05, 3.0], dtype=np.float32)
    assert np.allclose(spectral_subtract(mag, noise, 0.1), expected)
    out, scratch = np.empty_like(mag), np.empty_like(mag)
    got = spectral_subtract(mag, noise, 0.1, out=out, scratch=scratch)
    assert got is out and np.allclose(out, expected)


# ------------------------------------------------------------------------------- onsets
#: Eight detached repetitions of one pitch, then two long notes, all with a wide vibrato.
REPEATS = [Note(0.5 * k, 0.4, 69.0) for k in range(8)] + [Note(4.0, 3.0, 72.0), Note(7.0, 3.0, 67.0)]
REPEATS_MAP = TimeMap.constant(100.0, offset_s=0.5)


def repeats(vibrato_cents: float = 40.0) -> np.ndarray:
    return render_notes(REPEATS, REPEATS_MAP, P.sr, VIOLIN, vibrato_cents=vibrato_cents)


def test_onset_strength_marks_repeated_notes_not_vibrato():
    """A note repeated at the same pitch has an onset the spectra cannot see; the strength
    shows each one (within 60 ms), and stays low inside long notes with 40-cent vibrato."""
    curve = onset_strength_curve(repeats(), P)
    t = np.arange(curve.size) * P.fine_period_s
    for note in REPEATS:
        near = np.abs(t - REPEATS_MAP(note.beat)) <= 0.06
        assert curve[near].max() > 0.5, note
    held = np.zeros(curve.size, dtype=bool)
    for note in REPEATS[-2:]:
        held |= (t > REPEATS_MAP(note.beat) + 0.15) & (t < REPEATS_MAP(note.beat + note.dur) - 0.05)
    assert np.percentile(curve[held], 95) < 0.3
    assert 0.0 <= curve.min() and curve.max() <= 1.0


def test_onset_strength_ignores_the_input_level():
    """A microphone's gain is unknown: 60 dB quieter gives the same curve."""
    y = repeats()
    np.testing.assert_allclose(onset_strength_curve(1e-3 * y, P), onset_strength_curve(y, P), atol=1e-4)


def test_onset_curve_is_the_live_analysis_centred_like_the_stft():
    """prep's curve of X is the player's streaming analysis, frame k centred on k * hop."""
    params = AnalysisParams(n_fft=1024, fine_hop=256, coarse_hop=1280)
    y = repeats()
    spectrum, onsets = OnlineSpectrum(params), OnsetStrength(params)
    live = np.array([onsets.push(spectrum.push(y[i:i + 256])) for i in range(0, len(y) - 255, 256)])
    curve = onset_strength_curve(y, params)
    assert curve.shape == (len(y) // 256 + 1,)
    # live frame j ends at sample (j + 1) * 256, so it is centred on (j - 1) * 256
    np.testing.assert_allclose(curve[: len(live) - 1], live[1:], atol=1e-6)
    onsets.reset()
    assert onsets.push(spectrum.push(y[:256])) == 0.0  # no past: no onset


@pytest.mark.parametrize("seed", range(5))
def test_peak_indices_are_scipys_find_peaks(seed):
    """Plateaus (quantised values), edges and the height threshold: the same peaks as scipy."""
    from scipy.signal import find_peaks

    rng = np.random.default_rng(seed)
    x = np.round(rng.random(500) * 6) / 6  # many flat runs, some at the ends
    for height in (-np.inf, 0.3, 0.8):
        expected, _ = find_peaks(x, height=height)
        np.testing.assert_array_equal(peak_indices(x, height=height), expected)
    assert peak_indices(np.array([0.0, 1.0])).size == 0
    np.testing.assert_array_equal(peak_indices(np.array([0.0, 2.0, 2.0, 2.0, 2.0, 1.0])), [2])


def test_a_penalty_lowers_whole_states_of_the_quantized_templates():
    rng = np.random.default_rng(3)
    log_t = np.log(rng.dirichlet(np.ones(12), size=(2, 40))).astype(np.float32)
    base = QuantizedTemplates.from_log(log_t)
    penalty = np.zeros(40)
    penalty[25:30] = 2.0
    lowered = base.with_penalty(penalty)
    assert lowered.q is base.q  # the codes are shared, not copied
    np.testing.assert_allclose(lowered.dequantize(1, slice(20, 35)),
                               base.dequantize(1, slice(20, 35)) - penalty[20:35, None], atol=1e-5)
    for lo, hi, reverse in ((0, 20, False), (20, 35, False), (20, 35, True), (0, 40, True)):
        codes = lowered.codes_into(np.empty((hi - lo, 12), np.float32), 1, lo, hi, reverse=reverse)
        want = lowered.dequantize(1, slice(lo, hi))
        np.testing.assert_allclose(lowered.offset + lowered.step * codes, want[::-1] if reverse else want, atol=1e-4)
    # a slice without penalised states is the codes themselves
    np.testing.assert_array_equal(lowered.codes_into(np.empty((20, 12), np.float32), 0, 0, 20), base.q[0, :20])
    with pytest.raises(ValueError):
        base.with_penalty(-penalty)
    with pytest.raises(ValueError):
        base.with_penalty(penalty[:10])
