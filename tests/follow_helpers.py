"""Helpers for follower tests: build a bundle for a synthetic case and follow a take."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import soundfile as sf

from player.config import EngineConfig
from player.engine import Engine
from player.trace import TraceRecorder
from prep.pipeline import BuildOptions, build_bundle
from shared.alignment import causal_positions
from shared.bundle import Bundle, load_bundle
from shared.spectral import AnalysisParams
from shared.synth import Case

QUICK = BuildOptions(n_components=4, nmf_iter=5)


def bundle_file_for(case: Case, folder: Path, name: str = "x", params: AnalysisParams | None = None) -> Path:
    """X of ``case`` written as ``folder/NAME.wav`` and built (quickly) into ``folder/NAME.h5``."""
    wav = folder / f"{name}.wav"
    sf.write(wav, case.x, case.sr, subtype="PCM_16")
    out = folder / f"{name}.h5"
    build_bundle(wav, out, QUICK if params is None else dataclasses.replace(QUICK, params=params))
    return out


def bundle_for(case: Case, folder: Path, name: str = "x", params: AnalysisParams | None = None) -> Bundle:
    """:func:`bundle_file_for`, loaded."""
    return load_bundle(bundle_file_for(case, folder, name, params))


def tiled_wav(source: Path, target: Path, seconds: float) -> Path:
    """``source`` repeated to ``seconds`` and written to ``target`` (a long recording made
    cheaply: a build long enough to be stopped while it writes)."""
    samples, sr = sf.read(source, dtype="float32", always_2d=True)
    sf.write(target, np.tile(samples, (int(seconds * sr) // len(samples) + 1, 1))[: int(seconds * sr)], sr)
    return target


def follow(bundle: Bundle, u: np.ndarray, sr: int, config: EngineConfig | None = None,
           blocksize: int | None = None, leak_db: float | None = None, leak_delay_s: float = 0.05) -> np.ndarray:
    """Run the engine over ``u`` block by block; rows ``(n_frames, 2)`` of (u_time_s, x_s).
    The engine and what it played (``(n_samples, channels)``) stay in ``follow.last_engine``
    and ``follow.last_output``. With ``leak_db``, what the engine plays (mixed to mono)
    comes back into the microphone ``leak_delay_s`` seconds later at that level (a laptop's
    speakers): a closed loop, as live; U must then be at X's sample rate."""
    recorder = TraceRecorder()
    engine = Engine(bundle, sr, config, on_frame=recorder.frame)
    block = blocksize or int(round(bundle.params.fine_period_s * sr))
    if leak_db is not None:
        assert bundle.audio.sr == sr, "the leak is added to the input as it was played"
        delay = int(round(leak_delay_s * sr))
        leak = np.zeros(len(u) + delay + block, dtype=np.float32)
        gain = np.float32(10 ** (leak_db / 20))
    played = []
    for i in range(0, len(u) - block + 1, block):
        mic = u[i:i + block] if leak_db is None else u[i:i + block] + gain * leak[i:i + block]
        played.append(engine.process(mic))
        if leak_db is not None:
            leak[i + delay:i + delay + played[-1].shape[0]] = played[-1].mean(axis=1)
    follow.last_engine = engine
    follow.last_output = np.concatenate(played)
    return recorder.result().path


def causal_errors(rows: np.ndarray, u_times: np.ndarray, x_true: np.ndarray) -> np.ndarray:
    """|error| (seconds) of the causal estimate (shared.alignment) at each of ``u_times``."""
    return np.abs(causal_positions(rows, u_times) - x_true)


def pct_within(errors: np.ndarray, seconds: float) -> float:
    return float(100.0 * np.mean(errors <= seconds))
