"""Time-stretch quality: our streaming phase vocoder against librosa and Rubber Band.

A short melody is synthesised with shared/synth.py, and the SAME notes are rendered again at
the stretched tempo: that second rendering is the ideal stretch. Every method stretches the
first rendering at constant rates (X seconds per output second: 0.5, 0.8, 1.25, 2.0) and its
output is compared with the ideal on a 2048/512 STFT magnitude, after time alignment (the lag
that best matches the two energy envelopes, within +-100 ms, reported as ``lag ms``):

* LSD: log-spectral distance (dB), RMS over bins of the dB difference, averaged over the
  frames where the ideal is within 60 dB of its loudest frame (magnitudes floored at -80 dB);
* SC: spectral convergence ``||S_ideal - S|| / ||S_ideal||`` (Frobenius, 0 = identical).

Lower is better for both. The ideal re-renders the notes, so vibrato rate, attacks and
releases keep their durations in seconds while any time-stretch lengthens them: no method
reaches 0. ``resample`` (the player's previous playback: X read faster or slower, the pitch
follows the rate) is shown as the floor to beat. ``cost`` is CPU per output second: for
ours, rendered block by block (20 ms) as the live worker does; for the offline methods,
the whole call (librosa) or the whole process (Rubber Band CLI).

    .venv/bin/python -m benchmarks.vocoder_compare [--notes 16] [--sr 44100]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf

from player.vocoder import StreamingVocoder
from shared.audio import ArrayAudio
from shared.synth import ORGAN, PIANO, VIOLIN, TimeMap, accompaniment, melody, render_notes

RATES = (0.5, 0.8, 1.25, 2.0)
BPM = 100.0
OFFSET_S = 0.3
N_FFT, HOP = 2048, 512


def render(kind: str, notes, rate: float, sr: int, length_s: float) -> np.ndarray:
    """The piece at ``rate`` times the tempo of X (rate 1 = X itself)."""
    tm = TimeMap.constant(BPM * rate, offset_s=OFFSET_S / rate)
    if kind == "violin+vibrato":
        return render_notes(notes, tm, sr, VIOLIN, vibrato_cents=25.0, vibrato_hz=5.5, gain=0.3,
                            length_s=length_s / rate, seed=5)
    solo = render_notes(notes, tm, sr, PIANO, gain=0.3, length_s=length_s / rate, seed=6)
    acc = render_notes(accompaniment(notes, seed=6), tm, sr, ORGAN, gain=0.08, length_s=length_s / rate, seed=7)
    return solo + acc


def ours(x: np.ndarray, sr: int, rate: float, n_out: int) -> tuple[np.ndarray, float]:
    voc = StreamingVocoder(ArrayAudio(x, sr))
    block = int(round(0.02 * sr))
    voc.render(block, rate)  # warm-up (first-call overheads), then start again
    voc = StreamingVocoder(ArrayAudio(x, sr))
    out = np.empty(n_out, dtype=np.float32)
    t0 = time.process_time()
    for i in range(0, n_out, block):
        n = min(block, n_out - i)
        out[i:i + n] = voc.render(n, rate)[:, 0]
    return out, time.process_time() - t0


def librosa_stretch(x: np.ndarray, sr: int, rate: float, n_out: int) -> tuple[np.ndarray, float]:
    t0 = time.process_time()
    y = librosa.effects.time_stretch(x, rate=rate, n_fft=N_FFT, hop_length=HOP)
    return y, time.process_time() - t0


def resample(x: np.ndarray, sr: int, rate: float, n_out: int) -> tuple[np.ndarray, float]:
    t0 = time.process_time()
    pos = np.arange(n_out) * rate
    y = np.interp(pos, np.arange(len(x)), x, right=0.0).astype(np.float32)
    return y, time.process_time() - t0


def rubberband(engine: str):
    def run(x: np.ndarray, sr: int, rate: float, n_out: int) -> tuple[np.ndarray, float]:
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.wav", Path(tmp) / "out.wav"
            sf.write(src, x, sr, subtype="FLOAT")
            t0 = time.perf_counter()
            res = subprocess.run(["rubberband", engine, "-q", "-T", f"{rate}", str(src), str(dst)],
                                 capture_output=True, text=True, check=False)
            wall = time.perf_counter() - t0
            if res.returncode != 0:
                raise RuntimeError(res.stderr.strip() or f"rubberband exited with {res.returncode}")
            y, _ = sf.read(dst, dtype="float32")
        return y, wall
    return run


def magnitude(y: np.ndarray) -> np.ndarray:
    return np.abs(librosa.stft(np.asarray(y, dtype=np.float32), n_fft=N_FFT, hop_length=HOP))


def best_lag(ideal: np.ndarray, y: np.ndarray, sr: int, max_lag_s: float = 0.1) -> int:
    """Lag (samples) to apply to ``y`` so its energy envelope matches the ideal's."""
    h = 64
    def env(s: np.ndarray) -> np.ndarray:
        m = len(s) // h * h
        e = np.log1p(1e3 * np.sqrt((np.asarray(s[:m], dtype=np.float64).reshape(-1, h) ** 2).mean(axis=1)))
        return e - e.mean()
    a, b = env(ideal), env(y)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    k = int(max_lag_s * sr / h)
    scores = [np.dot(a[max(0, -j):n - max(0, j)], b[max(0, j):n - max(0, -j)]) for j in range(-k, k + 1)]
    coarse = (int(np.argmax(scores)) - k) * h
    # refine to the sample on the waveform-energy envelope around the coarse lag
    best, best_score = coarse, -np.inf
    ea, eb = np.asarray(ideal, dtype=np.float64) ** 2, np.asarray(y, dtype=np.float64) ** 2
    kern = np.ones(h) / h
    ea, eb = np.convolve(ea, kern, "same"), np.convolve(eb, kern, "same")
    for j in range(coarse - h, coarse + h + 1, 4):
        lo_a, lo_b = max(0, -j), max(0, j)
        m = min(len(ea) - lo_a, len(eb) - lo_b)
        sc = np.dot(ea[lo_a:lo_a + m], eb[lo_b:lo_b + m])
        if sc > best_score:
            best, best_score = j, sc
    return best


def shifted(y: np.ndarray, lag: int, n: int) -> np.ndarray:
    """``y`` advanced by ``lag`` samples (lag > 0 drops its start), cut or padded to ``n``."""
    y = np.asarray(y, dtype=np.float32)
    y = y[lag:] if lag >= 0 else np.concatenate([np.zeros(-lag, np.float32), y])
    out = np.zeros(n, dtype=np.float32)
    out[:min(n, len(y))] = y[:n]
    return out


def distances(ideal: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    s, t = magnitude(ideal), magnitude(y)
    floor = s.max() * 10 ** (-80 / 20)
    ls, lt = 20 * np.log10(np.maximum(s, floor)), 20 * np.log10(np.maximum(t, floor))
    energy = (s**2).sum(axis=0)
    active = energy > energy.max() * 10 ** (-60 / 10)
    lsd = float(np.mean(np.sqrt(np.mean((ls - lt)[:, active] ** 2, axis=0))))
    sc = float(np.linalg.norm(s - t) / np.linalg.norm(s))
    return lsd, sc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--notes", type=int, default=16)
    ap.add_argument("--sr", type=int, default=44100)
    args = ap.parse_args()
    sr = args.sr

    methods = {"ours (streaming)": ours, "librosa time_stretch": librosa_stretch}
    if shutil.which("rubberband"):
        methods["rubberband R2 (-2)"] = rubberband("-2")
        methods["rubberband R3 (-3)"] = rubberband("-3")
    else:
        print("rubberband CLI not found (apt-get install rubberband-cli): skipped", file=sys.stderr)
    methods["resample (pitch follows)"] = resample

    notes = melody(args.notes, seed=3)
    length_s = OFFSET_S + (notes[-1].beat + notes[-1].dur) * 60.0 / BPM + 0.6
    rows = []
    for kind in ("violin+vibrato", "piano+organ"):
        x = render(kind, notes, 1.0, sr, length_s)
        for rate in RATES:
            ideal = render(kind, notes, rate, sr, length_s)
            for name, fn in methods.items():
                try:
                    y, cost = fn(x, sr, rate, len(ideal))
                except (RuntimeError, OSError) as exc:
                    print(f"{name} at rate {rate}: {exc}", file=sys.stderr)
                    continue
                lag = best_lag(ideal, y, sr)
                lsd, sc = distances(ideal, shifted(y, lag, len(ideal)))
                rows.append((kind, rate, name, lsd, sc, 1000 * lag / sr, 1000 * cost / (len(ideal) / sr)))
    print(f"\nStretch quality vs the ideal re-rendering ({args.notes} notes, {sr} Hz, "
          f"STFT {N_FFT}/{HOP}); rate = X seconds per output second\n")
    print("| signal | rate | method | LSD dB | SC | lag ms | cost ms/s |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for kind, rate, name, lsd, sc, lag, cost in rows:
        print(f"| {kind} | {rate:g} | {name} | {lsd:.2f} | {sc:.3f} | {lag:+.1f} | {cost:.1f} |")
    print("\nMean over rates:\n")
    print("| signal | method | LSD dB | SC |")
    print("|---|---|---:|---:|")
    for kind in dict.fromkeys(r[0] for r in rows):
        for name in dict.fromkeys(r[2] for r in rows):
            sel = [r for r in rows if r[0] == kind and r[2] == name]
            if sel:
                print(f"| {kind} | {name} | {np.mean([r[3] for r in sel]):.2f} | {np.mean([r[4] for r in sel]):.3f} |")
    print("\ncost: ours = CPU ms per output second rendering 20 ms blocks; librosa = CPU of the "
          "offline call; rubberband = wall time of the CLI process (incl. file I/O and start-up).")


if __name__ == "__main__":
    main()
