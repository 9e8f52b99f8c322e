"""What the listener hears, measured on audio: when the accompaniment's onsets land.

:func:`audible_lags` aligns an output to a reference (the ideal karaoke, or another run's
output) by DTW of log-mel spectra (global and monotone, so a repetitive rhythm cannot
alias it as a windowed cross-correlation can) and reads the lag at the reference's onsets,
as the scorer beside the repository does. :func:`offset_s` refines that to the sample
where both signals come from the same renderer (live mode against file mode): a normalised
cross-correlation of a short window around each onset, near the DTW's lag.
"""

from __future__ import annotations

import numpy as np

#: The analysis rate and hop of the alignment (22.05 kHz, 10 ms).
SR = 22050
HOP = 220


def _resampled(y: np.ndarray, sr: int) -> np.ndarray:
    import soxr

    y = np.asarray(y, dtype=np.float32)
    y = y.mean(axis=1) if y.ndim == 2 else y
    return y if sr == SR else soxr.resample(y, sr, SR).astype(np.float32)


def _features(y: np.ndarray) -> np.ndarray:
    import librosa

    m = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=2048, hop_length=HOP, n_mels=96, fmin=60, fmax=8000)
    f = np.log1p(100 * m / (m.max() + 1e-12))
    return f / (np.linalg.norm(f, axis=0, keepdims=True) + 1e-9)


def dtw_lag(out: np.ndarray, ref: np.ndarray, band_s: float = 1.0) -> np.ndarray:
    """Lag of ``out`` behind ``ref`` (seconds; positive: late) at each 10-ms frame of ``ref``
    (both at :data:`SR`)."""
    import librosa

    n = min(out.size, ref.size)
    ref_f, out_f = _features(ref[:n]), _features(out[:n])
    cost = 1.0 - ref_f.T @ out_f
    band = int(round(band_s * SR / HOP))
    i, j = np.indices(cost.shape)
    cost[np.abs(i - j) > band] = 1e3
    _, path = librosa.sequence.dtw(C=cost, step_sizes_sigma=np.array([[1, 1], [1, 0], [0, 1]]), backtrack=True)
    total, count = np.zeros(ref_f.shape[1]), np.zeros(ref_f.shape[1])
    np.add.at(total, path[:, 0], path[:, 1] - path[:, 0])
    np.add.at(count, path[:, 0], 1)
    return total / np.maximum(count, 1) * HOP / SR


def onsets_s(ref: np.ndarray, min_level: float = 0.01) -> np.ndarray:
    """Onset times (seconds) of ``ref`` (at :data:`SR`) where it is not near silence."""
    import librosa

    on = librosa.onset.onset_detect(y=ref, sr=SR, hop_length=HOP, units="frames", backtrack=False)
    level = librosa.feature.rms(y=ref, frame_length=2048, hop_length=HOP)[0]
    n = level.size
    on = on[(on > 10) & (on < n - 10)]
    return on[level[on] > min_level * level.max()] * HOP / SR


def audible_lags(out: np.ndarray, ref: np.ndarray, sr: int) -> np.ndarray:
    """The lag (seconds; positive: late) of ``out`` at each onset of ``ref`` (both at
    ``sr``, mono or ``(n, channels)``)."""
    o, r = _resampled(out, sr), _resampled(ref, sr)
    lag = dtw_lag(o, r)
    frames = np.round(onsets_s(r) * SR / HOP).astype(int)
    return lag[np.clip(frames, 0, lag.size - 1)]


def offset_s(out: np.ndarray, ref: np.ndarray, sr: int, window_s: float = 0.1, search_s: float = 0.03,
             min_corr: float = 0.7) -> tuple[float, int]:
    """How much later ``out`` plays what ``ref`` plays (seconds, sample-precise), for two
    renderings of the same material: the median over ``ref``'s onsets of the lag that best
    correlates a ``window_s`` window, searched ``search_s`` around the DTW's lag; and how
    many onsets matched (normalised correlation at least ``min_corr``)."""
    o, r = _resampled(out, sr), _resampled(ref, sr)
    lag = dtw_lag(o, r)
    win, search = int(window_s * SR), int(search_s * SR)
    found = []
    for t in onsets_s(r):
        start = int(t * SR) - win // 5
        guess = start + int(round(lag[min(int(t * SR / HOP), lag.size - 1)] * SR))
        lo, hi = guess - search, guess + search + win
        if start < 0 or lo < 0 or hi > o.size or start + win > r.size:
            continue
        seg, pattern = o[lo:hi], r[start:start + win]
        corr = np.correlate(seg, pattern, "valid")
        energy = np.sqrt(np.convolve(seg * seg, np.ones(win), "valid") * float(pattern @ pattern)) + 1e-12
        k = int(np.argmax(corr / energy))
        if corr[k] / energy[k] >= min_corr:
            found.append((lo + k - start) / SR)
    return (float(np.median(found)) if found else float("nan")), len(found)


def within(lags_s: np.ndarray, tolerance_s: float) -> float:
    """% of ``lags_s`` within ``tolerance_s`` of 0."""
    return float(100.0 * np.mean(np.abs(lags_s) <= tolerance_s)) if len(lags_s) else float("nan")
