"""``player``: follow a live (or recorded) solo with a prepared bundle."""

from __future__ import annotations

from shared.cli_support import make_app

app = make_app("Play a prepared recording along with you, following your tempo, solo removed.")


@app.callback()
def _root() -> None:
    """Commands of the player."""


def main() -> None:
    app()
