"""What both command-line tools share: one-line errors and exit codes.

No traceback ever reaches a user: a ``KaraokeError`` becomes ``error: <message>`` on stderr,
Ctrl-C becomes ``interrupted``, and anything unexpected becomes one ``internal error`` line.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer

from shared.errors import KaraokeError, first_line
from shared.text import inert

F = TypeVar("F", bound=Callable)

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print ``error: message`` on stderr (control characters of file names escaped) and
    return the Exit to raise."""
    print(f"error: {inert(message)}", file=sys.stderr)
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


@contextmanager
def deferred_interrupts() -> Iterator[Callable[[], bool]]:
    """Inside the block, Ctrl-C (SIGINT), ``kill`` (SIGTERM) and a closed terminal (SIGHUP)
    only raise a flag, which the work polls (a build: at each progress report) to raise
    ``KeyboardInterrupt`` where unwinding is safe, so its temporary files go; at the end of
    the block a pending one raises it. Yields the poll, ``interrupted() -> bool``.

    Why not raise from the handler: Python runs it wherever the main thread is, including
    inside weakref callbacks and numba's ctypes callbacks, which print the exception and
    swallow it, and the stop is lost (a build then ran to the end). Outside the main
    thread signals cannot be handled; the poll then always says False.
    """
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    pending: list[int] = []
    wanted = [s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
              if s is not None]
    previous = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in wanted}
    try:
        yield lambda: bool(pending)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if pending:
        raise KeyboardInterrupt


def make_app(help_text: str) -> typer.Typer:
    """A typer app with our conventions (no rich tracebacks, no shell-completion noise)."""
    return typer.Typer(help=help_text, add_completion=False, no_args_is_help=True,
                       pretty_exceptions_enable=False)
