"""``prep build`` streamed in bounded memory: the same bundle as the whole-signal analysis
(block boundaries anywhere), refusals while streaming (silence, NaN, length), input above
full scale normalised, and no RuntimeWarning from the analysis on hostile levels."""

from __future__ import annotations

import time
import tracemalloc
import warnings

import h5py
import librosa
import numpy as np
import pytest
import soundfile as sf
import soxr

from prep.pipeline import BuildOptions, build_bundle, learn_accompaniment_bases, nmf_frame_indices
from shared import audio
from shared.audio import StreamResampler, resample, resampled_length, scan_audio, to_mono
from shared.bundle import BundleWriter, load_bundle
from shared.errors import AudioError
from shared.spectral import (
    AnalysisParams,
    CentredSTFT,
    OnlineSpectrum,
    OnsetCurve,
    OnsetStrength,
    QuantizedTemplates,
    log_templates,
    onset_filterbank,
    onset_strength_curve,
)

P = AnalysisParams()
QUICK = BuildOptions(n_components=4, nmf_iter=8, nmf_max_frames=40)


def vibrato_tones(seconds: float, sr: int, channels: int = 2, seed: int = 0, level: float = 0.5) -> np.ndarray:
    """Harmonic tones with vibrato, a new note every ~0.4 s (one in five repeated), stereo
    with different mixes per channel: float32 ``(round(seconds * sr), channels)``."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    out = np.zeros((n, channels), np.float64)
    start = 0.0
    while start < seconds:
        length = rng.uniform(0.25, 0.6)
        f0 = 220.0 * 2 ** (rng.integers(0, 24) / 12)
        on = (t >= start) & (t < start + length)
        tt = t[on] - start
        phase = 2 * np.pi * f0 * (tt + 0.004 / 5.5 * np.sin(2 * np.pi * 5.5 * tt))  # ~ +-25 cents at 5.5 Hz
        env = np.minimum(1.0, tt / 0.02) * np.exp(-2.0 * tt)
        note = sum(0.6 ** k * np.sin((k + 1) * phase) for k in range(8)) * env
        for c in range(channels):
            out[on, c] += note * (0.6 + 0.4 * c / max(1, channels - 1))
        start += length
    out += rng.normal(0, 1e-4, out.shape)
    return (out * (level / np.abs(out).max())).astype(np.float32)


def whole_signal_reference(path, options: BuildOptions) -> dict:
    """The analysis as ``build_bundle`` did it before streaming: everything from whole
    arrays (decode, mono, soxr.resample, librosa.stft, the onset loop over one padded
    signal, log templates of every state, quantised over their global range)."""
    p = options.params
    samples, sr = sf.read(path, dtype="float32", always_2d=True)
    y = resample(to_mono(samples), sr, p.sr)
    state_mag = np.abs(librosa.stft(y, n_fft=p.n_fft, hop_length=p.coarse_hop, window="hann", center=True,
                                    pad_mode="constant")).T.astype(np.float32)
    bank = onset_filterbank(p)
    hop, half = p.fine_hop, p.n_fft // 2
    n_frames = y.size // hop + 1
    early = -(-(half - hop) // hop) if half > hop else 0
    lead = early * hop + hop - half
    padded = np.zeros((n_frames + early) * hop, np.float32)
    take = min(y.size, padded.size - lead)
    padded[lead:lead + take] = y[:take]
    spectrum, strength = OnlineSpectrum(p), OnsetStrength(p, bank)
    onsets = np.array([strength.push(spectrum.push(h)) for h in padded.reshape(-1, hop)], np.float32)[early:]
    templates = QuantizedTemplates.from_log(log_templates(state_mag, p))
    return {"samples": samples, "state_mag": state_mag, "onsets": onsets, "templates": templates,
            "nmf_frames": state_mag[nmf_frame_indices(state_mag.shape[0], options.nmf_max_frames)]}


def small_blocks(monkeypatch, frames: int = 997, rows: int = 7) -> None:
    """Cut everything small: audio blocks of ``frames`` frames (a prime: boundaries fall
    anywhere against the hops) and storage chunks of a few rows."""
    monkeypatch.setattr(audio, "BLOCK_BYTES", frames * 4)  # (per channel: block_frames divides by channels)
    monkeypatch.setattr(BundleWriter, "COARSE_CHUNK_STATES", rows)
    monkeypatch.setattr(BundleWriter, "TEMPLATE_CHUNK_STATES", rows + 4)
    monkeypatch.setattr(BundleWriter, "ONSET_CHUNK_FRAMES", 5 * rows)


def assert_matches_reference(bundle_path, ref: dict, options: BuildOptions) -> None:
    with load_bundle(bundle_path) as b:
        # float precision: the mono mix of more than two channels (a BLAS product) may round
        # differently per block by an ulp, which float16 storage can turn into one of its ulps
        assert b.state_mag.shape == ref["state_mag"].shape
        np.testing.assert_allclose(b.state_mag.astype(np.float32), ref["state_mag"].astype(np.float16).astype(np.float32),
                                   rtol=2**-10, atol=2e-5)
        assert b.onsets.shape == ref["onsets"].shape
        np.testing.assert_allclose(b.onsets, ref["onsets"], rtol=0, atol=1e-5)
        t_ref = ref["templates"]
        assert b.templates.q.shape == t_ref.q.shape
        assert b.templates.offset == pytest.approx(t_ref.offset, rel=1e-6)
        assert b.templates.step == pytest.approx(t_ref.step, rel=1e-6)
        diff = np.abs(b.templates.q.astype(np.int16) - t_ref.q.astype(np.int16))
        assert diff.max() <= 1 and np.mean(diff > 0) <= 1e-3, (diff.max(), np.mean(diff > 0))
        np.testing.assert_array_equal(b.audio.read_all(), ref["samples"])  # 16-bit PCM kept bit-exact
        # the NMF learned from the same frames, with the same seed: the same bases
        nmf = learn_accompaniment_bases(ref["nmf_frames"], options)
        np.testing.assert_allclose(b.nmf.w_shape, nmf.w_shape, rtol=1e-4)
        np.testing.assert_allclose(b.nmf.w_rate, nmf.w_rate, rtol=1e-4)
        assert b.nmf.data_scale == pytest.approx(nmf.data_scale, rel=1e-5)


@pytest.mark.parametrize("sr,channels,seconds", [
    (44100, 2, 4.0 + 1237 / 44100),  # odd length, two channels mixed down
    (48000, 1, 3.3 + 11 / 48000),  # another rate ratio
    (22050, 2, 2.5 + 3 / 22050),  # the analysis rate itself: no resampling
    (8000, 3, 3.1 + 1 / 8000),  # upsampled, three channels
])
def test_streamed_build_matches_whole_signal(tmp_path, monkeypatch, sr, channels, seconds):
    src = tmp_path / "x.wav"
    sf.write(src, vibrato_tones(seconds, sr, channels, seed=sr), sr, subtype="PCM_16")
    ref = whole_signal_reference(src, QUICK)
    small_blocks(monkeypatch)
    out = tmp_path / "x.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        build_bundle(src, out, QUICK)
    with h5py.File(out, "r") as f:  # many block and storage-chunk boundaries were crossed
        assert f["spectra/coarse"].shape[0] > 3 * f["spectra/coarse"].chunks[0]
    assert_matches_reference(out, ref, QUICK)


def test_recording_shorter_than_one_block(tmp_path):
    src = tmp_path / "short.wav"
    sf.write(src, vibrato_tones(0.7, 44100, 2, seed=5), 44100, subtype="PCM_16")
    out = tmp_path / "short.h5"
    build_bundle(src, out, QUICK)
    assert_matches_reference(out, whole_signal_reference(src, QUICK), QUICK)


def test_block_size_does_not_change_the_bundle(tmp_path, monkeypatch):
    src = tmp_path / "x.wav"
    sf.write(src, vibrato_tones(3.0 + 77 / 44100, 44100, 2, seed=9), 44100, subtype="PCM_16")
    build_bundle(src, tmp_path / "default.h5", QUICK)
    small_blocks(monkeypatch, frames=313, rows=3)
    build_bundle(src, tmp_path / "small.h5", QUICK)
    with h5py.File(tmp_path / "default.h5", "r") as a, h5py.File(tmp_path / "small.h5", "r") as b:
        for name in ("spectra/coarse", "spectra/onsets", "templates/log_obs", "nmf/w_shape", "audio/data",
                     "audio/offsets"):
            np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)


# ----------------------------------------------------------------------------- the parts
@pytest.mark.parametrize("params", [P, AnalysisParams(n_fft=1001), AnalysisParams(n_fft=256, fine_hop=64, coarse_hop=640)])
@pytest.mark.parametrize("n", [0, 1, 127, 500, 2047, 2048, 2049, 9999])
def test_centred_stft_any_blocks_equals_librosa(params, n):
    y = np.random.default_rng(n).normal(0, 0.3, n).astype(np.float32)
    for hop in (params.fine_hop, params.coarse_hop):
        for block in (1, 64, 441, 3001, 10**6):
            stft = CentredSTFT(params, hop, n)
            got = np.concatenate([stft.push(y[i:i + block]) for i in range(0, n, block)] + [stft.finish()])
            assert got.shape == (stft.n_frames, params.n_bins)
            if n > params.n_fft // 2:  # (librosa needs a few samples)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # librosa: "n_fft too large" for the shortest
                    ref = np.abs(librosa.stft(y, n_fft=params.n_fft, hop_length=hop, window="hann", center=True,
                                              pad_mode="constant")).T
                np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("n", [0, 1, 440, 441, 442, 1023, 5000, 22050 + 7])
def test_onset_curve_any_blocks_equals_whole(n):
    y = vibrato_tones(max(n, 1) / P.sr + 0.01, P.sr, 1, seed=n)[:n, 0]
    whole = onset_strength_curve(y, P)
    assert whole.shape == (n // P.fine_hop + 1,)
    for block in (1, 100, 441, 4000):
        curve = OnsetCurve(P, n)
        got = np.concatenate([curve.push(y[i:i + block]) for i in range(0, n, block)] + [curve.finish()])
        np.testing.assert_array_equal(got, whole)


@pytest.mark.parametrize("sr_in", [8000, 44100, 48000, 96000, 22050, 11025])
def test_stream_resampler_equals_whole_signal(sr_in):
    x = vibrato_tones(1.3, sr_in, 1, seed=3)[:, 0]
    x = x[: x.size - 3]
    whole = soxr.resample(x, sr_in, P.sr, quality="HQ") if sr_in != P.sr else x
    for block in (100, 4096, 10**6):
        rs = StreamResampler(sr_in, P.sr, x.size)
        got = np.concatenate([rs.push(x[i:i + block]) for i in range(0, x.size, block)] + [rs.finish()])
        assert got.size == resampled_length(x.size, sr_in, P.sr) if sr_in != P.sr else x.size
        np.testing.assert_array_equal(got[:whole.size], whole[:got.size])


def test_quantisation_in_blocks_equals_whole():
    mag = np.abs(np.random.default_rng(1).normal(size=(37, P.n_bins))).astype(np.float32)
    log_t = log_templates(mag, P)
    whole = QuantizedTemplates.from_log(log_t)
    offset, step = QuantizedTemplates.scale(float(log_t.min()), float(log_t.max()))
    blocks = [QuantizedTemplates.quantize(log_templates(mag[a:a + 5], P), offset, step) for a in range(0, 37, 5)]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), whole.q)
    assert (offset, step) == (whole.offset, whole.step)


# ----------------------------------------------------------------------------- bounded memory
def _traced_peak(src, out) -> int:
    tracemalloc.start()
    try:
        build_bundle(src, out, QUICK)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_recording(tmp_path, monkeypatch):
    """Python-side allocations (numpy's included) peak the same for 10 s and 60 s once both
    are longer than a few blocks and storage chunks: only those are held, never the
    recording (60 s of stereo float32 alone would be 21 MB)."""
    monkeypatch.setattr(audio, "BLOCK_BYTES", 1 << 20)  # blocks of 3 s
    monkeypatch.setattr(BundleWriter, "COARSE_CHUNK_STATES", 16)  # storage chunks of 1.6 s
    monkeypatch.setattr(BundleWriter, "TEMPLATE_CHUNK_STATES", 16)
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    tones = vibrato_tones(10.0, 44100, 2, seed=4)
    sf.write(short, tones, 44100, subtype="PCM_16")
    with sf.SoundFile(long, "w", samplerate=44100, channels=2, subtype="PCM_16") as f:
        for _ in range(6):
            f.write(tones)
    build_bundle(short, tmp_path / "warm-up.h5", QUICK)  # (imports and first-call caches are not the build's)
    small = _traced_peak(short, tmp_path / "short.h5")
    large = _traced_peak(long, tmp_path / "long.h5")
    assert large < small + (1 << 19), (small / 2**20, large / 2**20)
    assert large < 8 << 20, large / 2**20


# ----------------------------------------------------------------------------- refusals while streaming
def test_silence_refused_in_one_pass_without_holding_it(tmp_path):
    src = tmp_path / "silence.wav"
    with sf.SoundFile(src, "w", samplerate=44100, channels=2, subtype="PCM_16") as f:
        block = np.zeros((44100 * 10, 2), np.float32)
        for _ in range(30):  # five minutes
            f.write(block)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(AudioError, match="silent") as err:
            build_bundle(src, tmp_path / "x.h5", QUICK)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 10.0
    assert "\n" not in str(err.value)
    assert peak < 6 << 20, peak / 2**20  # one block of 4 MB; five minutes of float32 stereo would be 106 MB
    assert list(tmp_path.iterdir()) == [src]


def test_nan_refused_at_the_first(tmp_path):
    y = vibrato_tones(3.0, 22050, 1)
    y[int(1.5 * 22050), 0] = np.nan
    src = tmp_path / "nan.wav"
    sf.write(src, y, 22050, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"NaN or infinite samples \(the first at 1\.500 s\)") as err:
        build_bundle(src, tmp_path / "x.h5", QUICK)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == [src]


def test_too_long_refused_from_the_header(tmp_path, monkeypatch):
    src = tmp_path / "long.wav"
    sf.write(src, vibrato_tones(3.0, 22050, 1), 22050)
    monkeypatch.setattr(audio, "MAX_DURATION_S", 2.0)

    def no_reading(*args, **kwargs):
        raise AssertionError("samples were read")

    monkeypatch.setattr(sf.SoundFile, "read", no_reading)
    with pytest.raises(AudioError, match=r"lasts 0\.0 h; at most 0 h"):
        scan_audio(src, what="recording")


# ----------------------------------------------------------------------------- levels and warnings
def test_above_full_scale_is_normalised(tmp_path):
    y = vibrato_tones(3.0, 44100, 2, seed=2, level=1.0)
    loud, tame = tmp_path / "loud.wav", tmp_path / "tame.wav"
    sf.write(loud, y * 900.0, 44100, subtype="FLOAT")
    sf.write(tame, y, 44100, subtype="FLOAT")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        summary = build_bundle(loud, tmp_path / "loud.h5", QUICK)
        build_bundle(tame, tmp_path / "tame.h5", QUICK)
    assert summary.source_peak == pytest.approx(900.0, rel=1e-6)
    assert summary.gain_db == pytest.approx(-20 * np.log10(900.0), abs=1e-6)
    with load_bundle(tmp_path / "loud.h5") as a, load_bundle(tmp_path / "tame.h5") as b:
        assert np.isfinite(a.state_mag).all()
        np.testing.assert_allclose(a.state_mag.astype(np.float32), b.state_mag.astype(np.float32), rtol=2e-3, atol=1e-3)
        np.testing.assert_allclose(a.onsets, b.onsets, atol=1e-3)
        assert np.mean(a.templates.q != b.templates.q) < 1e-3
        np.testing.assert_allclose(a.audio.read_all(), np.clip(y, -1, 1 - 2**-23), atol=2**-22)


def test_full_scale_input_is_not_touched(tmp_path):
    src = tmp_path / "x.wav"
    sf.write(src, vibrato_tones(1.0, 44100, 1, level=1.0), 44100, subtype="PCM_16")
    summary = build_bundle(src, tmp_path / "x.h5", QUICK)
    assert summary.gain_db == 0.0 and summary.source_peak <= 1.0


def _hostile_levels(sr: int) -> dict[str, np.ndarray]:
    tones = vibrato_tones(2.0, sr, 1, seed=1)[:, 0]
    long_gap = np.concatenate([tones, np.zeros(330 * sr, np.float32), tones])  # 5.5 min of digital zeros
    click = np.zeros(20 * sr, np.float32)
    click[7 * sr] = 2e-5  # barely above silence, nowhere near an NMF frame
    return {
        "silent stretch": long_gap,
        "quiet": tones * (2e-5 / np.abs(tones).max()),
        "click in silence": click,
        "loud float": tones * 900.0,
        "shortest": tones[: int(np.ceil(max(P.window_s, P.coarse_period_s) * sr))],  # two states
    }


@pytest.mark.parametrize("name", list(_hostile_levels(8000)))
def test_no_runtime_warning_on_hostile_levels(tmp_path, name):
    sr = 8000
    y = _hostile_levels(sr)[name]
    src = tmp_path / "x.wav"
    sf.write(src, y, sr, subtype="FLOAT")
    out = tmp_path / "x.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        build_bundle(src, out, QUICK)
    with load_bundle(out) as b:  # the loader accepts it: everything finite and in range
        assert np.isfinite(b.state_mag).all() and np.isfinite(b.onsets).all()
        if name == "silent stretch":  # the onsets still work after minutes of zeros
            t = np.arange(b.onsets.size) * b.params.fine_period_s
            assert b.onsets[(t > 331.9) & (t < 332.3)].max() > 0.5


def test_onset_strength_survives_minutes_of_zeros():
    strength = OnsetStrength(P)
    loud = np.zeros(P.n_bins, np.float32)
    loud[40:400:20] = 100.0
    zero = np.zeros(P.n_bins, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        strength.push(loud)
        for _ in range(30000):  # ten minutes of frames
            strength.push(zero)
        values = [strength.push(loud), strength.push(loud)]
    assert values[0] > 0.9 and np.isfinite(values).all()
