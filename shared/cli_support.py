"""What both command-line tools share: one-line errors and exit codes.

No traceback ever reaches a user: a ``KaraokeError`` becomes ``error: <message>`` on stderr,
Ctrl-C becomes ``interrupted``, and anything unexpected becomes one ``internal error`` line.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from shared.errors import KaraokeError, first_line

F = TypeVar("F", bound=Callable)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(code)


def one_line_errors(func: F) -> F:
    """Decorate a typer command so every failure is one clear line on stderr."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KaraokeError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted", EXIT_INTERRUPTED) from None
        except MemoryError:
            raise fail("out of memory") from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
            text = first_line(exc, 200)
            raise fail(f"internal error ({type(exc).__name__}: {text}); please report it", 3) from None

    return wrapper  # type: ignore[return-value]


def make_app(help_text: str) -> typer.Typer:
    """A typer app with our conventions (no rich tracebacks, no shell-completion noise)."""
    return typer.Typer(help=help_text, add_completion=False, no_args_is_help=True,
                       pretty_exceptions_enable=False)
