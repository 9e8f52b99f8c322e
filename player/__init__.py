"""The player: follows a soloist with a prepared bundle and plays the recording along."""

import shared  # noqa: F401  (first: limits BLAS threads before numpy loads)
