"""Batch ``prep build a.wav b.flac ... -o DIR/ --jobs N``: one bundle per recording, bad files
reported (one line each) without stopping the batch, parallel builds identical to serial
ones, and nothing temporary left behind, even when a worker is killed or Ctrl-C stops it."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from prep import batch
from prep.batch import BatchError, Job, output_dir_requested, plan_jobs
from prep.cli import app
from shared.bundle import load_bundle
from shared.fileio import staged_outputs
from shared.synth import make_case

runner = CliRunner()
#: The quick build settings of test_prep_cli.py (fewer bases and NMF iterations).
QUICK = ["--components", "4", "--nmf-iter", "10"]
GOOD = ("alpha", "bravo", "charlie")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def prep_exe() -> str:
    exe = shutil.which("prep", path=os.path.dirname(sys.executable))
    assert exe, "the prep console script is not installed"
    return exe


def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def assert_only_bundles(folder: Path, names) -> None:
    """The folder holds exactly these bundles: no temporary or partial file."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{n}.h5" for n in names)


def write_sources(folder: Path) -> Path:
    """Three good 3 s recordings in ``folder`` (different music, rates and formats) and a
    corrupt one."""
    for i, name in enumerate(GOOD):
        case = make_case(n_notes=6, seed=20 + i)
        y = case.x[: 3 * case.sr]
        if name == "charlie":
            sf.write(folder / f"{name}.flac", y.mean(axis=1), case.sr)
        else:
            sf.write(folder / f"{name}.wav", y, case.sr, subtype="PCM_16")
    (folder / "corrupt.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(4000))
    return folder


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """See :func:`write_sources`."""
    return write_sources(tmp_path_factory.mktemp("sources"))


def good_files(folder: Path) -> list[Path]:
    return [folder / "alpha.wav", folder / "bravo.wav", folder / "charlie.flac"]


@pytest.fixture(scope="module")
def parallel_batch(sources, tmp_path_factory):
    """One parallel batch of 3 good + 1 corrupt recordings, shared by several tests."""
    out = tmp_path_factory.mktemp("parallel") / "bundles"  # missing: the batch creates it
    files = good_files(sources)
    result = run("build", files[0], files[1], sources / "corrupt.wav", files[2], "-o", out, "--jobs", "2", *QUICK)
    return result, out


# ----------------------------------------------------------------------------- planning
def test_output_is_a_folder_with_several_inputs_or_a_final_slash():
    assert output_dir_requested("out", 2)
    assert output_dir_requested("out/", 1)
    assert output_dir_requested(f"out{os.sep}", 1)
    assert not output_dir_requested("out.h5", 1)


def test_plan_names_bundles_by_stem_and_refuses_duplicates(tmp_path):
    jobs = plan_jobs([Path("a/x.wav"), Path("b/y.flac")], tmp_path)
    assert [j.output for j in jobs] == [tmp_path / "x.h5", tmp_path / "y.h5"]
    assert [j.index for j in jobs] == [0, 1]
    for clash in ([Path("a/x.wav"), Path("b/x.flac")], [Path("x.wav"), Path("X.mp3")], [Path("x.wav"), Path("x.wav")]):
        with pytest.raises(BatchError, match="would both write"):
            plan_jobs(clash, tmp_path)


def test_stray_temporary_files_of_the_batch_are_found(tmp_path):
    jobs = [Job(0, Path("a.wav"), tmp_path / "a.h5"), Job(1, Path("b.wav"), tmp_path / "b.h5")]
    mine = [tmp_path / ".a.h5.x1y2.part", tmp_path / ".b.h5.zz.part"]
    others = [tmp_path / ".c.h5.q.part", tmp_path / "a.h5", tmp_path / ".a.h5.notes"]
    for p in mine + others:
        p.write_bytes(b"")
    assert batch._temporary_files(jobs) == set(mine)


# ----------------------------------------------------------------------------- the batch
def test_parallel_batch_builds_good_files_and_reports_the_corrupt_one(parallel_batch):
    result, out = parallel_batch
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr  # the corrupt file, one line, nothing else
    assert lines[0].startswith("error:") and "corrupt.wav" in lines[0] and "cannot decode" in lines[0]
    assert_only_bundles(out, GOOD)
    for name in GOOD:
        with load_bundle(out / f"{name}.h5") as b:
            assert b.source.name.startswith(name) and b.n_states > 20
    # one line per recording as it finishes, then the summary
    progress = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 4 and [line.split("]")[0] for line in progress] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert sum("FAILED" in line for line in progress) == 1
    assert "3 of 4 bundles built" in result.stdout and "1 failed" in result.stdout


def test_serial_and_parallel_bundles_are_identical(parallel_batch, sources, tmp_path):
    _, parallel = parallel_batch
    serial = tmp_path / "serial"
    result = run("build", *good_files(sources), "-o", f"{serial}/", "--jobs", "1", *QUICK, "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""  # -q: nothing to say when all went well
    assert_only_bundles(serial, GOOD)
    for name in GOOD:
        same = run("diff", serial / f"{name}.h5", parallel / f"{name}.h5")
        assert same.exit_code == 0 and "equivalent" in same.stdout, same.stdout


def test_bad_files_do_not_stop_the_batch(sources, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bravo.h5").write_bytes(b"keep me")
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(22050 * 2, np.float32), 22050)
    short = tmp_path / "short.wav"
    sf.write(short, np.full(500, 0.1, np.float32), 22050)
    files = [*good_files(sources), tmp_path / "missing.wav", silent, short]
    result = run("build", *files, "-o", out, *QUICK)
    assert result.exit_code == 2, result.output
    lines = error_lines(result)
    assert len(lines) == 4, result.stderr
    for stem, reason in (("bravo", "--force"), ("missing", "not found"), ("silent", "silent"), ("short", "too short")):
        assert sum(stem in line and reason in line for line in lines) == 1, (stem, lines)
    assert all(line.startswith("error:") for line in lines)
    assert (out / "bravo.h5").read_bytes() == b"keep me"
    assert_only_bundles(out, GOOD)
    again = run("build", *good_files(sources), "-o", out, "--force", "-q", *QUICK)
    assert again.exit_code == 0, again.output
    with load_bundle(out / "bravo.h5"):
        pass


def test_single_input_into_a_folder_needs_a_final_slash(sources, tmp_path):
    alpha = good_files(sources)[0]
    result = run("build", alpha, "-o", f"{tmp_path / 'new'}/", "-q", *QUICK)
    assert result.exit_code == 0, result.output
    assert_only_bundles(tmp_path / "new", ["alpha"])
    result = run("build", alpha, "-o", tmp_path / "new", "-q", *QUICK)  # an existing folder, no slash
    assert result.exit_code == 2 and len(error_lines(result)) == 1
    assert "directory" in result.stderr and "end the path with '/'" in result.stderr


def test_batch_refusals_are_one_line_before_any_work(sources, tmp_path):
    files = good_files(sources)
    twin = tmp_path / "elsewhere"
    twin.mkdir()
    shutil.copy(files[0], twin / "alpha.wav")
    cases = [
        (["build", files[0], twin / "alpha.wav", "-o", tmp_path / "dup"], "would both write"),
        (["build", *files, "-o", files[0]], "is a file"),
        (["build", *files, "-o", tmp_path / "x", "--jobs", "0"], "--jobs"),
        (["build", *files, "-o", tmp_path / "x", "--jobs", str(os.cpu_count() * 4 + 1)], "--jobs"),
        (["build", *files, "-o", tmp_path / "x", "--detune-steps", "4"], "odd"),
    ]
    for args, match in cases:
        result = run(*args, *QUICK)
        assert result.exit_code == 2, (args, result.output)
        lines = error_lines(result)
        assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], lines
        assert "Traceback" not in result.output
    assert not (tmp_path / "dup").exists() and not (tmp_path / "x").exists()


def test_workers_use_one_thread_each_and_the_environment_is_restored():
    pytest.importorskip("threadpoolctl")
    before = {k: os.environ.get(k) for k in batch.WORKER_ENV}
    ctx = mp.get_context("spawn")
    with batch._worker_environment():
        events, cancel = ctx.Queue(), ctx.Event()
        with ProcessPoolExecutor(1, mp_context=ctx, initializer=batch._init_worker, initargs=(events, cancel)) as pool:
            env, pools = pool.submit(_threads_in_worker).result(timeout=120)
    assert {k: os.environ.get(k) for k in batch.WORKER_ENV} == before
    assert all(env[k] == "1" for k in batch.WORKER_ENV), env
    assert pools and all(p["num_threads"] == 1 for p in pools), pools


def _threads_in_worker():
    import numpy  # noqa: F401 - loads the BLAS whose thread pool we inspect
    from threadpoolctl import threadpool_info

    return {k: os.environ.get(k) for k in batch.WORKER_ENV}, threadpool_info()


# ----------------------------------------------------------------------------- signals
def _long_sources(folder: Path, n: int, seconds: float = 8.0) -> list[Path]:
    paths = []
    for i in range(n):
        case = make_case(n_notes=int(seconds * 1.4), seed=40 + i)
        path = folder / f"take{i}.wav"
        sf.write(path, case.x[: int(seconds * case.sr)], case.sr, subtype="PCM_16")
        paths.append(path)
    return paths


def _start_batch(files, out: Path, jobs: int = 2) -> subprocess.Popen:
    proc = subprocess.Popen([prep_exe(), "build", *map(str, files), "-o", f"{out}/", "--jobs", str(jobs), *QUICK],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    header = proc.stdout.readline()  # printed once the batch is planned, just before the pool starts
    assert header.startswith("building"), header
    return proc


def _workers(proc: subprocess.Popen, timeout: float = 120.0) -> list:
    """The batch's worker processes, once there are some."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [c for c in psutil.Process(proc.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError("no worker process started")


def _writing_worker(proc: subprocess.Popen, out: Path, timeout: float = 180.0):
    """The process of the batch (a worker, or the batch itself with one job) that is writing
    a bundle now."""
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            family = []
        for member in family:
            if staged_outputs(member.pid, out):
                return member
        time.sleep(0.002)
    raise AssertionError("no bundle was being written")


def _check_interrupted(proc: subprocess.Popen, out: Path) -> None:
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, (stdout, stderr)
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("error: interrupted"), stderr
    assert "Traceback" not in stdout + stderr
    assert [p.name for p in out.iterdir() if not p.name.endswith(".h5")] == []  # no temporary file
    for bundle in out.glob("*.h5"):  # finished before Ctrl-C: whole
        load_bundle(bundle).close()


def test_ctrl_c_while_workers_start(tmp_path):
    out = tmp_path / "out"
    proc = _start_batch(_long_sources(tmp_path, 3), out)
    _workers(proc)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground process group
    _check_interrupted(proc, out)


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_while_a_bundle_is_written(tmp_path, jobs):
    out = tmp_path / "out"
    proc = _start_batch(_long_sources(tmp_path, 3), out, jobs)
    _writing_worker(proc, out)
    os.killpg(proc.pid, signal.SIGINT)
    _check_interrupted(proc, out)


def test_a_killed_worker_loses_nothing(tmp_path):
    out = tmp_path / "out"
    proc = _start_batch(_long_sources(tmp_path, 4), out)
    _writing_worker(proc, out).kill()  # SIGKILL while writing: no chance to clean up
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, (stdout, stderr)  # what it was building was built again
    assert stderr == "" and "4 of 4 bundles built" in stdout
    assert_only_bundles(out, [f"take{i}" for i in range(4)])  # and its temporary file is gone
    for bundle in out.glob("*.h5"):
        info = json.loads(run("inspect", bundle, "--json").stdout)
        assert info["states"] > 70
