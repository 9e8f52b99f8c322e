"""Hostile and broken input (issue 25): damaged and crafted bundles are refused in one line,
without hanging, within bounded memory; interrupted builds leave nothing; names from files
are shown inert.

The reproductions follow the fuzzing campaign's findings: a global-heap object length grown
by one byte (libhdf5 loops forever), datasets declared huge but never written, a damaged
filter entry, out-of-range attributes.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import soundfile as sf

from shared import fileio
from shared.bundle import load_bundle
from shared.errors import BundleError, OutputError
from shared.sandbox import SandboxError, run_isolated
from shared.text import inert
from tests.bundle_fuzz import fuzz
from tests.follow_helpers import tiled_wav

ROOT = Path(__file__).resolve().parents[1]


def _copy(bundle_path: Path, tmp_path: Path, name: str = "hostile.h5") -> Path:
    path = tmp_path / name
    shutil.copy(bundle_path, path)
    return path


def _heap_corrupted(bundle_path: Path, tmp_path: Path) -> Path:
    """The campaign's hang: the first global-heap object's length grown by 0x400."""
    data = bytearray(bundle_path.read_bytes())
    heap = data.find(b"GCOL")
    assert heap >= 0, "the bundle's root attributes live in a global heap"
    first_object = heap + 16  # after signature, version, reserved, collection size
    data[first_object + 9] += 0x04  # object size: the second byte of its 8-byte length
    path = tmp_path / "heap.h5"
    path.write_bytes(bytes(data))
    return path


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 1e6


# ------------------------------------------------------------------------- the sandbox
def _big_allocation():
    return np.ones(1 << 31, dtype=np.uint8)  # 2 GiB, beyond the limit given below


def _abort():
    os.abort()


def _raise_bundle_error():
    raise BundleError("refused for a reason")


def _arrays():
    return {"a": np.arange(100_000, dtype=np.float32), "b": np.eye(3, dtype=np.uint8)}


def test_sandbox_returns_arrays_and_our_errors():
    result = run_isolated(_arrays, timeout_s=20, memory_bytes=256 << 20)
    np.testing.assert_array_equal(result["a"], np.arange(100_000, dtype=np.float32))
    np.testing.assert_array_equal(result["b"], np.eye(3, dtype=np.uint8))
    result["a"][0] = 5.0  # received into writable memory
    with pytest.raises(BundleError, match="refused for a reason"):
        run_isolated(_raise_bundle_error, timeout_s=20, memory_bytes=256 << 20)


def test_sandbox_stops_time_memory_and_crashes():
    started = time.monotonic()
    with pytest.raises(SandboxError) as err:
        run_isolated(time.sleep, 60, timeout_s=1.0, memory_bytes=256 << 20)
    assert err.value.reason == "timeout" and time.monotonic() - started < 10
    with pytest.raises(SandboxError) as err:
        run_isolated(_big_allocation, timeout_s=20, memory_bytes=256 << 20)
    assert err.value.reason == "memory"
    with pytest.raises(SandboxError) as err:
        run_isolated(_abort, timeout_s=20, memory_bytes=256 << 20)
    assert err.value.reason == "crash" and "SIGABRT" in str(err.value)


# ---------------------------------------------------------------------- the loader
def test_heap_corruption_is_stopped_not_hung(bundle_path, tmp_path):
    path = _heap_corrupted(bundle_path, tmp_path)
    started = time.monotonic()
    with pytest.raises(BundleError, match="longer than 2 s") as err:
        load_bundle(path, timeout_s=2.0)
    assert time.monotonic() - started < 10
    assert "\n" not in str(err.value)


def test_cli_refuses_a_hanging_bundle_in_one_line(bundle_path, tmp_path):
    path = _heap_corrupted(bundle_path, tmp_path)
    done = subprocess.run([sys.executable, "-m", "prep", "inspect", str(path)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused" in lines[0] and "Traceback" not in done.stderr


def _declare(f: h5py.File, name: str, shape: tuple, dtype, chunks: tuple, **kw) -> None:
    """Replace dataset ``name`` by one of ``shape`` declared but never written."""
    del f[name]
    f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks, **kw)


def _coarse_for_four_hours(f: h5py.File) -> None:
    n_bins = f["spectra/coarse"].shape[1]
    _declare(f, "spectra/coarse", (720_000, n_bins), np.float16, (1024, n_bins), compression="gzip")


CRAFTED = {
    # 2^28 float64 (2 GiB) of learning curve in a small file
    "bound trace of 2 GiB": (lambda f: _declare(f, "nmf/bound_trace", (1 << 28,), np.float64, (1 << 16,),
                                                compression="gzip"), "declare more than|bound_trace"),
    "spectra for 4 hours": (_coarse_for_four_hours, "declare more than|states do not match"),
    "one audio chunk of 2 GiB": (lambda f: _declare(f, "audio/data", (1 << 32,), np.uint8, ((1 << 31),),
                                                    compression="gzip"), "chunks of"),
    "an extra dataset of 1 GiB": (lambda f: f.create_dataset("extra", shape=(1 << 27,), dtype=np.float64,
                                                             chunks=(1 << 16,)), "declare more than"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_declared_but_unwritten_datasets_cost_nothing(bundle_path, tmp_path, name):
    edit, message = CRAFTED[name]
    path = _copy(bundle_path, tmp_path)
    with h5py.File(path, "a") as f:
        edit(f)
    assert path.stat().st_size < 20e6
    before, started = _rss_mb(), time.monotonic()
    with pytest.raises(BundleError, match=message):
        load_bundle(path)
    assert time.monotonic() - started < 20
    assert _rss_mb() - before < 100


def test_damaged_filter_entry_is_one_error(bundle_path, tmp_path):
    data = bytearray(bundle_path.read_bytes())
    name = data.find(b"deflate")
    assert name > 0
    data[name - 2] = 0  # no client values: h5py's get_filters raised IndexError
    path = tmp_path / "filter.h5"
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="damaged"):
        load_bundle(path)


ATTRIBUTES = {
    "source duration NaN": ("/", "source_duration_s", float("nan")),
    "source duration Inf": ("/", "source_duration_s", float("inf")),
    "source duration negative": ("/", "source_duration_s", -5.0),
    "source duration 1e300": ("/", "source_duration_s", 1e300),
    "source duration twice the audio": ("/", "source_duration_s", None),
    "fine hop 0": ("params", "fine_hop", 0),
    "n_fft infinite": ("params", "n_fft", float("inf")),
    "n_fft NaN": ("params", "n_fft", float("nan")),
    "sample rate 0": ("params", "sr", 0),
    "NMF iterations huge": ("nmf", "n_iter", 1 << 40),
    "data scale NaN": ("nmf", "data_scale", float("nan")),
    "prior zero": ("nmf", "c", 0.0),
    "audio rate negative": ("audio", "sr", -44100),
    "chunk samples float": ("audio", "chunk_samples", 65536.5),
    "name of 1 MB": ("/", "source_name", "x" * (1 << 20)),
    "name not text": ("/", "source_name", 42),
}


@pytest.mark.parametrize("name", list(ATTRIBUTES))
def test_out_of_range_attributes_are_refused(bundle_path, tmp_path, name):
    group, key, value = ATTRIBUTES[name]
    path = _copy(bundle_path, tmp_path)
    with h5py.File(path, "a") as f:
        if value is None:
            value = 2.0 * float(f.attrs[key])
        f[group].attrs[key] = value
    with pytest.raises(BundleError) as err:
        load_bundle(path)
    assert "\n" not in str(err.value)


def test_inspect_json_never_prints_nan(bundle_path, tmp_path):
    path = _copy(bundle_path, tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["source_duration_s"] = float("nan")
    done = subprocess.run([sys.executable, "-m", "prep", "inspect", "--json", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == "" and "source_duration_s" in done.stderr


def test_a_bundle_changed_after_loading_is_not_read(bundle_path, tmp_path):
    path = _copy(bundle_path, tmp_path)
    with load_bundle(path) as bundle:
        with open(path, "ab") as fh:
            fh.write(b"\0" * 16)  # another file now: its size and time differ
        with pytest.raises(BundleError, match="changed"):
            bundle.audio.read(0, 100)


def test_fuzzed_bundles(bundle_path, tmp_path):
    """A few hundred mutations of the bundle's parsed bytes: every one loads or is refused
    with a BundleError, none hangs, none is accepted broken, memory stays bounded."""
    report = fuzz(bundle_path, tmp_path, n=250, seed=25, timeout_s=3.0)
    assert report.failures() == 0, report.examples
    assert report.refused > 25 and report.accepted > 25  # the mutations reach both outcomes
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 < 1024
    assert report.child_peak_mb < 1024


@pytest.mark.slow
def test_fuzzed_bundles_many(bundle_path, tmp_path):
    report = fuzz(bundle_path, tmp_path, n=5000, seed=2025, timeout_s=3.0)
    assert report.failures() == 0, report.examples
    assert report.child_peak_mb < 1024


# ---------------------------------------------------------------- interrupted builds
def _build_command(source: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "prep", "build", str(source), "-o", str(output), "-q", "--force",
            "--nmf-iter", "30", "--components", "8"]


@pytest.mark.parametrize("delay_s", [0.4, 1.2, 2.5])
def test_kill_9_during_a_build_leaves_nothing(x_wav, tmp_path, delay_s):
    source = tmp_path / "x.wav"
    shutil.copy(x_wav, source)
    output = tmp_path / "x.h5"
    output.write_bytes(b"the old bundle")
    proc = subprocess.Popen(_build_command(source, output), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(delay_s)
    proc.kill()
    proc.wait(timeout=30)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x.h5", "x.wav"]  # no temporary file, whatever the moment
    assert output.read_bytes() == b"the old bundle" or load_bundle(output).n_states > 0


def _wait_until_writing(proc: subprocess.Popen, folder: Path, timeout: float = 120.0) -> None:
    """Until ``proc`` holds an output open in ``folder`` (``/proc``: an unnamed file shows as
    ``folder/#inode (deleted)``, the named fallback as ``.part``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fileio.staged_outputs(proc.pid, folder):
            return
        assert proc.poll() is None, "the build ended before it wrote anything"
        time.sleep(0.01)
    raise AssertionError("the build never started writing")


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_a_build_cleanly(x_wav, tmp_path, signum):
    source = tiled_wav(x_wav, tmp_path / "x.wav", 240.0)
    output = tmp_path / "x.h5"
    proc = subprocess.Popen(_build_command(source, output), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_until_writing(proc, tmp_path)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip() == "error: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]


def test_named_fallback_removes_stale_parts_of_dead_writers(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "UNNAMED_FILES", False)
    target = tmp_path / "out.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = fileio._host_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".out.h5.{host}-{dead.pid}.abcd1234.part"
    alive = tmp_path / f".out.h5.{host}-{os.getpid()}.efgh5678.part"
    other = tmp_path / ".other.h5.x.part"
    for p in (stale, alive, other):
        p.write_bytes(b"partial")
    seen = []
    with fileio.atomic_output(target, force=False) as tmp:
        seen.append(Path(tmp).name)
        Path(tmp).write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert not stale.exists()  # its writer is gone
    assert alive.exists() and other.exists()  # a live writer's, and another output's
    assert seen[0].startswith(f".out.h5.{host}-{os.getpid()}.") and seen[0].endswith(".part")


@pytest.mark.parametrize("unnamed", [True, False])
def test_atomic_output_on_error_leaves_nothing(tmp_path, monkeypatch, unnamed):
    monkeypatch.setattr(fileio, "UNNAMED_FILES", unnamed)
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with fileio.atomic_output(target, force=True) as tmp:
            Path(tmp).write_bytes(b"half")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"] and target.read_bytes() == b"old"
    with fileio.atomic_output(target, force=True) as tmp:
        with h5py.File(open(tmp, "w+b"), "w") as f:  # noqa: SIM115 - h5py closes it
            f["x"] = np.arange(3)
    with h5py.File(target, "r") as f:
        assert f["x"][()].tolist() == [0, 1, 2]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(OutputError, match="exists"):
        with fileio.atomic_output(target, force=False):
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------- inert names
HOSTILE_NAME = "[blink]solo[/blink] [link=http://evil]x[/link]\x1b]0;owned\x07\x1b[2J\u202etxt.wav"


def test_inert_escapes_controls_and_keeps_text():
    assert inert("Concerto in D, 1. Allegro é 日本") == "Concerto in D, 1. Allegro é 日本"
    shown = inert(HOSTILE_NAME)
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\\x1b]0;owned\\x07" in shown and "[blink]" in shown
    assert inert("two\nlines") == "two\\x0alines"


def test_inspect_shows_a_hostile_name_as_text(bundle_path, tmp_path):
    path = _copy(bundle_path, tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["source_name"] = HOSTILE_NAME
    done = subprocess.run([sys.executable, "-m", "prep", "inspect", str(path)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout
    assert "[blink]solo[/blink]" in done.stdout  # shown, not interpreted


def test_error_lines_escape_file_names(tmp_path):
    name = tmp_path / "evil\x1b[2J\nname.h5"
    done = subprocess.run([sys.executable, "-m", "prep", "inspect", str(name)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 2
    assert "\x1b" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------- bad recordings
def test_a_garbage_mp3_gets_our_line_only(tmp_path):
    """libmpg123 prints its own notes on the process's stderr; the user sees ours alone."""
    source = tmp_path / "concerto.mp3"
    source.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + np.random.default_rng(1).bytes(20000))
    done = subprocess.run([sys.executable, "-m", "prep", "build", str(source), "-o", str(tmp_path / "c.h5"), "-q"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot decode recording concerto.mp3"), done.stderr
    assert "does not exist" not in lines[0]


def test_a_recording_far_above_full_scale_is_normalised(x_wav, tmp_path):
    samples, sr = sf.read(x_wav, dtype="float32", always_2d=True)
    loud = tmp_path / "loud.wav"
    sf.write(loud, samples / np.abs(samples).max() * 900.0, sr, subtype="FLOAT")
    output = tmp_path / "loud.h5"
    done = subprocess.run(_build_command(loud, output), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "normalised by -59.1 dB" in done.stderr and "RuntimeWarning" not in done.stderr
    with load_bundle(output) as bundle:
        audio = bundle.audio.read(0, bundle.audio.n_samples)
        assert 0.99 < np.abs(audio).max() <= 1.0
