"""The project's shared package: audio I/O, spectral analysis, PG-NMF and the bundle schema.

Used by both tools (``prep`` and ``player``); it imports neither of them.
"""

__version__ = "0.1.0"
