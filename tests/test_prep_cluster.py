"""Batch ``prep build ... -o DIR/ --scheduler ADDRESS`` on a real Dask cluster: a scheduler
and two single-thread workers started here as processes (``dask scheduler``, ``dask
worker``), once for the module. Bundles from the cluster are equivalent to local ones, a
bad file is one line and does not stop the batch, a killed worker's file is built again
elsewhere (and one that kills every worker is reported), Ctrl-C stops the running builds
and cancels the rest, and nothing partial is ever left in DIR."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import soundfile as sf

from prep import cluster as cluster_module
from prep.batch import Job, plan_jobs
from prep.cluster import EVENT_TOPIC, KILLED, LOST, ClusterError, connect, run_batch_on_cluster
from prep.pipeline import BuildOptions
from shared.bundle import load_bundle
from shared.synth import make_case
from tests.test_prep_batch import (
    GOOD,
    QUICK,
    assert_only_bundles,
    error_lines,
    good_files,
    prep_exe,
    run,
    write_sources,
)

distributed = pytest.importorskip("distributed")

DASK = str(Path(sys.executable).with_name("dask"))
#: Builds of a second or more on a 20-s recording (a worker can be killed while it builds).
SLOW = BuildOptions(n_components=48, nmf_iter=300)
#: Builds of several seconds on a 20-s recording, so that they are stopped, not finished.
LONGER = ["--components", "64", "--nmf-iter", "5000"]
#: Seconds a stopped build may take to notice (it looks once a second) and clean up.
STOP_WITHIN_S = 10.0


# ----------------------------------------------------------------------------- the cluster
@dataclass
class Cluster:
    """A scheduler and two workers (each a nanny and its worker process), and a client."""

    address: str
    client: object
    root: Path

    def building(self) -> list[Path]:
        """The scratch folders of the builds the workers are running now."""
        found = []
        for folder, names, _ in os.walk(self.root):  # (not Path.glob: it fails on a folder removed meanwhile)
            found += [Path(folder) / name for name in names if name.startswith("followme-build-")]
        return sorted(found)

    def kill_worker_building(self, index: int) -> None:
        """SIGKILL the worker process running job ``index`` now (its nanny starts a new one)."""
        for address, keys in self.client.processing().items():
            if any(str(key).startswith("prep-build-") and str(key).rsplit("-", 1)[1] == str(index) for key in keys):
                pid = self.client.run(os.getpid, workers=[address])[address]
                os.kill(pid, signal.SIGKILL)
                return
        raise AssertionError(f"no worker is building job {index}")

    def wait_idle(self, timeout: float = STOP_WITHIN_S) -> None:
        """Wait until no build runs on any worker (their scratch folders are gone)."""
        deadline = time.monotonic() + timeout
        while self.building():
            assert time.monotonic() < deadline, f"builds still running: {self.building()}"
            time.sleep(0.05)

    def stopped_builds(self) -> int:
        """How many builds were stopped by their run's stop event so far (the scheduler's
        event log: a build that stops says so)."""
        events = self.client.get_events(EVENT_TOPIC)
        return sum(isinstance(msg, dict) and msg.get("kind") == "stopped" for _, msg in events)

    def wait_stopped(self, before: int, timeout: float = 10.0) -> None:
        """Wait until a build has said it stopped (after ``before`` had)."""
        deadline = time.monotonic() + timeout
        while self.stopped_builds() <= before:
            assert time.monotonic() < deadline, "no build was stopped"
            time.sleep(0.05)


def _start(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as out:  # (the child keeps its own descriptor)
        return subprocess.Popen([DASK, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop our dask processes and their children (each leads its own process group)."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def start_scheduler(root: Path, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    """A ``dask scheduler`` on a free local port, and its address once it listens."""
    info = root / "scheduler.json"
    proc = _start(["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(info),
                   "--idle-timeout", "900"], root / "scheduler.log", env)  # (if this process were killed: not for ever)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, (root / "scheduler.log").read_text()
        try:
            return proc, json.loads(info.read_text())["address"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    _stop([proc])
    raise AssertionError("the scheduler did not start")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One worker death is retried, a second one of the same task fails it (allowed-failures
    is 1 here, 3 by default), so that a file that kills its workers is quick to test."""
    root = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1"}
    scheduler, address = start_scheduler(root, env)
    procs = [scheduler]
    client = None
    try:
        for i in (1, 2):
            procs.append(_start(["worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                 "--death-timeout", "60", "--local-directory", str(root / f"w{i}")], root / f"w{i}.log"))
        client = distributed.Client(address, timeout=30, set_as_default=False)
        client.wait_for_workers(2, timeout=120)
        yield Cluster(address, client, root)
    finally:
        if client is not None:
            client.close()
        _stop(procs)


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """Three good 3 s recordings (as tests/test_prep_batch.py's), a corrupt one, an empty
    one, and two 20 s recordings for slow builds."""
    folder = write_sources(tmp_path_factory.mktemp("sources"))
    (folder / "empty.wav").write_bytes(b"")
    for i in range(2):
        case = make_case(n_notes=28, seed=40 + i)
        sf.write(folder / f"long{i}.wav", case.x[: 20 * case.sr], case.sr, subtype="PCM_16")
    return folder


def long_files(folder: Path) -> list[Path]:
    return [folder / "long0.wav", folder / "long1.wav"]


class Recorder:
    """A batch observer that keeps what it was told, and can act when a build starts."""

    def __init__(self, on_start=None) -> None:
        self.events: list[tuple[str, int]] = []
        self.results = []
        self.on_start = on_start

    def started(self, job: Job) -> None:
        self.events.append(("started", job.index))
        if self.on_start is not None:
            self.on_start(job)

    def progress(self, job: Job, stage: str, done: int, total: int) -> None:
        self.events.append(("progress", job.index))

    def finished(self, result) -> None:
        self.events.append(("finished", result.job.index))
        self.results.append(result)

    def count(self, kind: str, index: int) -> int:
        return self.events.count((kind, index))


# ----------------------------------------------------------------------------- the batch
def test_cluster_bundles_equal_local_ones_and_bad_files_are_reported(cluster, sources, tmp_path):
    out, local = tmp_path / "out", tmp_path / "local"
    files = good_files(sources)
    result = run("build", files[0], sources / "corrupt.wav", files[1], sources / "empty.wav", files[2],
                 "-o", out, "--scheduler", cluster.address, *QUICK)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout.startswith(f"building 5 recording(s) into {out} (on the Dask cluster at {cluster.address}")
    lines = error_lines(result)
    assert len(lines) == 2 and all(line.startswith("error:") for line in lines), lines
    assert sum("corrupt.wav" in line and "cannot decode" in line for line in lines) == 1, lines  # worker side
    assert sum("empty.wav" in line and "empty (0 bytes)" in line for line in lines) == 1, lines  # client side
    progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in progress] == [f"[{i}/5" for i in range(1, 6)]
    assert sum("FAILED" in line for line in progress) == 2
    assert "3 of 5 bundles built" in result.stdout and "2 failed" in result.stdout
    assert_only_bundles(out, GOOD)
    same_run = run("build", *files, "-o", f"{local}/", *QUICK, "-q")  # this machine, serial
    assert same_run.exit_code == 0, same_run.output
    for name in GOOD:
        same = run("diff", local / f"{name}.h5", out / f"{name}.h5")
        assert same.exit_code == 0 and "equivalent" in same.stdout, same.stdout
        with load_bundle(out / f"{name}.h5") as bundle:
            assert bundle.source.name == next(f.name for f in files if f.stem == name)


def test_existing_bundles_need_force(cluster, sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bravo.h5").write_bytes(b"keep me")
    files = good_files(sources)
    result = run("build", *files, "-o", out, "--scheduler", cluster.address, *QUICK)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and "bravo" in lines[0] and "--force" in lines[0], lines
    assert (out / "bravo.h5").read_bytes() == b"keep me"
    again = run("build", *files, "-o", out, "--scheduler", cluster.address, "--force", "-q", *QUICK)
    assert again.exit_code == 0, again.output
    assert_only_bundles(out, GOOD)
    with load_bundle(out / "bravo.h5"):
        pass


def test_work_in_flight_is_bounded(cluster, sources, tmp_path):
    options = BuildOptions(n_components=4, nmf_iter=10)
    for n, bounds in enumerate(({"in_flight": 1}, {"max_bytes_in_flight": 1})):  # (a file above the bound goes alone)
        out = tmp_path / f"out{n}"
        out.mkdir()
        recorder = Recorder()
        results = run_batch_on_cluster(plan_jobs(good_files(sources), out), options, cluster.client,
                                       observer=recorder, **bounds)
        assert [r.ok for r in results] == [True, True, True]
        steps = [event for event in recorder.events if event[0] != "progress"]
        assert steps == [(kind, i) for i in range(3) for kind in ("started", "finished")], (bounds, steps)
        assert_only_bundles(out, GOOD)


# ----------------------------------------------------------------------------- worker deaths
def test_a_killed_worker_has_its_file_built_again(cluster, sources, tmp_path):
    killed = []

    def kill_once(job: Job) -> None:
        if job.index == 0 and not killed:
            killed.append(job.index)
            cluster.kill_worker_building(0)

    recorder = Recorder(kill_once)
    jobs = plan_jobs(long_files(sources), tmp_path)
    results = run_batch_on_cluster(jobs, SLOW, cluster.client, observer=recorder)
    assert killed and [r.ok for r in results] == [True, True], [r.message for r in results]
    assert recorder.count("started", 0) == 2 and recorder.count("finished", 0) == 1  # built again, once
    assert_only_bundles(tmp_path, ["long0", "long1"])
    for bundle in tmp_path.glob("*.h5"):
        with load_bundle(bundle) as loaded:
            assert loaded.n_states > 150


def test_a_file_that_kills_every_worker_is_reported_and_the_batch_goes_on(cluster, sources, tmp_path):
    recorder = Recorder(lambda job: cluster.kill_worker_building(0) if job.index == 0 else None)
    jobs = plan_jobs([long_files(sources)[0], good_files(sources)[0]], tmp_path)
    results = run_batch_on_cluster(jobs, SLOW, cluster.client, observer=recorder)
    assert not results[0].ok and results[0].message == KILLED
    assert results[1].ok, results[1].message
    assert recorder.count("started", 0) == 2  # allowed-failures = 1: one retry
    assert_only_bundles(tmp_path, ["alpha"])
    cluster.client.wait_for_workers(2, timeout=120)  # the nannies restart them


def test_a_task_cancelled_by_another_client_is_reported_and_the_batch_goes_on(cluster, sources, tmp_path):
    def cancel_elsewhere(job: Job) -> None:
        if job.index == 0:
            with distributed.Client(cluster.address, timeout=30, set_as_default=False) as other:
                keys = [key for keys in other.processing().values() for key in keys if str(key).endswith("-0")]
                other.cancel([distributed.Future(key, other) for key in keys], force=True)

    jobs = plan_jobs([long_files(sources)[0], good_files(sources)[0]], tmp_path)
    results = run_batch_on_cluster(jobs, SLOW, cluster.client, observer=Recorder(cancel_elsewhere))
    assert not results[0].ok and results[0].message == LOST
    assert results[1].ok, results[1].message
    assert_only_bundles(tmp_path, ["alpha"])
    cluster.wait_idle(60)  # (a cancelled task's build runs to its end)


# ----------------------------------------------------------------------------- Ctrl-C
def test_interrupt_stops_running_builds_and_cancels_the_rest(cluster, sources, tmp_path):
    options = BuildOptions(n_components=64, nmf_iter=5000)
    seen = []

    def interrupt(job: Job) -> None:
        seen.extend(cluster.building())
        raise KeyboardInterrupt

    jobs = plan_jobs([*long_files(sources), *good_files(sources)], tmp_path)
    stopped = cluster.stopped_builds()
    with pytest.raises(KeyboardInterrupt):
        run_batch_on_cluster(jobs, options, cluster.client, observer=Recorder(interrupt))
    assert seen  # a build was running
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing partial
    cluster.wait_idle()
    cluster.wait_stopped(stopped)  # stopped, not finished
    assert not any(keys for keys in cluster.client.processing().values())  # nothing left to run


def test_ctrl_c_on_the_command_line(cluster, sources, tmp_path):
    out = tmp_path / "out"
    stopped = cluster.stopped_builds()
    proc = subprocess.Popen([prep_exe(), "build", *map(str, long_files(sources)), "-o", f"{out}/",
                             "--scheduler", cluster.address, *LONGER],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not cluster.building():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert stderr.startswith("error: interrupted") and len(stderr.strip().splitlines()) == 1, stderr
    assert "Traceback" not in stdout + stderr
    assert list(out.iterdir()) == []
    cluster.wait_idle()
    cluster.wait_stopped(stopped)


def test_a_lost_scheduler_ends_the_batch_in_one_line(sources, tmp_path):
    root = tmp_path / "cluster"
    root.mkdir()
    scheduler, address = start_scheduler(root)  # its own: this one dies
    worker = _start(["worker", address, "--nthreads", "1", "--no-dashboard", "--death-timeout", "10",
                     "--local-directory", str(root / "w")], root / "w.log")
    out = tmp_path / "out"
    out.mkdir()
    try:
        kill = Recorder(lambda job: os.killpg(scheduler.pid, signal.SIGKILL))
        with pytest.raises(ClusterError, match=r"lost the connection to the Dask scheduler \(0 of 2 recordings"):
            run_batch_on_cluster(plan_jobs(long_files(sources), out), SLOW, address, observer=kill)
    finally:
        _stop([worker, scheduler])
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------- refusals
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_scheduler_is_one_line(sources, tmp_path, monkeypatch):
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT_S", 1.0)
    for address, match in ((f"tcp://127.0.0.1:{_free_port()}", "cannot reach"), ("tcp://127.0.0.1", "invalid")):
        started = time.monotonic()
        result = run("build", *good_files(sources), "-o", tmp_path / "out", "--scheduler", address, *QUICK)
        assert time.monotonic() - started < 15
        assert result.exit_code == 2, result.output
        lines = error_lines(result)
        assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], lines
        assert "Traceback" not in result.output
        assert not (tmp_path / "out").exists()


def test_cluster_refusals_are_one_line_before_any_work(sources, tmp_path):
    files = good_files(sources)
    for args, match in ((["-o", tmp_path / "x", "--jobs", "2"], "--jobs and --scheduler"),
                        (["-o", tmp_path / "x.h5"], "ending in '/'")):
        result = run("build", *files[:1], *args, "--scheduler", "tcp://127.0.0.1:1", *QUICK)
        assert result.exit_code == 2, result.output
        lines = error_lines(result)
        assert len(lines) == 1 and match in lines[0], lines
    assert list(tmp_path.iterdir()) == []


def test_missing_distributed_says_how_to_install_it(sources, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # makes "import distributed" fail
    result = run("build", *good_files(sources), "-o", tmp_path / "out", "--scheduler", "tcp://127.0.0.1:8786", *QUICK)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 1 and 'pip install "followme-karaoke[cluster]"' in lines[0], lines
    assert not (tmp_path / "out").exists()
    with pytest.raises(ClusterError, match="cluster"):
        run_batch_on_cluster([], BuildOptions(), "tcp://127.0.0.1:8786")


def test_workers_must_run_this_version_and_exist(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr("shared.__version__", "0.0.0-elsewhere")
    with pytest.raises(ClusterError, match="runs followme-karaoke .* this machine 0.0.0-elsewhere"):
        with connect(cluster.address):
            pass
    monkeypatch.undo()

    class WithoutTheProject:  # a client whose one worker cannot unpickle prep's functions
        def nthreads(self):
            return {"tcp://w:1": 1}

        def run(self, function, on_error):
            return {"tcp://w:1": ModuleNotFoundError("No module named 'prep'")}

    with pytest.raises(ClusterError, match="cannot run the build .*No module named 'prep'.*install followme-karaoke"):
        cluster_module._check_workers(WithoutTheProject(), "tcp://x:1", 1.0)
    lonely, address = start_scheduler(tmp_path)  # a scheduler without workers
    try:
        with pytest.raises(ClusterError, match="no worker has joined"):
            with connect(address, wait_workers_s=0.5):
                pass
    finally:
        _stop([lonely])
