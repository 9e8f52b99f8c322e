"""The prep command line: builds, inspect, diff exit codes, and every bad input we can
think of (one clear line on stderr, non-zero exit, no traceback, nothing left behind)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from prep.cli import app
from shared.synth import make_case

runner = CliRunner()
QUICK = ["--components", "4", "--nmf-iter", "10", "-q"]


@pytest.fixture(scope="module")
def short_tutti():
    """3 s of the synthetic duet, mono float, at 22.05 kHz."""
    case = make_case(n_notes=6, seed=3)
    return case.x.mean(axis=1)[: 3 * case.sr], case.sr


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_clean_failure(result, folder, match: str):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and match.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.output
    leftovers = [p.name for p in folder.iterdir() if p.suffix in (".h5", ".part") or ".part" in p.name]
    assert leftovers == [], leftovers


def write(path, samples, sr, subtype="PCM_16"):
    sf.write(path, samples, sr, subtype=subtype)
    return path


@pytest.mark.parametrize("sr,channels", [(8000, 1), (96000, 2), (44100, 6), (48000, 1)])
def test_builds_any_rate_and_channel_count(tmp_path, short_tutti, sr, channels):
    import soxr

    y, y_sr = short_tutti
    y = soxr.resample(y, y_sr, sr)
    src = write(tmp_path / "in.wav", np.repeat(y[:, None], channels, axis=1) * 0.5, sr)
    out = tmp_path / "out.h5"
    result = run("build", src, "-o", out, *QUICK)
    assert result.exit_code == 0, result.output
    info = json.loads(run("inspect", out, "--json").stdout)
    assert info["audio"]["sample_rate"] == sr and info["audio"]["channels"] == channels
    assert info["audio"]["codec"] == "flac"
    assert info["audio"]["music_start_s"] is not None


def test_many_channels_use_pcm_fallback(tmp_path, short_tutti):
    y, sr = short_tutti
    src = write(tmp_path / "in.wav", np.repeat(y[:, None], 10, axis=1) * 0.3, sr)
    result = run("build", src, "-o", tmp_path / "out.h5", *QUICK)
    assert result.exit_code == 0, result.output
    info = json.loads(run("inspect", tmp_path / "out.h5", "--json").stdout)
    assert info["audio"]["codec"] == "pcm" and info["audio"]["channels"] == 10
    assert 0.0 <= info["audio"]["music_start_s"] <= 0.5  # stored for PCM audio too (the tutti starts at once)


def test_inspect_and_diff(tmp_path, short_tutti):
    y, sr = short_tutti
    src = write(tmp_path / "in.flac", y, sr)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    assert run("build", src, "-o", a, *QUICK).exit_code == 0
    assert run("build", src, "-o", b, *QUICK).exit_code == 0
    text = run("inspect", a).stdout
    assert "in.flac" in text and "states" in text and "onsets" in text
    # the 5 solo notes of the first 3 s, and the chords' onsets under some of them
    assert 5 <= json.loads(run("inspect", a, "--json").stdout)["onsets"] <= 8
    same = run("diff", a, b)
    assert same.exit_code == 0 and "equivalent" in same.stdout
    c = tmp_path / "c.h5"
    assert run("build", src, "-o", c, "--detune-steps", "3", *QUICK).exit_code == 0
    differ = run("diff", a, c)
    assert differ.exit_code == 1 and "differ" in differ.stdout
    missing = run("diff", a, tmp_path / "nope.h5")
    assert missing.exit_code == 2 and missing.stderr.startswith("error:")


def test_existing_output_needs_force(tmp_path, short_tutti):
    y, sr = short_tutti
    src = write(tmp_path / "in.wav", y, sr)
    out = tmp_path / "out.h5"
    out.write_bytes(b"keep me")
    result = run("build", src, "-o", out, *QUICK)
    assert result.exit_code != 0 and "--force" in result.stderr
    assert out.read_bytes() == b"keep me"
    assert run("build", src, "-o", out, "--force", *QUICK).exit_code == 0
    assert out.read_bytes() != b"keep me"


def _bad_inputs(tmp_path, y, sr):
    good = write(tmp_path / "good.wav", y, sr)
    flac = write(tmp_path / "good.flac", y, sr)
    truncated = tmp_path / "truncated.flac"
    truncated.write_bytes(flac.read_bytes()[:200])
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(good.read_bytes()[:44] + os.urandom(100))
    corrupt.write_bytes(b"RIFF" + os.urandom(4000))
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio\n" * 50)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    zero = write(tmp_path / "zero.wav", np.zeros((0, 1), np.float32), sr)
    nan = y.astype(np.float32).copy()
    nan[1000] = np.nan
    inf = y.astype(np.float32).copy()
    inf[5] = np.inf
    (tmp_path / "folder.wav").mkdir()
    return {
        "missing": (tmp_path / "missing.wav", "not found"),
        "directory": (tmp_path / "folder.wav", "directory"),
        "not audio": (text, "cannot decode"),
        "truncated flac": (truncated, "cannot decode"),
        "corrupt wav": (corrupt, "cannot decode"),
        "empty file": (empty, "empty"),
        "zero samples": (zero, "no audio"),
        "silent": (write(tmp_path / "silent.wav", np.zeros(sr * 2, np.float32), sr), "silent"),
        "too short": (write(tmp_path / "short.wav", y[: sr // 20], sr), "too short"),
        "nan": (write(tmp_path / "nan.wav", nan, sr, "FLOAT"), "NaN"),
        "inf": (write(tmp_path / "inf.wav", inf, sr, "FLOAT"), "NaN or infinite"),
    }


def test_bad_inputs(tmp_path, short_tutti):
    y, sr = short_tutti
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    for name, (path, match) in _bad_inputs(src_dir, y, sr).items():
        out_dir = tmp_path / f"out_{name.replace(' ', '_')}"
        out_dir.mkdir()
        result = run("build", path, "-o", out_dir / "x.h5", *QUICK)
        assert_clean_failure(result, out_dir, match)


def test_bad_output_locations(tmp_path, short_tutti):
    y, sr = short_tutti
    src = write(tmp_path / "in.wav", y, sr)
    result = run("build", src, "-o", tmp_path / "no" / "such" / "dir" / "x.h5", *QUICK)
    assert_clean_failure(result, tmp_path, "does not exist")
    result = run("build", src, "-o", "/proc/x.h5", *QUICK)  # read-only even for root
    assert result.exit_code != 0 and result.stderr.startswith("error:") and "Traceback" not in result.output
    result = run("build", src, "-o", tmp_path, *QUICK)
    assert_clean_failure(result, tmp_path, "directory")


def test_bad_options(tmp_path, short_tutti):
    y, sr = short_tutti
    src = write(tmp_path / "in.wav", y, sr)
    result = run("build", src, "-o", tmp_path / "x.h5", "--coarse-hop", "1000", *QUICK)
    assert_clean_failure(result, tmp_path, "coarse_hop")
    result = run("build", src, "-o", tmp_path / "x.h5", "--detune-steps", "4", *QUICK)
    assert_clean_failure(result, tmp_path, "odd")


def test_broken_bundle_via_cli(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    for command in (["inspect", bad], ["diff", bad, bad]):
        result = run(*command)
        assert result.exit_code == 2 and result.stderr.startswith("error:") and len(result.stderr.splitlines()) == 1


def test_console_script_prints_no_traceback(tmp_path):
    """The installed entry point itself (not just the in-process runner) fails cleanly."""
    exe = shutil.which("prep", path=os.path.dirname(sys.executable))
    assert exe, "the prep console script is not installed"
    proc = subprocess.run([exe, "build", str(tmp_path / "missing.wav"), "-o", str(tmp_path / "x.h5")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: recording not found: {tmp_path / 'missing.wav'}"
