"""Solo removal: on a synthetic duet with known stems and known alignment, the mask built
from the live take removes the solo and keeps the accompaniment."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from player.separation import BinMap, PositionSpectrum, SeparationConfig, SoloRemover
from prep.pipeline import BuildOptions, build_bundle
from shared.audio import ArrayAudio, resample
from shared.bundle import load_bundle
from shared.spectral import OnlineSpectrum
from shared.synth import FLUTE, make_case


@pytest.fixture(scope="module")
def duet(tmp_path_factory):
    """A duet (X) with its stems, a take on another timeline (U, another timbre, detuned)
    and the bundle's learned bases."""
    case = make_case(n_notes=48, seed=3, sr=44100, solo_u=FLUTE, detune_cents=20.0)
    folder = tmp_path_factory.mktemp("sep")
    sf.write(folder / "x.wav", case.x, case.sr, subtype="PCM_16")
    build_bundle(folder / "x.wav", folder / "x.h5", BuildOptions(nmf_iter=60))
    with load_bundle(folder / "x.h5") as bundle:
        yield case, bundle


def masked_energies(case, bundle, config: SeparationConfig, detune_cents: float = 20.0, take=None):
    """Feed the remover U's frames (``take``, default ``case.u``) and X's frames at the true
    position; return the energy ratios (dB) of the masked solo stem and the masked
    accompaniment stem."""
    p = bundle.params
    remover = SoloRemover(bundle.nmf, p, config)
    x_spec = PositionSpectrum(ArrayAudio(case.x, case.sr), p)
    solo_spec = PositionSpectrum(ArrayAudio(case.x_solo, case.sr), p)
    acc_spec = PositionSpectrum(ArrayAudio(case.x_acc, case.sr), p)
    u = resample(case.u if take is None else take, case.sr, p.sr)
    online = OnlineSpectrum(p)
    solo_in = solo_out = acc_in = acc_out = 0.0
    for k in range(len(u) // p.fine_hop):
        u_mag = online.push(u[k * p.fine_hop:(k + 1) * p.fine_hop])
        t = (k + 1) * p.fine_hop / p.sr - p.n_fft / 2 / p.sr  # centre of U's analysis window
        if t < case.onsets_u[0] or t > case.onsets_u[-1]:
            continue
        x_s = float(case.x_of_u(t))
        if remover.due(True):  # as the engine does: the spectra only when the ratio is due
            gain = remover.update(x_spec.at(x_s), u_mag, detune_cents)
        else:
            gain = remover.update(None, None, detune_cents)
        s, a = solo_spec.at(x_s) ** 2, acc_spec.at(x_s) ** 2
        solo_in += s.sum()
        solo_out += (gain**2 * s).sum()
        acc_in += a.sum()
        acc_out += (gain**2 * a).sum()
    return 10 * np.log10(solo_out / solo_in), 10 * np.log10(acc_out / acc_in)


def test_solo_is_removed_and_accompaniment_kept(duet):
    case, bundle = duet
    solo_db, acc_db = masked_energies(case, bundle, SeparationConfig())
    assert solo_db < -9.0, solo_db
    assert acc_db > -3.0, acc_db


def test_the_ratio_is_computed_every_other_block_and_held_between(duet):
    """``ratio_every=2``: every other sounding block computes the ratio from data, the
    first block after a silence and a new note's always do; the removal is as good as
    computing it at every block (within 1 dB)."""
    case, bundle = duet
    remover = SoloRemover(bundle.nmf, bundle.params, SeparationConfig(ratio_every=2))
    assert [remover.due(True) for _ in range(5)] == [True, False, True, False, True]
    assert [remover.due(s) for s in (False, True, True, False, False, True, True)] == [
        False, True, False, False, False, True, False]
    # a new note (U's observation changed by change_at or more) is computed at once
    assert [remover.due(True, c) for c in (0.05, 0.3, 0.05, 0.05, None)] == [True, True, False, True, False]
    every = SoloRemover(bundle.nmf, bundle.params, SeparationConfig(ratio_every=1))
    assert all(every.due(True) for _ in range(4))
    held = masked_energies(case, bundle, SeparationConfig(ratio_every=2))
    fresh = masked_energies(case, bundle, SeparationConfig(ratio_every=1))
    assert held != fresh  # the schedule acts
    assert abs(held[0] - fresh[0]) < 1.0 and abs(held[1] - fresh[1]) < 1.0, (held, fresh)
    assert held[0] < -9.0 and held[1] > -3.0, held


def with_speaker_leak(case, level_db: float = -16.0, delay_s: float = 0.012):
    """U as a microphone beside speakers hears it: the solo plus the accompaniment on U's
    timeline, ``delay_s`` late, ``level_db`` under the solo's RMS."""
    solo_rms = float(np.sqrt(np.mean(case.u**2)))
    acc = case.u_acc * (solo_rms / float(np.sqrt(np.mean(case.u_acc**2)))) * 10 ** (level_db / 20)
    delay = int(round(delay_s * case.sr))
    take = case.u.copy()
    take[delay:] += acc[: len(take) - delay]
    return take


def test_accompaniment_leaking_into_the_microphone_is_not_removed(duet):
    """The leak is the accompaniment, not the solo: without accounting for it, the removal
    takes the accompaniment out with the solo (measured here, so the test can fail)."""
    case, bundle = duet
    take = with_speaker_leak(case)
    solo_db, acc_db = masked_energies(case, bundle, SeparationConfig(), take=take)
    _, acc_db_blind = masked_energies(case, bundle, SeparationConfig(leak_quantile=0.0), take=take)
    assert acc_db_blind < -5.0, acc_db_blind
    assert acc_db > -3.0, acc_db
    assert solo_db < -9.0, solo_db


def test_strength_follows_alpha(duet):
    case, bundle = duet
    weak, _ = masked_energies(case, bundle, SeparationConfig(alpha=0.2))
    strong, _ = masked_energies(case, bundle, SeparationConfig(alpha=2.0))
    assert strong < weak - 2.0


def test_alpha_zero_and_silence_give_unity_gain(duet):
    case, bundle = duet
    p = bundle.params
    x_spec = PositionSpectrum(ArrayAudio(case.x, case.sr), p)
    u_mag = np.abs(np.fft.rfft(case.u[44100:44100 + p.n_fft]))[: p.n_fft // 2 + 1]
    off = SoloRemover(bundle.nmf, p, SeparationConfig(alpha=0.0))
    assert np.all(off.update(x_spec.at(2.0), u_mag, 0.0) == 1.0)
    on = SoloRemover(bundle.nmf, p, SeparationConfig(smooth_blocks=3))
    assert on.update(x_spec.at(2.0), u_mag, 0.0).min() < 1.0
    held = on.update(None, None, 0.0, strength=0.5)  # just stopped: the last notes' decay
    assert held.min() < 1.0
    for _ in range(3):  # the hold is over: the gain glides back to one within the smoothing
        gain = on.update(None, None, 0.0, strength=0.0)
    assert np.all(gain == 1.0)


def test_position_spectrum_matches_analysis_axis():
    """A 1 kHz tone at 44.1 kHz peaks on the analysis bin of 1 kHz (10.77 Hz bins)."""
    from shared.spectral import AnalysisParams

    p = AnalysisParams()
    sr = 44100
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(sr) / sr).astype(np.float32)
    mag = PositionSpectrum(ArrayAudio(tone, sr), p).at(0.5)
    assert mag.shape == (p.n_fft // 2 + 1,)
    assert abs(np.argmax(mag) * p.sr / p.n_fft - 1000.0) < p.sr / p.n_fft
    # same level as the analysis STFT of the same tone at the analysis rate (sum of window / 2)
    assert mag.max() == pytest.approx(np.hanning(p.n_fft + 1)[:-1].sum() / 2, rel=0.05)


def test_position_spectrum_of_a_recording_below_the_analysis_rate():
    """X at 8 kHz: the analysis axis still has all its bins, empty above 4 kHz."""
    from shared.spectral import AnalysisParams

    p = AnalysisParams()
    sr = 8000
    tone = np.sin(2 * np.pi * 1000.0 * np.arange(sr) / sr).astype(np.float32)
    mag = PositionSpectrum(ArrayAudio(tone, sr), p).at(0.5)
    assert mag.shape == (p.n_fft // 2 + 1,)
    assert abs(np.argmax(mag) * p.sr / p.n_fft - 1000.0) < 2 * p.sr / p.n_fft
    assert np.all(mag[int(4100 / (p.sr / p.n_fft)):] == 0.0)


def test_gain_on_bins_interpolates_and_holds_the_top():
    src_f = np.array([0.0, 100.0, 200.0])
    gain = np.array([1.0, 0.0, 0.5])
    out = BinMap(src_f, np.array([0.0, 50.0, 150.0, 1000.0]))(gain, np.empty(4))
    np.testing.assert_allclose(out, [1.0, 0.5, 0.25, 0.5])


def test_gain_on_bins_gives_numpys_interpolation_to_the_bit():
    rng = np.random.default_rng(3)
    src_f = np.arange(1025) * 22050 / 2048  # the analysis axis, onto the vocoder's at 44.1 kHz
    bins = np.concatenate([[-5.0], np.arange(1025) * 44100 / 2048, src_f[:7], [np.nan]])
    on_bins = BinMap(src_f, bins)
    for gain in (rng.uniform(0, 1, src_f.size), np.r_[np.ones(500), np.zeros(525)], np.full(src_f.size, 0.3)):
        out = on_bins(gain, np.empty(bins.size))
        np.testing.assert_array_equal(out, np.interp(bins, src_f, gain))


@pytest.mark.parametrize("alpha", [-0.1, 2.5, float("nan")])
def test_alpha_outside_range_is_refused(alpha):
    with pytest.raises(ValueError):
        SeparationConfig(alpha=alpha)


@pytest.mark.parametrize("n,k", [(1025, 12), (50, 3), (7, 5), (9, 0), (24, 12), (25, 12), (26, 12), (1, 3)])
def test_support_weights_are_one_near_the_soloists_loud_bins_and_fade_over_6_db(n, k):
    from player.separation import _support_weights

    x = np.random.default_rng(n + k).lognormal(sigma=2.0, size=n)
    wide = np.array([x[max(0, i - k):i + k + 1].max() for i in range(n)])
    level = 20.0 * np.log10(wide / x.max())
    expected = np.clip((level + 30.0 + 6.0) / 6.0, 0.0, 1.0)
    out = np.empty(n)
    _support_weights(x, k, 30.0, out)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)


def test_near_silence_in_x_is_not_masked(duet):
    """Before X's first chord the factorisation has no data: the gain must stay at one
    (a hole in the accompaniment's first chord otherwise)."""
    case, bundle = duet
    p = bundle.params
    remover = SoloRemover(bundle.nmf, p, SeparationConfig(smooth_blocks=1))
    quiet_x = np.full(p.n_fft // 2 + 1, 1e-4)
    loud_u = np.abs(np.fft.rfft(case.u[44100:44100 + p.n_fft]))[: p.n_fft // 2 + 1]
    assert np.all(remover.update(quiet_x, loud_u, 0.0) == 1.0)


@pytest.mark.parametrize("n", [1, 2, 7, 100, 517])
def test_linear_quantile_is_numpys_quantile(n):
    from shared.stats import linear_quantile

    x = np.random.default_rng(n).lognormal(size=n)
    for q in (0.0, 0.1, 0.25, 0.5, 0.75, 1.0):
        assert linear_quantile(x, q) == np.quantile(x, q)
