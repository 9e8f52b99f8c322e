"""prep: analyses a recording once into a bundle for the player."""

import shared  # noqa: F401  (first: limits BLAS threads before numpy loads)
