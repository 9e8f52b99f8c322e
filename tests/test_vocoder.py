"""The streaming phase vocoder: pitch kept, time map honoured, no clicks, identity, gain, image.

Every signal is synthesised here with a known ground truth (tones, markers, bursts), and every
check is an accuracy bound that a wrong implementation fails (the continuity metric is shown
to fail on a hard splice). Nothing here measures time.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import butter, sosfilt, sosfiltfilt

from player.vocoder import StreamingVocoder, default_n_fft
from shared.audio import ArrayAudio

SR = 22050  # n_fft 1024, hop 256


def MemAudio(samples: np.ndarray, sr: int = SR) -> ArrayAudio:
    """In-memory X at the tests' rate (the bundle's audio interface)."""
    return ArrayAudio(samples, sr)


def seconds(s: float, sr: int = SR) -> np.ndarray:
    return np.arange(int(round(s * sr))) / sr


def harmonic(f0: float, t: np.ndarray, amps=(1.0, 0.5, 0.3, 0.2), vibrato_cents: float = 0.0,
             vibrato_hz: float = 5.0, phase: float = 0.0) -> np.ndarray:
    """A harmonic tone; with vibrato its mean frequency is still f0 (sinusoidal FM)."""
    dt = t[1] - t[0]
    f = f0 * 2.0 ** (vibrato_cents * np.sin(2 * np.pi * vibrato_hz * t) / 1200.0)
    ph = 2 * np.pi * np.cumsum(f) * dt + phase
    return sum(a * np.sin((h + 1) * ph) for h, a in enumerate(amps))


def render_blocks(voc: StreamingVocoder, total: int, rate, block: int = 441, gain=None) -> np.ndarray:
    """Render ``total`` samples in blocks; ``rate`` is a number or a function of the block index."""
    out, done, i = [], 0, 0
    while done < total:
        n = min(block, total - done)
        out.append(voc.render(n, rate(i) if callable(rate) else rate, gain))
        done += n
        i += 1
    return np.concatenate(out)


def mean_frequency(y: np.ndarray, sr: int, f_near: float, rel_band: float = 0.04) -> float:
    """Power-weighted mean frequency of the spectral peak near ``f_near`` (whole-signal FFT)."""
    y = np.asarray(y, dtype=np.float64)
    nfft = 1 << int(np.ceil(np.log2(len(y) * 4)))
    p = np.abs(np.fft.rfft(y * np.hanning(len(y)), nfft)) ** 2
    f = np.fft.rfftfreq(nfft, 1 / sr)
    band = (f > f_near * (1 - rel_band)) & (f < f_near * (1 + rel_band))
    return float((p[band] * f[band]).sum() / p[band].sum())


def band_level_db(y: np.ndarray, sr: int, f0: float, half_width_hz: float = 30.0) -> float:
    y = np.asarray(y, dtype=np.float64)
    p = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    f = np.fft.rfftfreq(len(y), 1 / sr)
    return 10 * np.log10(p[np.abs(f - f0) < half_width_hz].sum() + 1e-30)


_HP = butter(8, 4000, "hp", fs=SR, output="sos")


def worst_click_db(y: np.ndarray, skip: int = 2048, win_s: float = 0.002) -> float:
    """Largest high-passed (> 4 kHz) RMS over 2 ms windows, in dB re the signal's RMS.

    The signals used here have no energy above 1 kHz, so any click shows up; the first
    ``skip`` samples (the filter's and the vocoder's start) are ignored."""
    y = np.asarray(y, dtype=np.float64)
    hp = sosfilt(_HP, y)[skip:]
    w = int(win_s * SR)
    m = len(hp) // w * w
    rms = np.sqrt((hp[:m].reshape(-1, w) ** 2).mean(axis=1))
    return float(20 * np.log10(rms.max() / np.sqrt(np.mean(y[skip:] ** 2)) + 1e-30))


def hf_envelope(y: np.ndarray, sr: int = SR, win: int = 44) -> np.ndarray:
    hp = sosfilt(_HP, np.asarray(y, dtype=np.float64)) ** 2
    m = len(hp) // win * win
    return hp[:m].reshape(-1, win).mean(axis=1)


# --------------------------------------------------------------------------- construction

def test_defaults_follow_the_sample_rate():
    for sr, n_fft in ((44100, 2048), (48000, 2048), (22050, 1024), (16000, 512)):
        assert default_n_fft(sr) == n_fft
        voc = StreamingVocoder(MemAudio(np.zeros(100), sr))
        assert (voc.n_fft, voc.hop, voc.n_bins) == (n_fft, n_fft // 4, n_fft // 2 + 1)
        assert voc.bin_hz == pytest.approx(sr / n_fft)
        assert voc.latency_s == pytest.approx(n_fft / 2 / sr)
    voc = StreamingVocoder(MemAudio(np.zeros(100)), n_fft=512, hop=128)
    assert (voc.n_fft, voc.hop, voc.n_bins) == (512, 128, 257)
    with pytest.raises(ValueError):
        StreamingVocoder(MemAudio(np.zeros(100)), n_fft=512, hop=400)


# --------------------------------------------------------------------------- pitch and time

@pytest.mark.parametrize("rate", [0.5, 0.8, 1.25, 2.0])
def test_pure_tone_keeps_its_pitch_and_time_follows_the_rate(rate):
    x = 0.5 * np.sin(2 * np.pi * 440.0 * seconds(6.0))
    voc = StreamingVocoder(MemAudio(x))
    voc.seek(0.5)
    out = render_blocks(voc, int(2.0 * SR), rate)[:, 0]
    assert out.shape == (int(2.0 * SR),)
    f = mean_frequency(out[SR // 10:], SR, 440.0)
    assert abs(f / 440.0 - 1) < 0.005
    # X consumed = rate * output seconds (exact at a constant rate)
    assert voc.position_s == pytest.approx(0.5 + rate * 2.0, abs=1e-6)
    # the output is still a pure tone (a phase mismatch between hops would modulate it) ...
    y = out[SR // 10:].astype(np.float64)
    p = np.abs(np.fft.rfft(y * np.hanning(len(y)))) ** 2
    near = np.abs(np.fft.rfftfreq(len(y), 1 / SR) - 440.0) < 440.0 * 0.03
    assert 10 * np.log10(p[~near].sum() / p[near].sum()) < -60.0
    # ... at the same level
    rms = np.sqrt(np.mean(y**2))
    assert abs(20 * np.log10(rms / (0.5 / np.sqrt(2)))) < 0.5


@pytest.mark.parametrize("rate", [0.5, 0.8, 1.25, 2.0])
def test_harmonic_tone_with_vibrato_keeps_its_pitch(rate):
    x = 0.2 * harmonic(293.66, seconds(5.0), vibrato_cents=30.0, vibrato_hz=5.5)
    voc = StreamingVocoder(MemAudio(x))
    out = render_blocks(voc, int(2.0 * SR), rate, block=300)[:, 0]
    for h in (1, 3):
        ref = mean_frequency(x, SR, 293.66 * h)
        got = mean_frequency(out[SR // 10:], SR, 293.66 * h)
        assert abs(got / ref - 1) < 0.005, (h, got, ref)


def test_varying_rate_keeps_pitch_and_position_follows_the_commanded_rate():
    x = 0.2 * harmonic(220.0, seconds(8.0), vibrato_cents=20.0)
    voc = StreamingVocoder(MemAudio(x))
    block = 441
    rates = [1.2 + 0.8 * math.sin(2 * math.pi * i / 120) for i in range(300)]  # 0.4 .. 2.0
    commanded, pos, out = 0.0, [], []
    for r in rates:
        pos.append((commanded, voc.position_s))
        out.append(voc.render(block, r)[:, 0])
        commanded += r * block / SR
    out = np.concatenate(out)
    assert abs(mean_frequency(out[SR // 10:], SR, 220.0) / 220.0 - 1) < 0.005
    assert abs(mean_frequency(out[SR // 10:], SR, 660.0) / 660.0 - 1) < 0.005
    expect, got = np.array(pos).T
    # a rate reaches the output head at most latency_s after it is given, so position_s lags
    # the commanded integral by at most latency_s * (the rate's change since the start, over
    # the rates given within that delay)
    k = math.ceil(voc.latency_s * SR / block) + 1
    dev = np.abs(np.array(rates) - rates[0])
    bound = np.array([voc.latency_s * dev[max(0, i - k):i + 1].max() for i in range(len(rates))]) + 1e-6
    assert np.all(np.abs(got - expect) <= bound)
    assert np.max(np.abs(got - expect)) < 0.02
    assert abs(got[-1] - expect[-1]) < 0.002  # the rate is back near its start value


def _marker_signal() -> tuple[np.ndarray, float]:
    """A soft low tone with one sharp broadband marker (a 3 ms decaying noise burst)."""
    t = seconds(6.0)
    x = 0.1 * harmonic(196.0, t, amps=(1.0, 0.4))
    t_mark = 2.3
    i = int(t_mark * SR)
    n = int(0.03 * SR)
    burst = np.random.default_rng(3).normal(size=n) * np.exp(-np.arange(n) / (0.003 * SR))
    x[i:i + n] += 0.4 * burst
    return x, t_mark


def _marker_time(y: np.ndarray) -> float:
    """Output time (s) of the marker's onset: first 2 ms window above 1/10 of the HF peak."""
    env = hf_envelope(y, win=44)
    return float(np.flatnonzero(env > 0.1 * env.max())[0] * 44 / SR)


@pytest.mark.parametrize("rate", [0.5, 0.8, 1.25, 2.0])
def test_marker_lands_where_the_time_map_says(rate):
    x, t_mark = _marker_signal()
    voc = StreamingVocoder(MemAudio(x))
    x0 = 1.1
    voc.seek(x0)
    out = render_blocks(voc, int((t_mark - x0) / rate * SR + 0.5 * SR), rate, block=317)[:, 0]
    expected = (t_mark - x0) / rate
    assert abs(_marker_time(out) - expected) < 0.005


def test_marker_lands_where_position_s_says_along_a_varying_rate():
    x, t_mark = _marker_signal()
    voc = StreamingVocoder(MemAudio(x))
    block = 256
    track, out, i = [], [], 0
    while voc.position_s < t_mark + 0.3:
        r = 0.6 + 1.2 * (0.5 + 0.5 * math.sin(i / 17.0))
        track.append(voc.position_s)
        out.append(voc.render(block, r)[:, 0])
        i += 1
    track = np.array(track)
    k = int(np.searchsorted(track, t_mark))  # the block where position_s crosses the marker
    crossing = (k - 1 + (t_mark - track[k - 1]) / (track[k] - track[k - 1])) * block / SR
    assert abs(_marker_time(np.concatenate(out)) - crossing) < 0.005


# --------------------------------------------------------------------------- continuity

def _two_section_signal() -> np.ndarray:
    t = seconds(4.0)
    fade = np.clip((t - 1.95) / 0.1, 0.0, 1.0)
    return 0.15 * (harmonic(220.0, t) * (1 - fade) + harmonic(330.0, t, phase=1.0) * fade)


def _click_bound(x: np.ndarray) -> float:
    """Bound from the clean signal: its own worst window + 20 dB, and never above -60 dB."""
    return min(worst_click_db(x) + 20.0, -60.0)


def test_click_metric_catches_a_hard_splice():
    x = _two_section_signal()
    splice = np.concatenate([x[int(0.3 * SR):int(0.6 * SR)], x[int(2.5 * SR) + 37:int(2.8 * SR)]])
    assert worst_click_db(splice) > _click_bound(x) + 20


def test_no_click_at_rate_changes():
    x = _two_section_signal()
    voc = StreamingVocoder(MemAudio(x))
    schedule = [0.5, 2.0, 0.8, 1.6, 1.0, 0.25, 4.0, 1.0, 0.6, 3.0]  # abrupt jumps, 100 ms each
    out = render_blocks(voc, len(schedule) * 10 * 220, lambda i: schedule[i // 10], block=220)[:, 0]
    assert worst_click_db(out) < _click_bound(x)


def test_no_click_at_seeks():
    x = _two_section_signal()
    voc = StreamingVocoder(MemAudio(x))
    out = []
    for x0, rate in ((0.3, 1.0), (2.5, 1.0), (0.7, 0.8), (3.1, 1.3), (1.0, 1.0), (10.0, 1.0), (0.5, 1.0)):
        voc.seek(x0)
        out.append(render_blocks(voc, 13 * 197, rate, block=197)[:, 0])  # seeks fall mid-hop
        assert voc.position_s == pytest.approx(x0 + rate * 13 * 197 / SR, abs=1e-6)
    out = np.concatenate(out)
    assert worst_click_db(out) < _click_bound(x)
    # and the seeks did happen: the 330 Hz section is heard after the seek to 2.5 s
    seg = out[13 * 197 + 2048:2 * 13 * 197]
    assert band_level_db(seg, SR, 330.0) > band_level_db(seg, SR, 220.0) + 30


# --------------------------------------------------------------------------- identity

def test_identity_at_rate_one():
    rng = np.random.default_rng(0)
    t = seconds(3.0)
    left = 0.2 * harmonic(261.6, t, vibrato_cents=25.0) * (1 + 0.5 * np.sin(2 * np.pi * 1.3 * t))
    left += 0.02 * rng.normal(size=t.size)
    for onset in (0.9, 1.3, 1.7, 2.1):  # attacks, which trigger phase resets
        i = int(onset * SR)
        left[i:i + 400] += 0.5 * rng.normal(size=400) * np.exp(-np.arange(400) / 80.0)
    x = np.stack([left, 0.7 * np.roll(left, 40) + 0.05 * rng.normal(size=t.size)], axis=1)
    ones = np.ones(StreamingVocoder(MemAudio(x)).n_bins)
    for gain, x0 in ((None, 0.0), (None, 0.2), (ones, 0.2)):
        voc = StreamingVocoder(MemAudio(x))
        if x0:
            voc.seek(x0)  # else: the start, at 0
        out = render_blocks(voc, int(2.5 * SR), 1.0, block=333, gain=gain)
        n = voc.n_fft  # after the fade-in from silence (n_fft - hop samples)
        ref = x[int(x0 * SR) + n:int(x0 * SR) + len(out)]
        err = out[n:] - ref
        assert voc.resets == 4
        assert 10 * np.log10(np.sum(err**2) / np.sum(ref**2)) < -40.0


# --------------------------------------------------------------------------- gain

@pytest.mark.parametrize("rate", [1.0, 0.8, 1.5])
def test_gain_removes_one_tone_and_keeps_the_other(rate):
    t = seconds(4.0)
    x = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.3 * np.sin(2 * np.pi * 1500.0 * t + 0.4)
    probe = StreamingVocoder(MemAudio(x))
    bins = np.arange(probe.n_bins) * probe.bin_hz
    gain = np.where(np.abs(bins - 1500.0) < 6 * probe.bin_hz, 0.0, 1.0)
    outs = {}
    for name, g in (("plain", None), ("masked", gain)):
        voc = StreamingVocoder(MemAudio(x))
        outs[name] = render_blocks(voc, int(2.0 * SR), rate, gain=g)[:, 0]
    plain, masked = (outs[k][SR // 5:] for k in ("plain", "masked"))
    assert band_level_db(plain, SR, 1500.0) - band_level_db(masked, SR, 1500.0) > 30.0
    assert abs(band_level_db(plain, SR, 440.0) - band_level_db(masked, SR, 440.0)) < 1.0


def test_gain_is_validated_and_clipped():
    voc = StreamingVocoder(MemAudio(0.3 * np.sin(2 * np.pi * 440.0 * seconds(1.0))))
    with pytest.raises(ValueError):
        voc.render(10, 1.0, np.ones(7))
    loud = voc.render(4000, 1.0, np.full(voc.n_bins, 5.0))  # clipped to 1: no gain above unity
    assert np.max(np.abs(loud)) < 0.31


# --------------------------------------------------------------------------- channels

def test_stereo_image_is_kept_exactly():
    x, _ = _marker_signal()  # an onset too, so phase resets happen
    stereo = np.stack([0.5 * x, x], axis=1)
    voc = StreamingVocoder(MemAudio(stereo))
    gain = np.linspace(1.0, 0.3, voc.n_bins)
    out = np.concatenate([voc.render(500, r, gain) for r in np.linspace(0.5, 1.8, 120)])
    assert out.shape == (60000, 2) and out.dtype == np.float32
    assert voc.resets >= 1
    assert np.max(np.abs(out[:, 0] - 0.5 * out[:, 1])) < 1e-5 * np.max(np.abs(out[:, 1]))


def test_inter_channel_delay_is_kept():
    rng = np.random.default_rng(1)
    t = seconds(4.0)
    left = 0.2 * harmonic(180.0, t, amps=(1, 0.7, 0.5, 0.4, 0.3, 0.2)) + 0.02 * rng.normal(size=t.size)
    lag = 6
    stereo = np.stack([left, np.roll(left, lag)], axis=1)  # right = left 6 samples later
    voc = StreamingVocoder(MemAudio(stereo))
    out = render_blocks(voc, int(2.0 * SR), 1.3)[SR // 5:]
    a, b = out[:, 0].astype(np.float64), out[:, 1].astype(np.float64)
    xc = [np.dot(a[50:-50], b[50 + k:len(b) - 50 + k]) for k in range(-20, 21)]
    assert int(np.argmax(xc)) - 20 == lag


def test_mono_in_mono_out():
    x = 0.3 * np.sin(2 * np.pi * 440.0 * seconds(2.0))
    voc = StreamingVocoder(MemAudio(x))
    out = voc.render(5000, 0.7)
    assert out.shape == (5000, 1) and out.dtype == np.float32
    assert abs(mean_frequency(out[2000:, 0], SR, 440.0) / 440.0 - 1) < 0.005


# --------------------------------------------------------------------------- transients

def _bursts_signal(tone: float) -> tuple[np.ndarray, np.ndarray]:
    t = seconds(3.0)
    x = tone * 0.15 * harmonic(330.0, t, amps=(1.0, 0.5))
    rng = np.random.default_rng(0)
    times = np.arange(0.25, 2.9, 0.35)
    n = int(0.03 * SR)
    for tc in times:
        i = int(tc * SR)
        x[i:i + n] += 0.5 * rng.normal(size=n) * np.exp(-np.arange(n) / (0.004 * SR))
    return x, times


def _attack_levels(x: np.ndarray, times: np.ndarray, rate: float, threshold: float | None):
    """(pre-echo dB re the attacks, attack peak dB, resets): HF energy 40..5 ms before each
    attack's place in the output, and within +-4 ms of it."""
    voc = StreamingVocoder(MemAudio(x))
    if threshold is not None:
        voc.transient_threshold = threshold
    out = render_blocks(voc, int(2.6 / rate * SR), rate)[:, 0]
    hp = sosfilt(_HP, out.astype(np.float64)) ** 2
    ms = SR // 1000
    pre, peak = [], []
    for tc in times[times < 2.5]:
        at = int(tc / rate * SR)
        if at + 40 * ms < len(hp):
            peak.append(hp[at - 4 * ms:at + 4 * ms].mean())
            pre.append(hp[at - 40 * ms:at - 5 * ms].mean())
    pre_db, peak_db = 10 * np.log10(np.mean(pre) + 1e-30), 10 * np.log10(np.mean(peak))
    return pre_db - peak_db, peak_db, voc.resets


@pytest.mark.parametrize("rate", [0.5, 2.0])
@pytest.mark.parametrize("tone", [0.0, 1.0])
def test_phase_reset_keeps_attacks_sharp(tone, rate):
    """Attacks (noise bursts, alone or over a held tone) are reset, not smeared: no pre-echo."""
    x, times = _bursts_signal(tone)
    pre, peak, resets = _attack_levels(x, times, rate, None)
    pre_off, peak_off, resets_off = _attack_levels(x, times, rate, math.inf)
    assert resets == int(np.sum(times < 2.6)) and resets_off == 0  # one per attack, none elsewhere
    assert pre < -50.0
    assert pre < pre_off - 20.0
    assert peak > peak_off


@pytest.mark.parametrize("rate", [0.5, 2.0])
def test_held_notes_keep_their_level_through_phase_resets(rate):
    """Only the bins the attack brings are reset: a held tone under the attacks does not dip."""
    t = seconds(3.0)
    rng = np.random.default_rng(0)
    bursts = np.zeros_like(t)
    n = int(0.03 * SR)
    for tc in np.arange(0.25, 2.9, 0.35):
        i = int(tc * SR)
        bursts[i:i + n] += 0.5 * rng.normal(size=n) * np.exp(-np.arange(n) / (0.004 * SR))
    x = 0.15 * harmonic(330.0, t, amps=(1.0, 0.5)) + sosfilt(butter(8, 3000, "hp", fs=SR, output="sos"), bursts)
    voc = StreamingVocoder(MemAudio(x))
    out = voc.render(int(2.5 / rate * SR), rate)[:, 0]
    assert voc.resets >= 6
    low = sosfiltfilt(butter(8, 1000, "lp", fs=SR, output="sos"), out.astype(np.float64))[SR // 5:]
    w = int(0.01 * SR)
    m = len(low) // w * w
    level = 20 * np.log10(np.sqrt((low[:m].reshape(-1, w) ** 2).mean(axis=1)))
    assert level.max() - level.min() < 1.5


# --------------------------------------------------------------------------- edge cases

def test_block_sizes_do_not_change_the_output():
    x, _ = _marker_signal()
    one = StreamingVocoder(MemAudio(x)).render(12000, 0.9)
    voc = StreamingVocoder(MemAudio(x))
    parts, sizes, i = [], [0, 1, 1, 7, 256, 1000, 0, 3, 255, 4097], 0
    total = 0
    while total < 12000:
        n = min(sizes[i % len(sizes)], 12000 - total)
        block = voc.render(n, 0.9)
        assert block.shape == (n, 1)
        parts.append(block)
        total += n
        i += 1
    np.testing.assert_array_equal(np.concatenate(parts), one)


def test_reading_past_the_end_gives_silence():
    x = 0.3 * np.sin(2 * np.pi * 440.0 * seconds(0.5))
    voc = StreamingVocoder(MemAudio(np.stack([x, x], axis=1)))
    out = render_blocks(voc, 2 * SR, 1.25)
    assert out.shape == (2 * SR, 2)
    end = int(0.5 / 1.25 * SR) + voc.n_fft
    assert np.max(np.abs(out[:end - voc.n_fft])) > 0.2
    assert np.all(out[end:] == 0.0)
    assert voc.position_s == pytest.approx(2.5, abs=1e-6)


def test_seek_beyond_the_end_and_before_the_start_gives_silence():
    x = 0.3 * np.sin(2 * np.pi * 440.0 * seconds(1.0))
    voc = StreamingVocoder(MemAudio(x))
    voc.render(3000, 1.0)
    voc.seek(5.0)
    assert voc.position_s == 5.0
    out = voc.render(8000, 1.0)
    assert np.all(out[voc.n_fft:] == 0.0)  # after the fade-out of the old audio
    voc.seek(-3.0)
    out = voc.render(8000, 1.0)
    assert np.all(out[voc.n_fft:] == 0.0)
    assert voc.position_s == pytest.approx(-3.0 + 8000 / SR, abs=1e-6)


def test_zero_and_one_sample_blocks_and_invalid_arguments():
    voc = StreamingVocoder(MemAudio(np.ones((100, 3), dtype=np.float32) * 0.1))
    assert voc.render(0, 1.0).shape == (0, 3)
    assert voc.position_s == 0.0
    assert voc.render(1, 1.0).shape == (1, 3)
    assert voc.position_s == pytest.approx(1 / SR)
    with pytest.raises(ValueError):
        voc.render(-1, 1.0)
    with pytest.raises(ValueError):
        voc.render(10, float("nan"))
    with pytest.raises(ValueError):
        voc.seek(float("inf"))


def test_rate_is_clipped():
    x = 0.3 * np.sin(2 * np.pi * 440.0 * seconds(10.0))
    for asked, used in ((10.0, 4.0), (0.01, 0.25)):
        voc = StreamingVocoder(MemAudio(x))
        voc.render(SR, asked)
        assert voc.position_s == pytest.approx(used, abs=1e-6)
        assert voc.rate == used
