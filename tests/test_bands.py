"""Band templates: the bands tile the observation bins (single bins at the bottom, fractions
of an octave above), and a band's log template is the log of its bins' probability mass,
for whichever variant is asked for and with a state's penalty."""

import numpy as np

from player.bands import BandTemplates, band_starts
from shared.spectral import AnalysisParams, QuantizedTemplates

PARAMS = AnalysisParams()


def test_bands_tile_the_bins_linearly_below_and_by_fractions_of_an_octave_above():
    starts = band_starts(PARAMS, 24)
    assert starts[0] == 0 and np.all(np.diff(starts) >= 1) and starts[-1] < PARAMS.n_obs_bins
    widths = np.diff(np.append(starts, PARAMS.n_obs_bins))
    hz_per_bin = PARAMS.sr / PARAMS.n_fft
    lower_hz = (starts + PARAMS.obs_bins.start) * hz_per_bin
    assert np.all(widths[lower_hz < 400] <= 2)  # about single bins at the bottom
    # above, each band spans about a 24th of an octave (one bin's rounding either way; the
    # last is cut short by the top of the observed range)
    upper = (lower_hz > 1500) & (np.arange(starts.size) < starts.size - 1)
    ratio = (lower_hz[upper] + widths[upper] * hz_per_bin) / lower_hz[upper]
    assert np.all(np.abs(np.log2(ratio) * 24 - 1) < 0.25)
    assert 100 < starts.size < PARAMS.n_obs_bins / 3
    assert band_starts(PARAMS, 10_000).size == PARAMS.n_obs_bins  # finer than a bin: every bin a band


def test_band_rows_are_the_log_mass_of_their_bins_for_each_variant_and_penalty():
    rng = np.random.default_rng(0)
    spectra = rng.gamma(0.3, size=(len(PARAMS.detune_cents), 50, PARAMS.n_obs_bins)) + 1e-3
    spectra /= spectra.sum(axis=2, keepdims=True)
    penalty = np.zeros(50, dtype=np.float32)
    penalty[20:25] = 1.5
    templates = QuantizedTemplates.from_log(np.log(spectra).astype(np.float32)).with_penalty(penalty)
    bands = BandTemplates(templates, PARAMS, 24)
    for detune, (lo, hi) in [(2, (0, 30)), (2, (10, 50)), (0, (15, 40)), (2, (0, 50))]:
        got = bands.rows(detune, lo, hi)
        mass = np.exp(templates.dequantize(detune, slice(lo, hi)).astype(np.float64) + penalty[lo:hi, None])
        want = np.log(np.add.reduceat(mass, bands.starts, axis=1)) - penalty[lo:hi, None]
        np.testing.assert_allclose(got, want, atol=1e-4)
    u = spectra[2, 7].astype(np.float32)
    pooled = bands.pool(u)
    assert pooled.shape == (bands.n_bands,) and abs(pooled.sum() - 1.0) < 1e-5
