"""Batch ``prep build``: many recordings, one bundle each, optionally in parallel processes.

The CLI plans the batch (:func:`plan_jobs`: one ``DIR/<stem>.h5`` per source, duplicate
stems refused before any work) and runs it with :func:`run_batch`, which never stops at a
bad file: every recording gets a :class:`JobResult` (built, or the one-line reason why not).

Serial batches (``workers == 1``) build in this process. Parallel batches use a
``ProcessPoolExecutor`` with the ``spawn`` start method (fresh interpreters: nothing of the
parent's threads or locks is inherited, and it works the same on every platform).

Threads. Each worker is a single-threaded build, so ``workers`` of them use ``workers``
cores and no more: the BLAS/OpenMP/numba thread-count variables (:data:`WORKER_ENV`) are
set to 1 in the parent's environment for the lifetime of the pool, so a spawned worker
has them from its very first instruction, before the interpreter imports numpy, numba or
anything else (an initializer alone would run too late: ``spawn`` re-imports the parent's
``__main__``, i.e. ``prep.cli`` and all of numpy/scipy/numba, before the initializer).
The initializer sets them again for anything reading them lazily. The parent's own
environment is restored when the pool is gone; it computes nothing meanwhile.

Failures and interruptions. Workers ignore SIGINT (they inherit SIG_IGN from the parent
while being spawned, and the initializer sets it again); the parent owns Ctrl-C: it sets a
cancel event (nothing new starts), sends SIGUSR1 to the workers that are building, which
then stop at their build's next progress report by raising through it, so that
``atomic_output`` removes the temporary file, waits until every worker has exited, and
re-raises ``KeyboardInterrupt``. If a worker dies (killed, out of memory, crash), the pool
breaks: the recordings that were being built at that moment are retried one at a time in
a fresh single-worker pool (so an innocent neighbour is rebuilt and a file that kills its
worker is identified and reported), and the ones not started yet go on in a new pool.
Whatever happens, temporary ``.<name>.h5.*.part`` files that appeared beside the batch's
outputs while it ran are removed at the end (a worker killed by SIGKILL cannot clean up).

``prep/cluster.py`` runs the same jobs, through the same :func:`run_job`, on a Dask cluster.

This module imports only the standard library at import time (workers import it first).
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue as queue_module
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared.cli_support import deferred_interrupts
from shared.errors import KaraokeError

#: Thread-count variables set to 1 in workers (numpy's BLAS, OpenMP, MKL, Accelerate, numba).
WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}

#: Seconds between two progress messages of one worker (stage changes are always sent).
PROGRESS_INTERVAL_S = 0.2
#: How often the parent looks at its futures and at the workers' messages (seconds).
POLL_S = 0.1

WORKER_DIED = ("its worker process died while building it (crashed, or killed: out of memory?); "
               "try it alone with 'prep build'")


class BatchError(KaraokeError):
    """The batch cannot start (duplicate stems, unusable output folder)."""


@dataclass(frozen=True)
class Job:
    """One recording of the batch: ``source`` -> ``output``; ``index`` is its input position."""

    index: int
    source: Path
    output: Path


@dataclass(frozen=True)
class JobResult:
    """What became of one recording: built (with its figures), or the one-line reason why not."""

    job: Job
    ok: bool
    message: str = ""
    duration_s: float = 0.0
    seconds: float = 0.0
    bundle_bytes: int = 0
    gain_db: float = 0.0  # < 0: the recording peaked above full scale and was scaled down


class BatchObserver(Protocol):
    """Receives the batch's events (the CLI draws them); all calls come from the caller's thread."""

    def started(self, job: Job) -> None: ...

    def progress(self, job: Job, stage: str, done: int, total: int) -> None: ...

    def finished(self, result: JobResult) -> None: ...


class QuietObserver:
    """An observer that ignores every event (the default)."""

    def started(self, job: Job) -> None:
        pass

    def progress(self, job: Job, stage: str, done: int, total: int) -> None:
        pass

    def finished(self, result: JobResult) -> None:
        pass


# ----------------------------------------------------------------------------- planning
def output_dir_requested(output: str, n_sources: int) -> bool:
    """Whether ``-o`` names a folder: several sources, or a path written with a final '/'."""
    return n_sources > 1 or output.endswith(("/", os.sep))


def plan_jobs(sources: Sequence[Path], out_dir: Path) -> list[Job]:
    """One job per source writing ``out_dir/<stem>.h5``.

    Raises:
        BatchError: two sources share a stem (compared case-insensitively, as some file
            systems do), so they would write the same bundle.
    """
    seen: dict[str, Path] = {}
    jobs = []
    for i, source in enumerate(sources):
        source = Path(source)
        key = source.stem.casefold()
        if key in seen:
            raise BatchError(f"{seen[key]} and {source} would both write {out_dir / (source.stem + '.h5')}; "
                             "rename one of them or build them separately")
        seen[key] = source
        jobs.append(Job(index=i, source=source, output=out_dir / f"{source.stem}.h5"))
    return jobs


def prepare_output_dir(out_dir: Path) -> Path:
    """Create ``out_dir`` if missing (with its parents) and check it is a writable folder.

    Raises:
        BatchError: it is a file, cannot be created, or is not writable.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise BatchError(f"output {out_dir} is a file; with several recordings -o must be a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"cannot create output folder {out_dir} ({exc.strerror or exc})") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise BatchError(f"output folder is not writable: {out_dir}")
    return out_dir


# ----------------------------------------------------------------------------- one build
def one_line(exc: BaseException) -> str:
    """An exception's message on one line (whitespace runs collapsed), at most 300 characters."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def run_job(job: Job, options: Any, force: bool,
            progress: Callable[[str, int, int], None] | None = None) -> JobResult:
    """Build one bundle; any failure becomes a ``JobResult`` with a one-line message.

    ``KeyboardInterrupt`` (and other ``BaseException``) propagate: the build's own
    ``atomic_output`` has already removed its temporary file by then.
    """
    from prep.pipeline import build_bundle  # heavy: imported in the process that builds

    try:
        summary = build_bundle(job.source, job.output, options, force=force, progress=progress)
    except KaraokeError as exc:
        return JobResult(job, False, one_line(exc))
    except MemoryError:
        return JobResult(job, False, "out of memory")
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the batch
        return JobResult(job, False, f"internal error ({type(exc).__name__}: {one_line(exc)[:200]}); please report it")
    return JobResult(job, True, duration_s=summary.duration_s, seconds=summary.seconds,
                     bundle_bytes=summary.bundle_bytes, gain_db=summary.gain_db)


class ProgressThrottle:
    """Which of a build's progress reports are worth sending to another process: every
    stage change and stage end, and otherwise at most one per ``interval_s`` seconds."""

    def __init__(self, interval_s: float = PROGRESS_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._stage, self._sent = "", 0.0

    def __call__(self, stage: str, done: int, total: int) -> bool:
        now = time.monotonic()
        if stage != self._stage or done >= total or now - self._sent >= self.interval_s:
            self._stage, self._sent = stage, now
            return True
        return False


# ----------------------------------------------------------------------------- worker side
class _Terminated(BaseException):
    """Raised inside a worker's running build when it was asked to stop, so its cleanup runs."""


_events: Any = None
_cancel: Any = None
_busy = False
_stop_requested = False

#: The parent's "stop building" signal (POSIX); without it a running build is waited for.
STOP_SIGNAL = getattr(signal, "SIGUSR1", None)


def _on_stop(signum, frame) -> None:  # (a signal handler's signature)
    """The parent's stop request. The running build stops at its next progress report
    (raising from the handler itself could land in a numba/ctypes callback, which would
    swallow it). An idle worker carries on: the next job sees the cancel event and the
    pool's sentinel ends it (exiting here could leave the call queue's lock held)."""
    global _stop_requested
    if _busy:
        _stop_requested = True


def _on_sigterm(signum, frame) -> None:  # (a signal handler's signature)
    """SIGTERM (the pool terminating a broken pool's workers, or anyone): a running build
    stops at its next progress report, cleaning up; an idle worker exits at once."""
    global _stop_requested
    if not _busy:
        os._exit(128 + signum)
    _stop_requested = True


def _init_worker(events, cancel) -> None:
    """Runs first in each worker process (after spawn's imports, see the module docstring)."""
    global _events, _cancel
    os.environ.update(WORKER_ENV)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    if STOP_SIGNAL is not None:
        signal.signal(STOP_SIGNAL, _on_stop)
    _events, _cancel = events, cancel
    events.cancel_join_thread()  # progress messages are expendable; never block exiting on them
    # Once the pool has told a worker to stop, its results are delivered and its files
    # closed; skip the interpreter's teardown of numpy/numba/h5py (about 1 s per worker,
    # on the batch's critical path). atexit handlers run after multiprocessing's own clean-up.
    atexit.register(os._exit, 0)


def _worker_build(job: Job, options: Any, force: bool) -> JobResult | None:
    """The function the pool runs: one build, reporting start and progress to the parent."""
    global _busy
    if _stop_requested or (_cancel is not None and _cancel.is_set()):
        return None
    due = ProgressThrottle()

    def report(stage: str, done: int, total: int) -> None:
        if _stop_requested:
            raise _Terminated()  # unwinds the build: atomic_output removes its temporary file
        if due(stage, done, total):
            _events.put(("progress", job.index, stage, done, total))

    _busy = True
    try:
        _events.put(("start", job.index, os.getpid()))
        return run_job(job, options, force, report)
    except _Terminated:
        os._exit(143)  # the build's temporary file is gone already (atomic_output)
    finally:
        _busy = False


# ----------------------------------------------------------------------------- parent side
def run_batch(jobs: Sequence[Job], options: Any, *, force: bool = False, workers: int = 1,
              observer: BatchObserver | None = None) -> list[JobResult]:
    """Build every job; returns one result per job, in input order.

    Raises:
        KeyboardInterrupt: Ctrl-C; the workers are stopped and no temporary file is left
            (bundles completed before it are kept: each one is whole).
    """
    observer = observer or QuietObserver()
    jobs = list(jobs)
    workers = max(1, min(workers, len(jobs)))
    with removing_strays(jobs):
        if workers == 1:
            return [_run_here(job, options, force, observer) for job in jobs]
        return _run_parallel(jobs, options, force, workers, observer)


def _run_here(job: Job, options: Any, force: bool, observer: BatchObserver) -> JobResult:
    """One build in this process; Ctrl-C stops it at its next progress report (see below)."""
    observer.started(job)
    with deferred_interrupts() as interrupted:

        def report(stage: str, done: int, total: int) -> None:
            if interrupted():
                raise KeyboardInterrupt  # unwinds the build: atomic_output removes its temporary file
            observer.progress(job, stage, done, total)

        result = run_job(job, options, force, report)
    observer.finished(result)
    return result


@contextmanager
def removing_strays(jobs: Sequence[Job]) -> Iterator[None]:
    """Whatever happens inside the block, the ``atomic_output`` temporary files of the
    jobs' outputs that appeared meanwhile are removed at its end (a process killed with
    SIGKILL cannot remove its own); those that were there before are left alone."""
    before = _temporary_files(jobs)
    try:
        yield
    finally:
        for stray in _temporary_files(jobs) - before:
            stray.unlink(missing_ok=True)


def _temporary_files(jobs: Sequence[Job]) -> set[Path]:
    """The ``atomic_output`` temporary files of the jobs' outputs that exist now."""
    found: set[Path] = set()
    for folder in {job.output.parent for job in jobs}:
        names = {f".{job.output.name}." for job in jobs if job.output.parent == folder}
        try:
            entries = list(folder.iterdir())
        except OSError:
            continue
        found.update(p for p in entries if p.name.endswith(".part") and any(p.name.startswith(n) for n in names))
    return found


@contextmanager
def _worker_environment() -> Iterator[None]:
    """Single-threaded numerical libraries in the processes spawned inside the block."""
    saved = {key: os.environ.get(key) for key in WORKER_ENV}
    os.environ.update(WORKER_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Ignore SIGINT inside the block (main thread only); children spawned here inherit it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _run_parallel(jobs: list[Job], options: Any, force: bool, workers: int,
                  observer: BatchObserver) -> list[JobResult]:
    ctx = mp.get_context("spawn")
    results: dict[int, JobResult] = {}
    todo = jobs
    fruitless = 0  # consecutive pool passes that broke before any job reported
    with _worker_environment():
        while todo:
            done, interrupted, unstarted = _pool_pass(ctx, todo, options, force, min(workers, len(todo)), observer)
            results.update(done)
            for job in interrupted:
                # A worker died while these were running: rebuild each alone, so that an
                # innocent neighbour succeeds and the culprit is identified.
                alone, _, _ = _pool_pass(ctx, [job], options, force, 1, observer)
                if job.index not in alone:
                    alone[job.index] = JobResult(job, False, WORKER_DIED)
                    observer.finished(alone[job.index])
                results.update(alone)
            fruitless = 0 if done or interrupted else fruitless + 1
            if fruitless == 2:
                # The pool broke twice before anything started: workers cannot start at all.
                # (Once is not enough: a worker killed at once may take its "started"
                # message with it, unsent, and the job it was building looks unstarted.)
                for job in unstarted:
                    results[job.index] = JobResult(job, False, "worker processes could not be started")
                    observer.finished(results[job.index])
                break
            todo = unstarted
    return [results[job.index] for job in jobs]


def _pool_pass(ctx, jobs: list[Job], options: Any, force: bool, workers: int,
               observer: BatchObserver) -> tuple[dict[int, JobResult], list[Job], list[Job]]:
    """Run ``jobs`` in one pool until all are done or the pool breaks.

    Returns the results obtained, the jobs that were running when the pool broke, and
    the jobs that never started.
    """
    events = ctx.Queue()
    cancel = ctx.Event()
    running: dict[int, int] = {}  # job index -> pid of the worker building it
    started: set[int] = set()
    by_index = {job.index: job for job in jobs}
    results: dict[int, JobResult] = {}

    def drain() -> None:
        while True:
            try:
                message = events.get_nowait()
            except (queue_module.Empty, EOFError, OSError):
                return
            kind, index = message[0], message[1]
            if kind == "start":
                started.add(index)
                running[index] = message[2]
                observer.started(by_index[index])
            elif kind == "progress" and index not in results:
                observer.progress(by_index[index], *message[2:])

    executor = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                   initargs=(events, cancel))
    futures: dict[Future, Job] = {}
    broken = False
    try:
        with _sigint_ignored():  # workers are spawned by submit(): they inherit SIG_IGN
            for job in jobs:
                futures[executor.submit(_worker_build, job, options, force)] = job
        pending = set(futures)
        while pending and not broken:
            finished, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            drain()
            for future in finished:
                job = futures[future]
                running.pop(job.index, None)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                except Exception as exc:  # noqa: BLE001 - e.g. options that cannot be pickled
                    result = JobResult(job, False, f"internal error ({type(exc).__name__}: {one_line(exc)[:200]})")
                if result is None:
                    continue
                results[job.index] = result
                observer.finished(result)
    except BaseException:
        with _sigint_ignored():  # a second Ctrl-C must not interrupt the clean-up
            _stop_workers(executor, futures, cancel, drain, running)
        raise
    executor.shutdown(wait=True)
    drain()
    events.close()
    if not broken:
        return results, [], []
    unfinished = [job for job in jobs if job.index not in results]
    interrupted = [job for job in unfinished if job.index in started]
    unstarted = [job for job in unfinished if job.index not in started]
    return results, interrupted, unstarted


def _stop_workers(executor: ProcessPoolExecutor, futures: dict[Future, Job], cancel, drain,
                  running: dict[int, int]) -> None:
    """Stop the pool: nothing new starts, running builds are abandoned (each removes its
    temporary file), and return once every worker has exited.

    Only busy workers are signalled (:data:`STOP_SIGNAL`): an idle worker may be waiting
    on the call queue holding its lock, and killing it then would hang the others. Idle
    and starting workers see ``cancel`` on their next job and then get the pool's
    sentinel. (Not ``executor.shutdown(wait=False)`` first: it forgets the pool's thread,
    and the final ``shutdown(wait=True)`` would return before the workers have exited.)
    """
    cancel.set()
    for future in futures:
        future.cancel()  # those not handed to the call queue yet
    signalled: set[tuple[int, int]] = set()  # (job index, pid): a worker may get a second job
    deadline = time.monotonic() + 120.0
    while True:
        drain()
        for future, job in futures.items():
            if future.done():
                running.pop(job.index, None)
        for index, pid in set(running.items()) - signalled:
            if STOP_SIGNAL is not None:
                try:
                    os.kill(pid, STOP_SIGNAL)
                except OSError:
                    pass
            signalled.add((index, pid))
        if all(f.done() for f in futures) or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    executor.shutdown(wait=True, cancel_futures=True)
