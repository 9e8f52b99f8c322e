"""Kernels compiled ahead of time or by numba's JIT (shared.kernels): calls reach the compiled
function only with exactly the declared arrays, a module built from other code is never
used, and the player's output is bit-identical either way."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest
import soundfile as sf

from player.filemode import run_file
from shared import kernels
from shared.bundle import load_bundle
from shared.kernels import Kernel, parse_signature


def weighted_sum(a, n, scale):
    total = 0.0
    for i in range(n):
        total += a[i] * scale
    return total


def weighted_sum_changed(a, n, scale):
    total = 0.0
    for i in range(n):
        total += a[i] * scale * 2.0
    return total


SIGNATURE = "float64(float64[::1], int64, float64)"


def test_signatures_give_each_array_argument_its_dtype_and_dimensions():
    checks = parse_signature("float64(float32[:, :, ::1], int64, complex128[::1], float64, boolean[::1])")
    assert checks == ((0, np.dtype(np.float32), 3), (2, np.dtype(np.complex128), 1), (4, np.dtype(np.bool_), 1))
    assert parse_signature("void()") == ()
    for bad in ("float64(float64[:, :])", "float64(float64[::1, :])", "float64(object)", "float64 float64[::1]"):
        with pytest.raises(ValueError):
            parse_signature(bad)


@pytest.fixture
def fake_module(monkeypatch):
    """A stand-in for the compiled module: records which calls reach it."""
    module = types.SimpleNamespace(calls=[])
    monkeypatch.setattr(kernels, "_compiled", module)
    monkeypatch.setattr(kernels, "_prefer_compiled", True)
    return module


def test_only_exactly_declared_arrays_reach_the_compiled_function(fake_module):
    """The compiled functions do not check their arguments (another dtype or layout would
    be read as the declared one, or crash): everything else goes to numba's JIT, and gives
    the right answer there."""
    k = Kernel(weighted_sum, (SIGNATURE,), fastmath=False)

    def compiled(a, n, scale):
        fake_module.calls.append(a)
        return -1.0  # recognisable: not the sum

    setattr(fake_module, k.export_name(SIGNATURE), compiled)
    a = np.arange(6.0)
    assert k(a, 3, 2.0) == -1.0 and k.compiled
    for other in (a.astype(np.float32), a.astype(np.int64), a[::2]):  # another dtype, a strided view
        assert k(other, 3, 2.0) == 2.0 * float(other[0] + other[1] + other[2])  # by the JIT: the sum
    for unsupported in (a.reshape(2, 3), a.astype(a.dtype.newbyteorder())):  # the JIT's business (it refuses)
        with contextlib.suppress(Exception):
            k(unsupported, 3, 2.0)
    assert len(fake_module.calls) == 1  # none of the others reached it


def test_a_module_built_from_other_code_is_not_used(fake_module):
    """The export's name carries the code's fingerprint: a kernel whose code changed since
    the build finds no function under its new name and runs by the JIT."""
    old = Kernel(weighted_sum, (SIGNATURE,), fastmath=False)
    setattr(fake_module, old.export_name(SIGNATURE), lambda *args: -1.0)
    changed = Kernel(weighted_sum_changed, (SIGNATURE,), fastmath=False)
    changed.__name__ = old.__name__  # the same kernel, edited
    assert changed.export_name(SIGNATURE) != old.export_name(SIGNATURE)
    assert not changed.compiled
    assert changed(np.arange(4.0), 2, 1.0) == 2.0


def test_the_fingerprint_follows_the_code_the_flags_the_callees_and_the_constants():
    def with_globals(func, **extra):
        return types.FunctionType(func.__code__, {**func.__globals__, **extra}, func.__name__)

    def scaled(x):
        return helper(x) * FACTOR  # noqa: F821 (given by with_globals)

    def helper_a(x):
        return x + 1.0

    def helper_b(x):
        return x + 2.0

    base = Kernel(with_globals(scaled, helper=Kernel(helper_a, (), False), FACTOR=2.0), (), False)
    same = Kernel(with_globals(scaled, helper=Kernel(helper_a, (), False), FACTOR=2.0), (), False)
    assert base.fingerprint() == same.fingerprint()
    others = [
        Kernel(with_globals(scaled, helper=Kernel(helper_b, (), False), FACTOR=2.0), (), False),  # a callee
        Kernel(with_globals(scaled, helper=Kernel(helper_a, (), False), FACTOR=3.0), (), False),  # a constant
        Kernel(with_globals(scaled, helper=Kernel(helper_a, (), False), FACTOR=2.0), (), True),  # fastmath
        Kernel(helper_a, (), False),  # the code
    ]
    assert len({base.fingerprint(), *(k.fingerprint() for k in others)}) == 5


def test_a_kernel_calling_another_compiles_by_the_jit(monkeypatch):
    """numba sees a called kernel as its dispatcher (the JIT path, also what the build exports)."""
    monkeypatch.setattr(kernels, "_prefer_compiled", False)

    def offset(x):
        return x + 0.5

    def total(a):
        s = 0.0
        for v in a:
            s += plus(v)  # noqa: F821 (given below)
        return s

    helper = Kernel(offset, (), False)
    outer = Kernel(types.FunctionType(total.__code__, {**total.__globals__, "plus": helper}, "total"),
                   ("float64(float64[::1])",), False)
    assert outer(np.arange(4.0)) == 6.0 + 4 * 0.5
    assert outer.jit_signatures == 1 and not outer.compiled


def test_every_kernel_module_is_declared_for_the_build():
    """The build imports KERNEL_MODULES to find the kernels: a module that declares kernels
    and is missing there would silently stay on the JIT."""
    from pathlib import Path

    root = Path(kernels.__file__).resolve().parents[1]
    declaring = sorted(
        ".".join(p.relative_to(root).with_suffix("").parts)
        for package in ("shared", "player", "prep")
        for p in (root / package).glob("*.py")
        if "\n@kernel(" in p.read_text() and p.name != "kernels.py"
    )
    assert declaring == sorted(kernels.KERNEL_MODULES)


@pytest.mark.skipif(kernels.compiled_module() is None, reason="kernels not compiled ahead of time (python -m shared.kernels)")
def test_the_player_plays_the_same_bits_with_compiled_and_jit_kernels(case, bundle_path, tmp_path):
    """The compiled module exports the JIT's own code: the same take through the engine
    (the search and the relocator move it, the separation and the vocoder run) gives the
    same output and path, bit for bit, with either."""
    half = case.u.size // 2
    take = tmp_path / "take.wav"
    sf.write(take, np.concatenate([case.u[half:], case.u[:half]]), case.sr, subtype="FLOAT")
    outputs = {}
    previous = kernels.prefer_compiled(True)
    try:
        for compiled in (True, False):
            kernels.prefer_compiled(compiled)
            out, path = tmp_path / f"out_{compiled}.wav", tmp_path / f"path_{compiled}.csv"
            with load_bundle(bundle_path) as bundle:
                run_file(bundle, take, output_path=out, alignment_path=path, force=True)
            declared = [k for k in kernels.kernels() if k.signatures]
            assert all(k.compiled == compiled for k in declared)
            outputs[compiled] = (out.read_bytes(), path.read_bytes())
    finally:
        kernels.prefer_compiled(previous)
    assert outputs[True] == outputs[False]


@pytest.mark.skipif(kernels.compiled_module() is None, reason="kernels not compiled ahead of time (python -m shared.kernels)")
def test_a_module_built_on_another_processor_is_not_used(monkeypatch):
    """The compiled code uses this CPU's instruction sets: on a machine whose differ (a copied
    checkout, a container moved to an older host) it could crash, so it is not loaded."""
    monkeypatch.setattr(kernels, "_compiled", False)
    assert kernels.compiled_module() is not None  # built here
    monkeypatch.setattr(kernels, "_compiled", False)
    monkeypatch.setattr(kernels, "host_fingerprint", lambda: "0" * 16)
    assert kernels.compiled_module() is None


def test_the_export_names_are_the_same_in_every_process():
    """The build and the player are different processes: the names must not depend on
    anything that varies between them (string hashing, the order modules were imported)."""
    import os
    import subprocess
    import sys

    code = ("from shared import kernels\n"
            "import importlib\n"
            "for m in reversed(kernels.KERNEL_MODULES): importlib.import_module(m)\n"
            "print(sorted(k.export_name(s) for k in kernels.kernels() for s in k.signatures))")
    names = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert len(names) == 1 and "player_follower__band_update__0_" in names.pop()
