"""Benchmarks, run as ``python -m benchmarks.NAME`` from the repository's root.

Importing :mod:`shared` first limits BLAS to one thread before numpy loads, as in the tools.
"""

import shared  # noqa: F401
