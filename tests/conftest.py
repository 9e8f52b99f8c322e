"""Shared fixtures: small synthetic recordings with known content, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import settings

from prep.pipeline import BuildOptions, build_bundle
from shared.synth import make_case

#: Quick but real build settings for tests (fewer NMF iterations than the default).
FAST_BUILD = BuildOptions(n_components=8, nmf_iter=30)


@pytest.fixture(scope="session")
def case():
    """A 16-note duet at 44.1 kHz: violin-like solo + organ-like chords, X at 100 bpm, U with rubato."""
    return make_case(n_notes=16, seed=1, sr=44100)


@pytest.fixture(scope="session")
def x_wav(case, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "tutti.wav"
    sf.write(path, case.x, case.sr, subtype="PCM_16")
    return path


@pytest.fixture(scope="session")
def bundle_path(x_wav, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tutti.h5"
    build_bundle(x_wav, out, FAST_BUILD)
    return out


def write_wav(path: Path, samples: np.ndarray, sr: int, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, sr, subtype=subtype)
    return path


# CI explores the same examples on every run (a red build must be reproducible); a
# developer's run explores new ones each time.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
