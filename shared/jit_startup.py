"""Start-up of numba's compiled kernels without a BLAS probe.

The first compiled kernel a process loads makes numba import its NumPy implementations,
and one of them (``numba.np.arraymath``) probes for a BLAS at import by importing
``scipy.linalg``: about 0.2 s of the player's 1-s start-up, for routines (``np.dot`` and
``np.linalg`` inside kernels) that none of the project's kernels uses. :func:`defer_blas_probe`
imports that module with the probe answering "no BLAS"; numba then computes the inner
products of ``np.convolve``/``np.correlate`` inside kernels with its own loop. ``np.dot``
and ``np.linalg`` inside kernels still work: they check for SciPy again, when compiled.
"""

from __future__ import annotations

import sys


def defer_blas_probe() -> bool:
    """Import ``numba.np.arraymath`` without its import-time BLAS probe (``scipy.linalg``).

    Call it before the process loads its first compiled kernel. Returns True if it did so;
    False if that module was already imported or numba's layout is not the one known here
    (then nothing is changed and numba probes as usual).
    """
    if "numba.np.arraymath" in sys.modules:
        return False
    import numba.np.linalg as linalg

    probe = getattr(linalg, "ensure_blas", None)
    if probe is None:
        return False

    def no_blas_yet() -> None:
        raise ImportError("the BLAS probe is deferred to the first kernel that needs it")

    linalg.ensure_blas = no_blas_yet
    try:
        import numba.np.arraymath  # noqa: F401  (binds no_blas_yet for its probe only)
    finally:
        linalg.ensure_blas = probe
    return True
