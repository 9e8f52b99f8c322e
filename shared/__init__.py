"""The project's shared package: audio I/O, spectral analysis, PG-NMF and the bundle schema.

Used by both tools (``prep`` and ``player``); it imports neither of them.
"""

import os

__version__ = "0.1.0"

# Our matrices are small (the player's NMF is 2 x 32 x 1025; prep's a few hundred frames):
# BLAS worker threads mostly burn CPU and, when another process holds a core, stall (a 60 s
# build took 5.8 s instead of 1.05 s; the player's run-loop real-time factor went 0.113 ->
# 0.148). This runs before numpy is first imported by either tool; an explicit setting in the
# environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
