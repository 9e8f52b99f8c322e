"""Run a function on untrusted input in a child process with a time and memory limit.

Why: a hostile HDF5 file can make libhdf5 loop forever or allocate without bound inside C
code, where Python can neither interrupt nor limit it (one byte of a corrupted global heap
is enough; the system's own ``h5dump`` hangs on it too). The loader therefore parses a
bundle in a forked child: the child's address space is limited (``RLIMIT_AS``), its CPU
time too (``RLIMIT_CPU``), and the parent kills it at a wall-clock deadline. What the
child returns travels back through a pipe, numpy arrays without a copy on the child's side
(pickle protocol 5, out-of-band buffers received straight into their final memory).

Where ``fork`` does not exist (Windows), the function runs in the process itself,
unguarded, and the caller's own checks are all that protect it.
"""

from __future__ import annotations

import faulthandler
import os
import pickle
import resource
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from shared.errors import KaraokeError, first_line

T = TypeVar("T")

_HEADER = 8  # bytes of each length prefix on the pipe


class SandboxError(KaraokeError):
    """The isolated call failed without an error of its own: it ran out of time or memory,
    crashed, or returned nothing. ``reason`` is ``"timeout"``, ``"memory"`` or ``"crash"``."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def can_isolate() -> bool:
    """True where :func:`run_isolated` really isolates (POSIX ``fork``)."""
    return hasattr(os, "fork")


def _virtual_memory_bytes() -> int:
    """This process's current address-space size (bytes; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_isolated(func: Callable[..., T], *args: Any, timeout_s: float, memory_bytes: int) -> T:
    """Return ``func(*args)`` computed in a forked child.

    Args:
        func: called in the child; its result must pickle (numpy arrays travel without
            copies). A ``KaraokeError`` it raises is raised again here, unchanged.
        timeout_s: wall-clock limit (seconds); the child is killed when it passes.
        memory_bytes: how much the child may allocate beyond the parent's address space at
            the fork (bytes), enforced with ``RLIMIT_AS`` where the system has it.

    Raises:
        SandboxError: the child ran out of time or memory, crashed, or exited without a
            result; any other exception of ``func`` becomes a ``SandboxError`` ("crash")
            whose message names it.
    """
    if not can_isolate():
        return func(*args)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # the child must not flush the parent's buffered text a second time
    read_fd, write_fd = os.pipe()
    limit = _virtual_memory_bytes() + int(memory_bytes)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(func, args, write_fd, limit, timeout_s)
    os.close(write_fd)
    try:
        status, payload = _receive(read_fd, time.monotonic() + timeout_s)
    finally:
        os.close(read_fd)
        try:
            os.kill(pid, signal.SIGKILL)  # harmless when it already left; a must on timeout
        except ProcessLookupError:
            pass
        _, wait_status = os.waitpid(pid, 0)
    if status == "ok":
        return payload
    if status == "error":
        raise payload
    if status == "memory":
        raise SandboxError("it needs more memory than allowed", "memory")
    if status == "timeout":
        raise SandboxError(f"reading it took longer than {timeout_s:.0f} s", "timeout")
    if status == "failed":
        raise SandboxError(payload, "crash")
    if os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) in (signal.SIGXCPU, signal.SIGKILL):
        raise SandboxError(f"reading it took longer than {timeout_s:.0f} s", "timeout")
    how = (f"signal {signal.Signals(os.WTERMSIG(wait_status)).name}" if os.WIFSIGNALED(wait_status)
           else f"exit status {os.WEXITSTATUS(wait_status)}")
    raise SandboxError(f"the library reading it crashed ({how})", "crash")


def _child(func: Callable, args: tuple, write_fd: int, limit: int, timeout_s: float) -> None:
    """Run ``func`` under limits, send ``(status, payload)`` and exit without cleanup."""
    code = 0
    try:
        faulthandler.disable()  # a crash here is the parent's one line, not a dump on stderr
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C reaches the whole group: just die
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if limit > 0 and hasattr(resource, "RLIMIT_AS"):
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        cpu = max(1, int(timeout_s) + 1)
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        try:
            message: tuple = ("ok", func(*args))
        except KaraokeError as exc:
            message = ("error", exc)
        except MemoryError:
            message = ("memory", None)
        except BaseException as exc:  # noqa: BLE001 - the child reports everything, raises nothing
            message = ("failed", f"{type(exc).__name__}: {first_line(exc, 160)}")
        _send(write_fd, message)
    except MemoryError:
        code = 3
    except BaseException:  # noqa: BLE001 - e.g. an unpicklable result, a closed pipe
        code = 4
    finally:
        os._exit(code)  # no atexit handlers, no flushing of the parent's buffers, no h5py teardown


def _send(fd: int, message: tuple) -> None:
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    _write_all(fd, len(head).to_bytes(_HEADER, "little") + len(views).to_bytes(_HEADER, "little") + head)
    for view in views:
        _write_all(fd, view.nbytes.to_bytes(_HEADER, "little"))
        _write_all(fd, view)


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view.nbytes:
        view = view[os.write(fd, view):]


def _receive(fd: int, deadline: float) -> tuple[str, Any]:
    """Read the child's message before ``deadline``; ``("timeout"|"eof", None)`` otherwise."""
    try:
        sizes = _read_exact(fd, 2 * _HEADER, deadline)
        head = _read_exact(fd, int.from_bytes(sizes[:_HEADER], "little"), deadline)
        buffers = []
        for _ in range(int.from_bytes(sizes[_HEADER:], "little")):
            n = int.from_bytes(_read_exact(fd, _HEADER, deadline), "little")
            buffers.append(_read_exact(fd, n, deadline))
        return pickle.loads(head, buffers=buffers)
    except TimeoutError:
        return "timeout", None
    except EOFError:
        return "eof", None


def _read_exact(fd: int, n: int, deadline: float) -> bytearray:
    out = bytearray(n)
    view = memoryview(out)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    done = 0
    while done < n:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000.0):
            raise TimeoutError
        got = os.readv(fd, [view[done:]])
        if got == 0:
            raise EOFError
        done += got
    return out
