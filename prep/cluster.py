"""Batch ``prep build`` on a Dask cluster: ``prep build FILES... -o DIR/ --scheduler ADDRESS``.

The batch is planned as for a local one (:func:`prep.batch.plan_jobs`) and each recording
is built by the same :func:`prep.batch.run_job` (same build code, same error messages),
but on the workers of a running ``dask scheduler`` (Dask's ``distributed``, the optional
``cluster`` extra, imported only here and only when asked for).

Files travel as bytes, both ways: a worker need not see this machine's folders. The
client reads a recording and ships its bytes inside the task; the worker writes them
under the recording's own name in a private scratch folder (inside the worker's local
directory, which ``distributed`` purges if the worker is killed), builds the bundle there,
reads it back, deletes the folder and returns ``(JobResult, bundle bytes)``. The client
writes the bytes with :func:`shared.fileio.atomic_output`, so no partial bundle ever
appears in ``DIR``; ``--force`` is checked on the client, before a recording is sent.

Memory stays bounded: at most ``2 x`` the cluster's worker threads are in flight (one
building and one waiting per thread, re-counted as workers come and go), and at most
:data:`MAX_BYTES_IN_FLIGHT` bytes of recordings (the scheduler keeps a task's bytes until
the task is done, so that it can run it again elsewhere). More are submitted as results
come back.

Progress: a worker reports its build's start and progress as ``distributed`` events on
:data:`EVENT_TOPIC` (tagged with the run's id); the client hands them to the observer
from its own thread, as the local batch does.

Failures: a bad file is a failed ``JobResult`` with the local message; an unexpected
exception in a task becomes "internal error ..."; a worker that dies has its task run
again on another worker by the scheduler, up to its ``distributed.scheduler.allowed-failures``
times (3 by default), after which the file is reported as having killed its workers
(``KilledWorker``) and the batch goes on.

If the scheduler goes away, every task is lost: the batch stops with :class:`ClusterError`
(the bundles written so far are whole).

Ctrl-C (or SIGTERM/SIGHUP) is polled between results (:func:`shared.cli_support.deferred_interrupts`):
the run's stop event is set (a running build sees it at its next progress report, within
about a second, and stops, removing its scratch folder), the outstanding tasks are
cancelled, and ``KeyboardInterrupt`` is re-raised. Bundles written before it are whole.
"""

from __future__ import annotations

import logging
import queue
import shutil
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from prep.batch import (
    BatchObserver,
    Job,
    JobResult,
    ProgressThrottle,
    QuietObserver,
    one_line,
    removing_strays,
    run_job,
)
from shared.cli_support import deferred_interrupts
from shared.errors import KaraokeError

#: The one line printed when ``distributed`` is missing (the project's name in pyproject.toml).
INSTALL_HINT = ('building on a cluster needs Dask\'s distributed scheduler, which is not installed: '
                'pip install "followme-karaoke[cluster]"')

#: Seconds to reach the scheduler before giving up.
CONNECT_TIMEOUT_S = 5.0
#: Seconds to wait for a first worker when the scheduler has none.
WORKER_WAIT_S = 30.0
#: Tasks in flight per worker thread (one building, one ready to start when it ends).
IN_FLIGHT_PER_THREAD = 2
#: Bytes of recordings in flight at most (a single larger file still goes, alone).
MAX_BYTES_IN_FLIGHT = 2 * 1024**3
#: Seconds between two counts of the cluster's worker threads.
RECOUNT_S = 5.0
#: How long the client waits for news before it looks at Ctrl-C again (seconds).
POLL_S = 0.1
#: Seconds between two progress events of one build (stage changes always go).
EVENT_INTERVAL_S = 0.5
#: Seconds between two looks of a running build at its run's stop event.
STOP_POLL_S = 1.0
#: The event topic of every run (one topic: the scheduler keeps its last 1000 events).
EVENT_TOPIC = "followme-prep-build"

KILLED = ("its workers kept dying while building it (crashed, or killed: out of memory?); "
          "try it alone with 'prep build'")
LOST = "its task was cancelled on the cluster (by another client, or the scheduler restarted or went away)"


class ClusterError(KaraokeError):
    """The cluster cannot be used: ``distributed`` missing, scheduler unreachable, no worker,
    workers without this project (or another version of it)."""


def import_distributed() -> Any:
    """The ``distributed`` module, or :class:`ClusterError` with the install hint."""
    try:
        import distributed
    except ImportError:
        raise ClusterError(INSTALL_HINT) from None
    return distributed


def quiet_client_logs() -> None:
    """Keep ``distributed``'s own log quiet in this process (the command line): it would
    print tracebacks (a lost scheduler, a cancelled reconnection) where the user gets our
    one-line errors; the scheduler's and workers' logs keep the details."""
    import_distributed()  # (its import sets its loggers' levels, some explicitly: after it, all of them)
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name == "distributed" or name.startswith("distributed."):
            logging.getLogger(name).setLevel(logging.CRITICAL)


# ----------------------------------------------------------------------------- connecting
@contextmanager
def connect(address: str, *, timeout_s: float | None = None, wait_workers_s: float | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` of the scheduler at ``address`` (``tcp://host:8786``), with
    at least one worker that runs this version of the project; closed at the block's end.
    The waits default to :data:`CONNECT_TIMEOUT_S` and :data:`WORKER_WAIT_S`.

    Raises:
        ClusterError: ``distributed`` missing, a malformed address, no answer within
            ``timeout_s`` seconds, no worker within ``wait_workers_s`` seconds, or workers
            that cannot import this project or run another version of it.
    """
    distributed = import_distributed()
    from distributed.comm import get_address_host_port

    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    wait_workers_s = WORKER_WAIT_S if wait_workers_s is None else wait_workers_s

    try:  # (checked before Client(): a Client that failed on its address hangs for 2 x timeout_s when collected)
        get_address_host_port(address)
        client = distributed.Client(address, timeout=timeout_s, set_as_default=False)
    except ValueError as exc:
        raise ClusterError(f"invalid scheduler address {address!r} ({one_line(exc)}); "
                           "give it as tcp://HOST:PORT (8786 by default)") from None
    except OSError:  # (TimeoutError included)
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {timeout_s:g} s "
                           "(is 'dask scheduler' running there?)") from None
    except Exception as exc:  # noqa: BLE001 - whatever answered was not a scheduler (even MemoryError, seen)
        raise ClusterError(f"cannot connect to the Dask scheduler at {address} "
                           f"({type(exc).__name__}: {one_line(exc)[:200]})") from None
    try:
        _check_workers(client, address, wait_workers_s)
        yield client
    finally:
        with suppress(Exception):
            client.close(timeout=timeout_s)


def _check_workers(client: Any, address: str, wait_s: float) -> None:
    """At least one worker, and every worker runs this version of the project."""
    if not client.nthreads():
        try:
            client.wait_for_workers(1, timeout=wait_s)
        except (TimeoutError, OSError):
            raise ClusterError(f"no worker has joined the scheduler at {address} within {wait_s:g} s; "
                               f"start some with 'dask worker {address}'") from None
    from shared import __version__

    for worker, version in client.run(_project_version, on_error="return").items():
        if isinstance(version, BaseException):
            raise ClusterError(f"worker {worker} cannot run the build ({type(version).__name__}: "
                               f"{one_line(version)[:120]}): install followme-karaoke {__version__} on every worker")
        if version != __version__:
            raise ClusterError(f"worker {worker} runs followme-karaoke {version}, this machine {__version__}: "
                               "install the same version everywhere")


def _project_version() -> str:
    """Runs on a worker: the project's version there (unpickling this function imports prep)."""
    from shared import __version__

    return __version__


def cluster_threads(client: Any) -> tuple[int, int]:
    """``(workers, threads)`` of the cluster now."""
    threads = client.nthreads()
    return len(threads), sum(threads.values())


# ----------------------------------------------------------------------------- worker side
class _Stopped(BaseException):
    """Raised inside a worker's build when its run was stopped (passes through ``run_job``)."""


class _Reporter:
    """A build's link to its client, from a worker: events out (start, throttled progress)
    and, at most every :data:`STOP_POLL_S` seconds, a look at the run's stop event."""

    def __init__(self, run_id: str, index: int) -> None:
        from distributed import Event, get_worker

        try:
            self.worker = get_worker()
        except ValueError:  # not in a worker (a direct call): no events, no stop
            self.worker = None
        self.run_id, self.index = run_id, index
        self.stop = Event(_stop_name(run_id)) if self.worker is not None else None
        self.due = ProgressThrottle(EVENT_INTERVAL_S)
        self.looked = time.monotonic()

    def scratch_parent(self) -> str | None:
        """Where scratch folders go: the worker's local directory (purged by ``distributed``
        if the worker is killed), else the system's temporary folder."""
        return self.worker.local_directory if self.worker is not None else None

    def send(self, kind: str, **fields: Any) -> None:
        if self.worker is not None:
            self.worker.log_event(EVENT_TOPIC, {"run": self.run_id, "index": self.index, "kind": kind, **fields})

    def __call__(self, stage: str, done: int, total: int) -> None:
        """The build's progress callback."""
        if self._stop_requested():
            raise _Stopped()  # unwinds the build: atomic_output removes the bundle being written
        if self.due(stage, done, total):
            self.send("progress", stage=stage, done=done, total=total)

    def _stop_requested(self) -> bool:
        now = time.monotonic()
        if self.stop is None or now - self.looked < STOP_POLL_S:
            return False
        self.looked = now
        try:
            return bool(self.stop.is_set())
        except Exception:  # noqa: BLE001 - the scheduler out of reach: build on, the result decides
            return False


def _stop_name(run_id: str) -> str:
    return f"followme-prep-stop-{run_id}"


def build_on_worker(job: Job, data: bytes, options: Any, run_id: str) -> tuple[JobResult, bytes | None] | None:
    """The task: build ``job`` from the recording's bytes ``data`` in a private scratch
    folder (removed at the end); returns its result (with this client's paths in it and
    in its message) and the bundle's bytes (None if it failed), or None if the run was
    stopped."""
    report = _Reporter(run_id, job.index)
    try:
        scratch = Path(tempfile.mkdtemp(prefix="followme-build-", dir=report.scratch_parent()))
    except OSError as exc:
        return JobResult(job, False, f"the worker cannot make its scratch folder ({exc.strerror or exc})"), None
    try:
        return _build_in(scratch, job, data, options, report)
    except _Stopped:
        report.send("stopped")  # (nobody listens any more: for the scheduler's event log)
        return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build_in(scratch: Path, job: Job, data: bytes, options: Any,
              report: _Reporter) -> tuple[JobResult, bytes | None]:
    # The recording keeps its name: the bundle records it (and its bytes' SHA-256).
    source, output = scratch / "in" / job.source.name, scratch / "out" / job.output.name
    try:
        source.parent.mkdir()
        output.parent.mkdir()
        source.write_bytes(data)
    except OSError as exc:
        return JobResult(job, False, f"the worker cannot store its copy of the recording ({exc.strerror or exc})"), None
    report.send("start")
    result = run_job(Job(job.index, source, output), options, False, report)
    bundle = output.read_bytes() if result.ok else None
    message = result.message.replace(str(source), str(job.source)).replace(str(output), str(job.output))
    return replace(result, job=job, message=message.replace(str(scratch), "<worker scratch>")), bundle


# ----------------------------------------------------------------------------- client side
def run_batch_on_cluster(jobs: Sequence[Job], options: Any, scheduler: str | Any, *, force: bool = False,
                         observer: BatchObserver | None = None, in_flight: int | None = None,
                         max_bytes_in_flight: int = MAX_BYTES_IN_FLIGHT) -> list[JobResult]:
    """Build every job on the cluster of ``scheduler`` (an address, or a connected
    ``distributed.Client``); returns one result per job, in input order.

    ``in_flight`` fixes how many tasks may be submitted at once (default: 2 per worker
    thread, re-counted every :data:`RECOUNT_S` seconds); ``max_bytes_in_flight`` bounds
    the recordings' bytes in flight.

    Raises:
        ClusterError: see :func:`connect` (only when given an address).
        KeyboardInterrupt: Ctrl-C; the outstanding tasks are cancelled and no partial
            bundle is left (bundles completed before it are kept: each one is whole).
    """
    observer = observer or QuietObserver()
    jobs = list(jobs)
    with removing_strays(jobs):
        if not isinstance(scheduler, str):
            return _ClusterRun(scheduler, jobs, options, force, observer, in_flight, max_bytes_in_flight).run()
        with connect(scheduler) as client:
            return _ClusterRun(client, jobs, options, force, observer, in_flight, max_bytes_in_flight).run()


class _ClusterRun:
    """One batch on one client: submits within the bounds, hands events and results to
    the observer, writes the bundles (see the module docstring)."""

    def __init__(self, client: Any, jobs: list[Job], options: Any, force: bool, observer: BatchObserver,
                 in_flight: int | None, max_bytes: int) -> None:
        self.client, self.jobs, self.options, self.force, self.observer = client, jobs, options, force, observer
        self.fixed_in_flight, self.max_bytes = in_flight, max_bytes
        self.run_id = uuid.uuid4().hex
        self.by_index = {job.index: job for job in jobs}
        self.todo = deque(jobs)
        self.running: dict[Any, tuple[Any, Job, int]] = {}  # key -> (future, job, bytes sent)
        self.results: dict[int, JobResult] = {}
        self.started: set[int] = set()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # events and finished futures, from the client's threads
        self.capacity, self.counted = 0, -RECOUNT_S

    def run(self) -> list[JobResult]:
        self.client.subscribe_topic(EVENT_TOPIC, lambda event: self.inbox.put(("event", event[1])))
        try:
            with deferred_interrupts() as interrupted:
                try:
                    self._loop(interrupted)
                except BaseException:
                    self._stop()
                    raise
        finally:
            with suppress(Exception):
                self.client.unsubscribe_topic(EVENT_TOPIC)
        return [self.results[job.index] for job in self.jobs]

    def _loop(self, interrupted: Callable[[], bool]) -> None:
        while self.todo or self.running:
            self._submit_what_fits()
            try:
                kind, payload = self.inbox.get(timeout=POLL_S)
            except queue.Empty:
                kind = None
            if kind == "event":
                self._on_event(payload)
            elif kind == "done":
                self._on_done(payload)
            if interrupted():
                raise KeyboardInterrupt

    # -- submitting
    def _submit_what_fits(self) -> None:
        while self.todo and self._room_for(self.todo[0]):
            self._submit(self.todo.popleft())

    def _room_for(self, job: Job) -> bool:
        if not self.running:
            return True
        if len(self.running) >= self._capacity():
            return False
        try:
            size = job.source.stat().st_size
        except OSError:
            size = 0  # _submit reports it
        return sum(sent for _, _, sent in self.running.values()) + size <= self.max_bytes

    def _capacity(self) -> int:
        if self.fixed_in_flight is not None:
            return max(1, self.fixed_in_flight)
        if time.monotonic() - self.counted >= RECOUNT_S:
            self.capacity = max(2, IN_FLIGHT_PER_THREAD * cluster_threads(self.client)[1])
            self.counted = time.monotonic()
        return self.capacity

    def _submit(self, job: Job) -> None:
        """Check the job here (as a local build would, in the same order), then send it."""
        from shared.audio import check_readable_file
        from shared.fileio import check_output_path

        try:
            check_readable_file(job.source, "recording")
            check_output_path(job.output, self.force)
            data = job.source.read_bytes()
        except KaraokeError as exc:
            self._finish(JobResult(job, False, one_line(exc)))
            return
        except OSError as exc:
            self._finish(JobResult(job, False, f"cannot read recording {job.source} ({exc.strerror or exc})"))
            return
        import dask

        # The bytes are meant to travel in the task (a retry elsewhere needs them): no warning.
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": f"{len(data) + 2**20}B"}):
            future = self.client.submit(build_on_worker, job, data, self.options, self.run_id,
                                        key=f"prep-build-{self.run_id[:12]}-{job.index}")
        self.running[future.key] = (future, job, len(data))
        future.add_done_callback(lambda done: self.inbox.put(("done", done)))

    # -- receiving
    def _on_event(self, message: Any) -> None:
        if not isinstance(message, dict) or message.get("run") != self.run_id:
            return  # another run's
        job = self.by_index.get(message.get("index"))
        if job is None or job.index in self.results:
            return  # late news of a finished build
        if message.get("kind") == "start":  # again after a retry
            self.started.add(job.index)
            self.observer.started(job)
        elif message.get("kind") == "progress" and job.index in self.started:
            self.observer.progress(job, message["stage"], message["done"], message["total"])

    def _on_done(self, future: Any) -> None:
        entry = self.running.pop(future.key, None)
        if entry is None:
            return
        job = entry[1]
        try:
            result = self._outcome(future, job)
        finally:
            future.release()
        self._finish(result)

    def _outcome(self, future: Any, job: Job) -> JobResult:
        """What became of a finished task: a written bundle, or why not.

        Raises:
            ClusterError: the scheduler is gone (its tasks are all cancelled then).
        """
        from distributed import KilledWorker

        if future.cancelled():
            return self._lost(job)
        try:
            value = future.result()
        except CancelledError:  # (cancelled since the callback)
            return self._lost(job)
        except KilledWorker:
            return JobResult(job, False, KILLED)
        except ImportError as exc:
            return JobResult(job, False, f"a worker cannot run the build ({type(exc).__name__}: {one_line(exc)[:120]}); "
                                         "install followme-karaoke on every worker")
        except Exception as exc:  # noqa: BLE001 - one task's failure must not stop the batch
            return JobResult(job, False, f"internal error ({type(exc).__name__}: {one_line(exc)[:200]}); please report it")
        if value is None:
            return JobResult(job, False, "internal error (its build was stopped on the worker); please report it")
        result, bundle = value
        return self._write(result, bundle) if result.ok else result

    def _lost(self, job: Job) -> JobResult:
        """A task cancelled on the cluster: by someone else (this file failed), or with the
        scheduler (the batch cannot go on)."""
        if self.client.status != "running":  # every task is lost with the scheduler
            raise ClusterError(f"lost the connection to the Dask scheduler ({len(self.results)} of "
                               f"{len(self.jobs)} recordings finished; no partial bundle left)")
        return JobResult(job, False, LOST)

    def _write(self, result: JobResult, bundle: bytes | None) -> JobResult:
        """Write a bundle's bytes to its output, atomically (never a partial file)."""
        from shared.fileio import atomic_output

        job = result.job
        if bundle is None or len(bundle) != result.bundle_bytes:
            return JobResult(job, False, "internal error (the bundle arrived incomplete); please report it")
        try:
            with atomic_output(job.output, self.force) as path:
                path.write_bytes(bundle)
        except KaraokeError as exc:
            return JobResult(job, False, one_line(exc))
        return result

    def _finish(self, result: JobResult) -> None:
        if result.job.index not in self.started:  # (its start event is late, lost, or it never left)
            self.started.add(result.job.index)
            self.observer.started(result.job)
        self.results[result.job.index] = result
        self.observer.finished(result)

    # -- stopping
    def _stop(self) -> None:
        """Ctrl-C (or a lost scheduler): running builds told to stop, outstanding tasks cancelled."""
        if not self.running or self.client.status != "running":  # (without a scheduler they are gone:
            return  # asking it would wait for the connect timeout)
        from distributed import Event

        futures = [future for future, _, _ in self.running.values()]
        self.running.clear()
        with suppress(Exception):
            Event(_stop_name(self.run_id), client=self.client).set()
        with suppress(Exception):
            self.client.cancel(futures)
