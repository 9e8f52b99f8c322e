"""Compiled kernels: built ahead of time at install where a C compiler is found, else
compiled by numba's JIT at first use.

A kernel is a Python function over numpy arrays and scalars, in numba's nopython subset,
declared with :func:`kernel` and the numba signatures the player calls it with::

    @kernel("float64(float32[:, :, ::1], int64, float32[::1])", fastmath=True)
    def _score(templates, offset, u): ...

``python -m shared.kernels`` (``make install`` runs it) compiles every declared signature
of every kernel into one extension module beside this file, ``shared/_compiled_kernels``,
with numba's ahead-of-time compiler (``numba.pycc``) for this machine's CPU. Each signature
is exported as a thin function that calls the kernel's JIT dispatcher, so the machine code
is the one numba's JIT makes (same flags, same CPU): results are bit-identical either way.

At run time a call goes to the compiled module when every array argument has the declared
dtype, number of dimensions and C order (checked per call: the compiled functions do not
check their arguments and would crash on others) and the module was built from the
kernel's present code (each export's name carries a fingerprint of the kernel's code, of
the kernels it calls and of the constants it reads). Otherwise (other dtypes, a stale or
missing module, a module built on a processor with other instruction sets, ``KARAOKE_KERNELS=jit``
in the environment) the call goes to numba's JIT dispatcher, created then (``cache=True``).

Why: importing numba and loading its cached kernels took about 0.6 s of the player's 1-s
start-up (numba's import 0.25 s, its typing registries and 15 cached kernels 0.4 s). With
the compiled module the player does not import numba at all.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np

#: The extension module the build writes beside this file.
COMPILED_MODULE = "_compiled_kernels"
#: The modules that declare kernels (the build imports them to find every kernel).
KERNEL_MODULES = (
    "shared.spectral",
    "shared.pgnmf",
    "player.activity",
    "player.echo",
    "player.follower",
    "player.search",
    "player.separation",
    "player.vocoder",
)
#: ``KARAOKE_KERNELS=jit``: never use the compiled module (to compare, or to debug a kernel).
FORCE_JIT = os.environ.get("KARAOKE_KERNELS", "").strip().lower() == "jit"

_REGISTRY: list[Kernel] = []
_compiled: types.ModuleType | None | bool = False  # False: not looked for yet
_prefer_compiled = not FORCE_JIT
_jit_started = False

_ARRAY_ARG = re.compile(r"^(\w+)\[([:,\s1]*)\]$")
_SIGNATURE = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$")
_DTYPES = {"float32": np.float32, "float64": np.float64, "complex64": np.complex64,
           "complex128": np.complex128, "int64": np.int64, "int32": np.int32,
           "boolean": np.bool_, "uint8": np.uint8}


def parse_signature(signature: str) -> tuple[tuple[int, np.dtype, int], ...]:
    """The array arguments of a numba signature string, as ``(position, dtype, ndim)``.

    Only C-ordered arrays (``float32[:, ::1]``) and scalars are accepted: the compiled
    function reads an array's memory as C-ordered whatever it is given, so the call guard
    checks C order, and a signature that promised any other layout could not be guarded.
    """
    match = _SIGNATURE.match(signature)
    if match is None:
        raise ValueError(f"not a numba signature 'ret(arg, ...)': {signature!r}")
    body = match.group(2).strip()
    args = [a.strip() for a in body.split(",")] if body else []
    # a split at commas cuts arrays' dimensions apart: join the pieces back
    merged: list[str] = []
    for piece in args:
        if merged and merged[-1].count("[") > merged[-1].count("]"):
            merged[-1] += ", " + piece
        else:
            merged.append(piece)
    checks = []
    for position, arg in enumerate(merged):
        array = _ARRAY_ARG.match(arg)
        if array is None:
            if arg not in _DTYPES:
                raise ValueError(f"unsupported argument type {arg!r} in {signature!r}")
            continue
        name, dims = array.groups()
        parts = [d.strip() for d in dims.split(",")]
        if name not in _DTYPES or parts[-1] != "::1" or any(p != ":" for p in parts[:-1]):
            raise ValueError(f"only C-ordered arrays of {sorted(_DTYPES)} are supported: {arg!r} in {signature!r}")
        checks.append((position, np.dtype(_DTYPES[name]), len(parts)))
    return tuple(checks)


def _code_fingerprint(code: types.CodeType, digest: hashlib.blake2b) -> None:
    """Feed ``code``'s instructions, names and constants (nested code included) to ``digest``."""
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_argcount)).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_fingerprint(const, digest)
        elif isinstance(const, frozenset):  # (its order follows the process's string hashing)
            digest.update(repr(sorted(repr(c) for c in const)).encode())
        else:
            digest.update(repr(const).encode())


class Kernel:
    """A function compiled ahead of time where possible, by numba's JIT otherwise.

    Call it like the function. ``signatures``: the numba signatures compiled ahead of time
    (none: a helper that other kernels call, compiled only by the JIT); ``fastmath``: as
    numba's. ``dispatcher`` is the JIT-compiled function (created on first use).
    """

    def __init__(self, func: Callable, signatures: tuple[str, ...], fastmath: bool) -> None:
        self.py_func = func
        self.signatures = signatures
        self.fastmath = fastmath
        self._checks = tuple(parse_signature(s) for s in signatures)
        self._aot: tuple[tuple[tuple[tuple[int, np.dtype, int], ...], Callable], ...] = ()
        self._dispatcher = None
        self._resolved = False
        self._call: Callable = self._first_call
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__
        self.__module__ = func.__module__
        self.__doc__ = func.__doc__

    def __repr__(self) -> str:
        return f"<kernel {self.__module__}.{self.__qualname__}>"

    def __call__(self, *args):
        return self._call(*args)

    def _first_call(self, *args):
        self._resolve()
        return self._call(*args)

    def _call_jit(self, *args):
        return self.dispatcher(*args)

    @property
    def compiled(self) -> bool:
        """Whether calls with the declared signatures go to the compiled module."""
        if not self._resolved:
            self._resolve()
        return bool(self._aot)

    def _resolve(self) -> None:
        module = compiled_module() if _prefer_compiled else None
        found = []
        if module is not None:
            for signature, checks in zip(self.signatures, self._checks, strict=True):
                function = getattr(module, self.export_name(signature), None)
                if function is None:  # built from other code: the JIT for every signature
                    found = []
                    break
                found.append((checks, function))
        self._aot = tuple(found)
        self._call = self._guarded_call() if found else self._call_jit
        self._resolved = True

    def _guarded_call(self) -> Callable:
        """A function of the kernel's arity that calls the first compiled signature whose
        arrays the arguments are exactly (type, dtype, dimensions, C order, alignment), else
        the JIT: written out as one expression per signature (0.8 us a call with two arrays,
        against 1.0 us as a loop; kernels are called tens of thousands of times a minute)."""
        names = _argument_names(self.py_func)
        namespace: dict = {"ndarray": np.ndarray, "jit": self._call_jit}
        lines = [f"def call({names}):"]
        for j, (checks, function) in enumerate(self._aot):
            namespace[f"compiled{j}"] = function
            tests = []
            for position, dtype, ndim in checks:
                a = f"a{position}"
                namespace[f"dtype{j}_{position}"] = dtype
                tests.append(f"type({a}) is ndarray and {a}.dtype is dtype{j}_{position} and {a}.ndim == {ndim} "
                             f"and (flags := {a}.flags).c_contiguous and flags.aligned")
            lines.append(f"    if {' and '.join(tests) or 'True'}:")
            lines.append(f"        return compiled{j}({names})")
        lines.append(f"    return jit({names})")
        exec("\n".join(lines) + "\n", namespace)  # noqa: S102 (text made here from the signatures)
        return namespace["call"]

    def fingerprint(self) -> str:
        """A digest of the code the compiled function was made from: this function's code,
        the fastmath flag, the numeric and string constants it reads from its module, and
        the fingerprints of the kernels it calls."""
        digest = hashlib.blake2b(digest_size=8)
        code = self.py_func.__code__
        _code_fingerprint(code, digest)
        digest.update(repr(self.fastmath).encode())
        glb = self.py_func.__globals__
        for name in sorted(set(code.co_names)):
            value = glb.get(name)
            if isinstance(value, Kernel) and value is not self:
                digest.update(value.fingerprint().encode())
            elif isinstance(value, (bool, int, float, str, complex)):
                digest.update(f"{name}={value!r}".encode())
        return digest.hexdigest()

    def export_name(self, signature: str) -> str:
        """The compiled function's name in the module: where it comes from, which signature
        (its position) and the fingerprint of its code."""
        where = f"{self.__module__}.{self.__name__}".replace(".", "_")
        return f"{where}__{self.signatures.index(signature)}_{self.fingerprint()}"

    @property
    def dispatcher(self):
        """numba's JIT dispatcher for this function (imports numba on first use)."""
        if self._dispatcher is None:
            self._dispatcher = _jit(self)
        return self._dispatcher

    @property
    def jit_signatures(self) -> int:
        """How many signatures numba's JIT has compiled or loaded for it (0: never used)."""
        return 0 if self._dispatcher is None else len(self._dispatcher.signatures)

    def reset(self) -> None:
        """Look for the compiled module's function again at the next call."""
        self._resolved = False
        self._aot = ()
        self._call = self._first_call


def kernel(*signatures: str, fastmath: bool = False) -> Callable[[Callable], Kernel]:
    """Declare a kernel: compiled ahead of time for ``signatures`` (numba signature strings
    with C-ordered arrays), by numba's JIT for any other call. See the module's docstring."""

    def declare(func: Callable) -> Kernel:
        k = Kernel(func, tuple(signatures), fastmath)
        _REGISTRY.append(k)
        return k

    return declare


def _jit(k: Kernel):
    """numba's dispatcher for ``k``; the kernels it calls are seen as their dispatchers."""
    global _jit_started
    if not _jit_started:
        from shared.jit_startup import defer_blas_probe

        defer_blas_probe()  # before numba loads its first kernel: 0.2 s less start-up
        _jit_started = True
    import numba

    func = k.py_func
    glb = func.__globals__
    callees = {name: glb[name].dispatcher for name in func.__code__.co_names
               if isinstance(glb.get(name), Kernel) and glb[name] is not k}
    if callees:  # a copy of the function whose globals name the callees' dispatchers
        func = types.FunctionType(func.__code__, {**glb, **callees}, func.__name__, func.__defaults__, func.__closure__)
        func.__qualname__ = k.py_func.__qualname__
        func.__module__ = k.py_func.__module__
        func.__doc__ = k.py_func.__doc__
    return numba.njit(cache=True, fastmath=k.fastmath)(func)


def compiled_module() -> types.ModuleType | None:
    """The compiled kernels' extension module, or None where it was not built, cannot load,
    or was built on a processor with other instruction sets (its code is this CPU's, as the
    JIT's is: moved to an older one it could crash on an instruction that does not exist)."""
    global _compiled
    if _compiled is False:
        try:
            module = importlib.import_module(f"shared.{COMPILED_MODULE}")
        except ImportError:
            module = None
        _compiled = module if module is not None and hasattr(module, f"host_{host_fingerprint()}") else None
    return _compiled


def host_fingerprint() -> str:
    """A digest of this machine's architecture and CPU instruction sets (Linux: the
    ``flags`` or ``Features`` line of /proc/cpuinfo), which the build records."""
    import platform

    digest = hashlib.blake2b(platform.machine().encode(), digest_size=8)
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    digest.update(" ".join(sorted(line.split(":", 1)[-1].split())).encode())
                    break
    except OSError:  # not Linux: the architecture and the processor's name
        digest.update(platform.processor().encode())
    return digest.hexdigest()


def prefer_compiled(prefer: bool) -> bool:
    """Use the compiled module where it fits (True) or numba's JIT only (False), from the
    next call of every kernel on; returns the previous choice (tests compare the two)."""
    global _prefer_compiled
    previous, _prefer_compiled = _prefer_compiled, prefer
    for k in _REGISTRY:
        k.reset()
    return previous


def kernels() -> list[Kernel]:
    """Every kernel declared so far (import :data:`KERNEL_MODULES` first for all of them)."""
    return list(_REGISTRY)


def _argument_names(func: Callable) -> str:
    """``"a0, a1, ..."``, one name per positional argument of ``func``: the parameter list
    of the functions generated for a kernel (its guarded call, the build's forwarder)."""
    return ", ".join(f"a{i}" for i in range(func.__code__.co_argcount))


def _forwarder(k: Kernel) -> Callable:
    """A function of the kernel's arity that calls its dispatcher: what the build exports."""
    names = _argument_names(k.py_func)
    namespace = {"target": k.dispatcher}
    exec(f"def forward({names}):\n    return target({names})\n", namespace)  # noqa: S102 (fixed text)
    return namespace["forward"]


def _built_here() -> int:
    """What the build exports under the host's fingerprint: its name is the information."""
    return 1


def build(output_dir: Path | None = None) -> tuple[Path, int]:
    """Compile every declared signature of every kernel into the extension module
    (:data:`COMPILED_MODULE`, in ``output_dir``, by default beside this file). Written to a
    temporary folder, then moved into place. Returns the module's path and the number of
    exported functions."""
    import shutil
    import tempfile
    import warnings

    for name in KERNEL_MODULES:
        importlib.import_module(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba.pycc is "pending deprecation"
        from numba.pycc import CC

    target = Path(output_dir) if output_dir is not None else Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="kernels-") as tmp:
        cc = CC(COMPILED_MODULE)
        cc.output_dir = tmp
        cc.target_cpu = "host"  # built where it runs: the JIT's CPU, so the JIT's code
        cc.verbose = False
        cc.export(f"host_{host_fingerprint()}", "int64()")(_built_here)  # (see compiled_module)
        count = 0
        for k in _REGISTRY:
            for signature in k.signatures:
                cc.export(k.export_name(signature), signature)(_forwarder(k))
                count += 1
        cc.compile()
        built = Path(tmp) / cc.output_file
        final = target / cc.output_file
        shutil.move(str(built), str(final.with_name(final.name + ".part")))
        os.replace(final.with_name(final.name + ".part"), final)
    return final, count


def up_to_date() -> bool:
    """Whether the compiled module exists and holds every declared signature's present code."""
    for name in KERNEL_MODULES:
        importlib.import_module(name)
    module = compiled_module()
    return module is not None and all(hasattr(module, k.export_name(s)) for k in _REGISTRY for s in k.signatures)


def main(argv: list[str] | None = None) -> int:
    """``python -m shared.kernels [--force]``: build the compiled module unless up to date.
    A failure (no C compiler, no Python headers) is one line on stderr and exit status 1;
    the player then compiles its kernels at first use (about 0.6 s more start-up)."""
    import time

    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--force"]):
        print("usage: python -m shared.kernels [--force]", file=sys.stderr)
        return 2
    if not argv and up_to_date():
        print("kernels: the compiled module is up to date")
        return 0
    start = time.perf_counter()
    try:
        path, count = build()
    except Exception as error:  # noqa: BLE001 (any build failure leaves the JIT in charge)
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        print(f"kernels: not compiled ahead of time ({reason}); the player will compile them at "
              "first use (start-up about 0.6 s longer). Needs a C compiler and Python's headers "
              "(Debian: apt install gcc python3-dev).", file=sys.stderr)
        return 1
    print(f"kernels: compiled {count} functions into {path.name} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":  # the kernels register with shared.kernels, not with __main__
    from shared.kernels import main as _main

    sys.exit(_main())
