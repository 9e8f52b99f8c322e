"""The project's shared package: audio I/O, spectral analysis, PG-NMF and the bundle schema.

Used by both tools (``prep`` and ``player``); it imports neither of them.
"""

import os

__version__ = "0.1.0"

# Our matrices are small (the player's NMF is 2 x 32 x 1025; prep's a few hundred frames):
# one BLAS thread (docs/DECISIONS.md). This runs before numpy is first imported by either
# tool; an explicit setting in the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
