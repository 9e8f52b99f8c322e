"""What the player's cost depends on that a test can check without timing anything (timings
belong in benchmarks/bench_cost.py): the start-up does not import the analysis side's heavy
modules, and no compiled kernel is compiled or loaded while audio flows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from benchmarks.bench_cost import GAP_S, join_cases
from shared.kernels import compiled_module

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_player_starts_without_scipy_signal_stats_or_librosa():
    """scipy.signal alone (it pulls in scipy.stats) cost the player most of a second of start-up."""
    code = ("import sys, json; import player.cli, player.engine, player.live, player.filemode; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'librosa' "
            "or m.startswith(('scipy.signal', 'scipy.stats', 'scipy.optimize')))))")
    assert json.loads(run_python(code)) == []


KERNELS = """
import json, sys
import numpy as np, soundfile as sf
from shared import kernels
from player.config import EngineConfig
from player.engine import Engine
from shared.bundle import load_bundle

def signatures():
    return {f"{k.__module__}.{k.__name__}": k.jit_signatures for k in kernels.kernels()}

u, sr = sf.read(sys.argv[2], dtype="float32")
with load_bundle(sys.argv[1]) as bundle:
    engine = Engine(bundle, sr, EngineConfig())
    before = signatures()
    block = int(round(bundle.params.fine_period_s * sr))
    for i in range(0, len(u) - block + 1, block):
        engine.process(u[i:i + block])
    engine.relocator.search.long_score(5.0)  # (a 12-s piece has no far places to score on the long context)
    after = signatures()
    print(json.dumps({"new": {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)},
                      "kernels": sum(1 for v in after.values() if v), "relocations": engine.stats.jumps,
                      "compiled": sum(k.compiled for k in kernels.kernels()),
                      "numba": "numba" in sys.modules, "scipy_linalg": "scipy.linalg" in sys.modules}))
"""


@pytest.fixture(scope="module")
def three_part_take(case, tmp_path_factory):
    """The duet's second half, then its first half again (the search and the relocator move
    the player), then the second half: every stage runs (follower, search, relocator,
    separation, vocoder at changing rates)."""
    half = case.u.size // 2
    take = np.concatenate([case.u[half:], case.u[:half], case.u[half:]])
    path = tmp_path_factory.mktemp("take") / "take.wav"
    sf.write(path, take, case.sr, subtype="FLOAT")
    return path


def test_no_kernel_is_compiled_or_loaded_once_audio_flows(bundle_path, three_part_take):
    """With numba's JIT alone (``KARAOKE_KERNELS=jit``), every kernel the engine runs is
    loaded when it is built (the live stream starts after that): loading one in an audio
    callback takes tenths of a second (a dropout). Then the search scores a place on its
    long context. In a fresh interpreter."""
    result = json.loads(run_python(KERNELS, str(bundle_path), str(three_part_take), env={"KARAOKE_KERNELS": "jit"}))
    assert result["kernels"] >= 5
    assert result["new"] == {}
    assert result["compiled"] == 0
    assert not result["scipy_linalg"]  # numba's BLAS probe was deferred (shared.jit_startup)


@pytest.mark.skipif(compiled_module() is None, reason="kernels not compiled ahead of time (python -m shared.kernels)")
def test_with_the_compiled_kernels_the_player_never_imports_numba(bundle_path, three_part_take):
    """With the kernels compiled at install (``python -m shared.kernels``), every kernel call
    of the same run goes to the compiled module: numba is never imported (its import and
    its kernels' loading were 0.6 s of a 1-s start-up), so nothing is compiled or loaded
    while audio flows either."""
    result = json.loads(run_python(KERNELS, str(bundle_path), str(three_part_take)))
    assert result["compiled"] >= 14
    assert not result["numba"]
    assert result["new"] == {} and result["kernels"] == 0


DEFERRED_PROBE = """
import sys
import numpy as np
from numba import njit
from shared.jit_startup import defer_blas_probe

assert defer_blas_probe() and not defer_blas_probe()  # once per process

@njit
def total(a):
    s = 0.0
    for v in a:
        s += v
    return s

assert total(np.arange(5.0)) == 10.0
loaded = "scipy.linalg" in sys.modules

@njit
def inner(a, b):
    return np.dot(a, b)

@njit
def convolve(a, b):
    return np.convolve(a, b)

a = np.arange(4.0)
assert inner(a, a) == 14.0 and np.array_equal(convolve(a, a), np.convolve(a, a))
print(loaded)
"""


def test_the_deferred_blas_probe_leaves_dot_and_convolve_working():
    """Kernels compile without scipy.linalg; one with np.dot (which needs the BLAS) still
    compiles, and np.convolve (which then uses numba's own inner product) is right."""
    assert run_python(DEFERRED_PROBE) == "False"


def test_bench_cost_joins_cases_into_one_programme(tmp_path):
    """Several cases make one recording and one take, in order, GAP_S of silence between
    pieces in both; cases whose rates differ are refused with a clear message."""
    sr, rng = 8000, np.random.default_rng(0)
    lengths = {"a": (0.5, 0.6), "b": (0.3, 0.25)}  # seconds of X and of U per case
    for name, (x_s, u_s) in lengths.items():
        case = tmp_path / name
        case.mkdir()
        sf.write(case / "X.wav", rng.uniform(0.1, 0.5, (int(x_s * sr), 2)).astype(np.float32), sr, subtype="FLOAT")
        sf.write(case / "U.flac", rng.uniform(0.1, 0.5, int(u_s * sr)).astype(np.float32), sr)
    x_out, u_out = tmp_path / "X.wav", tmp_path / "U.wav"
    join_cases([tmp_path / "a", tmp_path / "b"], x_out, u_out)
    x, x_sr = sf.read(x_out, always_2d=True)
    u, _ = sf.read(u_out, always_2d=True)
    assert x_sr == sr and x.shape[1] == 2 and u.shape[1] == 1
    gap = int(GAP_S * sr)
    assert x.shape[0] == int(0.5 * sr) + gap + int(0.3 * sr)
    assert u.shape[0] == int(0.6 * sr) + gap + int(0.25 * sr)
    first_x, _ = sf.read(tmp_path / "a" / "X.wav", always_2d=True)
    second_u, _ = sf.read(tmp_path / "b" / "U.flac", always_2d=True)
    np.testing.assert_array_equal(x[: first_x.shape[0]], first_x)  # in order, untouched
    assert not x[first_x.shape[0]:first_x.shape[0] + gap].any()  # the gap is silence
    np.testing.assert_allclose(u[-second_u.shape[0]:], second_u, atol=1e-6)
    odd = tmp_path / "c"
    odd.mkdir()
    sf.write(odd / "X.wav", np.zeros((800, 2), np.float32), 16000)
    sf.write(odd / "U.wav", np.zeros(800, np.float32), 16000)
    with pytest.raises(SystemExit, match="cannot join"):
        join_cases([tmp_path / "a", odd], tmp_path / "X2.wav", tmp_path / "U2.wav")
