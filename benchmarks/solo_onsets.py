"""How soon can the soloist's notes be seen in U? Fast onset detectors against the truth.

The accompaniment must sound with the notes the soloist starts together with it. Today the
player predicts them (:mod:`player.anticipate`); reacting instead would only do if the
soloist's note were seen within a few tens of milliseconds of its start and false alarms
were rare (a false alarm would start the accompaniment's note early). This benchmark
measures what causal detectors on a short window achieve on a set of takes: each detector
fires where its novelty curve rises through a threshold (once per ``REFRACTORY_S``), at the
time the frame's last sample arrives; a firing within -20..+100 ms of a solo onset of
``notes.csv`` counts as that onset's detection. Printed per detector and threshold:

- ``recall``: % of the solo onsets detected; ``in40``: % detected within 40 ms;
- ``median`` and ``p90``: the detection lag (ms) over the detected onsets;
- ``false/s``: firings that detect no solo onset, per second of U.

Detectors (``player``: the player's own; the others on an STFT of ``--n-fft`` samples, hop
``--hop``, 150 Hz - 6 kHz):

- ``player``: the player's onset strength of U (:class:`shared.spectral.OnsetStrength` after
  the player's analysis stages, one value per analysis frame), a peak of at least the
  threshold counting as a note where the anticipator takes it (known one frame after the
  peak; :mod:`player.anticipate`);
- ``flux``: the positive change of the log-compressed magnitudes over one hop, relative to
  the frame's total (the classic spectral flux);
- ``rise``: the positive change over the largest of the last ``--back`` frames, bin by bin
  (a vibrato's or a tremolo's bins were as loud a moment ago: they do not rise);
- ``change``: the Hellinger distance between the frame's and the frame ``--back`` hops
  before's magnitude spectra, each normalised (a new pitch, not a louder one).

    .venv/bin/python -m benchmarks.solo_onsets CASES_DIR [...] [--n-fft 1024] [--hop 128] [--back 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.signal import stft

from benchmarks.follow_eval import note_onsets, read_take

#: The least time between two firings of a detector (seconds).
REFRACTORY_S = 0.08
#: A firing this long before (seconds) to this long after a solo onset detects it.
MATCH_S = (-0.02, 0.1)
#: Band of the novelty curves (Hz).
BAND_HZ = (150.0, 6000.0)
#: Detectors and the thresholds tried by default.
THRESHOLDS = {"player": (0.3, 0.4, 0.5), "flux": (0.1, 0.15, 0.2), "rise": (0.08, 0.1, 0.125),
              "change": (0.3, 0.33, 0.36)}


def player_onset_strength(u: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """The player's onset strength of ``u`` (mono ``(n,)`` at ``sr`` Hz) through its analysis
    stages (spectrum, activity gate, noise removal, observation; no leak canceller: nothing
    was played): ``(times, values)``, ``(m,)`` each, the time (seconds of U) at which each
    analysis frame's last sample arrives and the frame's strength in [0, 1]."""
    from player.activity import ActivityDetector
    from player.analysis import ObservationStage, SpectrumStage
    from player.config import EngineConfig
    from player.denoise import NoiseProfile
    from player.hops import HopStream
    from player.stages import Frame
    from shared.spectral import AnalysisParams

    p, cfg = AnalysisParams(), EngineConfig()
    stages = (SpectrumStage(p), ActivityDetector(p, cfg.activity), NoiseProfile(p.n_bins, p.fine_period_s, cfg.denoise),
              ObservationStage(p))
    frame, times, values, done = Frame(), [], [], 0
    for hop_samples in HopStream(sr, p.sr, p.fine_hop).push(np.asarray(u, dtype=np.float32)):
        done += hop_samples.shape[0]
        frame.samples, frame.end_s = hop_samples, done / p.sr
        frame.now_s = frame.end_s
        for stage in stages:
            stage.process_frame(frame)
        times.append(frame.end_s)
        values.append(float(frame.onset))
    return np.asarray(times), np.asarray(values)


def peaks_known(times: np.ndarray, values: np.ndarray, threshold: float) -> np.ndarray:
    """Times (seconds) at which each peak of ``values`` of at least ``threshold`` is known:
    the frame after it (a peak: at least the frame before, above the frame after)."""
    v = values
    peak = np.flatnonzero((v[1:-1] >= threshold) & (v[1:-1] >= v[:-2]) & (v[1:-1] > v[2:])) + 1
    return times[peak + 1]


def novelty(u: np.ndarray, sr: int, kind: str, n_fft: int = 1024, hop: int = 128,
            back: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A detector's novelty curve of ``u`` (mono ``(n,)`` at ``sr`` Hz).

    Returns ``(times, values)``, each ``(m,)``: the time (seconds of U) at which each frame's
    last sample arrives (when a causal detector knows the value) and the value (see the
    module docstring for ``kind``: ``"flux"``, ``"rise"`` or ``"change"``).
    """
    if kind not in ("flux", "rise", "change"):
        raise ValueError(f"unknown detector {kind!r} (one of flux, rise, change)")
    freqs, times, z = stft(u, sr, nperseg=n_fft, noverlap=n_fft - hop, boundary=None, padded=False)
    lo, hi = np.searchsorted(freqs, BAND_HZ)
    mag = np.abs(z[lo:hi])
    ends = times + n_fft / 2 / sr  # stft's times are the frames' centres
    if kind == "change":
        p = mag / (mag.sum(axis=0) + 1e-12)
        overlap = np.sqrt(p[:, back:] * p[:, :-back]).sum(axis=0)
        return ends[back:], np.sqrt(np.maximum(0.0, 1.0 - overlap))
    comp = np.log1p(100.0 * mag)
    if kind == "flux":
        return ends[1:], np.maximum(0.0, comp[:, 1:] - comp[:, :-1]).sum(axis=0) / (comp[:, 1:].sum(axis=0) + 1e-9)
    before = sliding_window_view(comp, back, axis=1)[:, :-1].max(axis=2)  # frames t-back..t-1 for t >= back
    return ends[back:], np.maximum(0.0, comp[:, back:] - before).sum(axis=0) / (comp[:, back:].sum(axis=0) + 1e-9)


def firings(times: np.ndarray, values: np.ndarray, threshold: float) -> np.ndarray:
    """Times (seconds, ascending) where ``values`` rises through ``threshold``, at most one
    per :data:`REFRACTORY_S`."""
    above = values > threshold
    rising = np.flatnonzero(above[1:] & ~above[:-1]) + 1
    out, last = [], -np.inf
    for t in times[rising]:
        if t - last > REFRACTORY_S:
            out.append(t)
            last = t
    return np.asarray(out)


def curve(u: np.ndarray, sr: int, kind: str, n_fft: int = 1024, hop: int = 128,
          back: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Detector ``kind``'s curve of ``u`` (any of :data:`THRESHOLDS`): ``(times, values)``."""
    return player_onset_strength(u, sr) if kind == "player" else novelty(u, sr, kind, n_fft, hop, back)


def detections(times: np.ndarray, values: np.ndarray, kind: str, threshold: float) -> np.ndarray:
    """When detector ``kind`` fires on its curve (seconds, ascending) at ``threshold``."""
    return peaks_known(times, values, threshold) if kind == "player" else firings(times, values, threshold)


def match(fired: np.ndarray, onsets: np.ndarray) -> tuple[np.ndarray, int]:
    """Detection lag (seconds, ``(k,)``) of each onset some firing detects (the first unused
    firing within :data:`MATCH_S`), and the number of firings that detect none."""
    used = np.zeros(fired.size, dtype=bool)
    lags = []
    for onset in np.sort(onsets):
        hit = np.flatnonzero((fired >= onset + MATCH_S[0]) & (fired <= onset + MATCH_S[1]) & ~used)
        if hit.size:
            used[hit[0]] = True
            lags.append(fired[hit[0]] - onset)
    return np.asarray(lags), int((~used).sum())


def solo_onsets(case: Path) -> np.ndarray:
    """The solo's note onsets (seconds of U, ascending) from ``case/notes.csv``."""
    return np.unique(note_onsets(case / "notes.csv", "solo")[1])


def figures(lags_s: np.ndarray, n_onsets: int, false_alarms: int, seconds: float) -> dict:
    """The printed figures (see the module docstring) from pooled matches."""
    lags = lags_s * 1000.0
    recall = lags.size / max(n_onsets, 1)
    return {"recall": 100.0 * recall, "in40": 100.0 * float(np.sum(lags <= 40.0)) / max(n_onsets, 1),
            "median": float(np.median(lags)) if lags.size else float("nan"),
            "p90": float(np.percentile(lags, 90)) if lags.size else float("nan"),
            "false_per_s": false_alarms / max(seconds, 1e-9)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", type=Path, help="folders of cases (U.flac and notes.csv each)")
    ap.add_argument("--n-fft", type=int, default=1024)
    ap.add_argument("--hop", type=int, default=128)
    ap.add_argument("--back", type=int, default=6, help="look-back of 'rise' and 'change' (hops)")
    ap.add_argument("--detector", nargs="+", default=list(THRESHOLDS), choices=list(THRESHOLDS))
    args = ap.parse_args()
    cases = sorted(c for s in args.sets if s.is_dir() for c in s.iterdir()
                   if (c / "notes.csv").exists() and (c / "U.flac").exists())
    if not cases:
        raise SystemExit("solo_onsets: no cases (folders with U.flac and notes.csv) in " + " ".join(map(str, args.sets)))
    takes = [(*read_take(case), solo_onsets(case)) for case in cases]
    seconds = sum(u.size / sr for u, sr, _ in takes)
    for kind in args.detector:
        curves = [(curve(u, sr, kind, args.n_fft, args.hop, args.back), onsets) for u, sr, onsets in takes]
        for threshold in THRESHOLDS[kind]:
            lags, false_alarms, n = [], 0, 0
            for (times, values), onsets in curves:
                found, false = match(detections(times, values, kind, threshold), onsets)
                lags.append(found)
                false_alarms += false
                n += onsets.size
            row = figures(np.concatenate(lags), n, false_alarms, seconds)
            print(f"{kind:6s} threshold={threshold:<5g} recall={row['recall']:5.1f} in40={row['in40']:5.1f} "
                  f"median={row['median']:5.1f}ms p90={row['p90']:5.1f}ms false/s={row['false_per_s']:5.2f}")


if __name__ == "__main__":
    main()
