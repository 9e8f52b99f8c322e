"""``player run BUNDLE --record DIR`` (with a stand-in for the sound card): the rehearsal is
kept (take, what was played, path, trace, timing), replays exactly in file mode, draws
with ``player report``; an existing DIR needs --force; a full disk stops the recording
with one warning, never the rehearsal; a device that goes away is one line and leaves the
files readable; so does a kill -9 in the middle of a recording."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from player import live, recorder
from player.cli import app
from player.recorder import recorded_take
from shared.synth import make_case

from .fake_sounddevice import FakeDevice, FakeSoundDevice
from .follow_helpers import bundle_file_for

SR = 22050


@pytest.fixture(scope="module")
def rehearsal_case(tmp_path_factory):
    case = make_case(n_notes=10, seed=11, sr=SR)
    return case, bundle_file_for(case, tmp_path_factory.mktemp("record"))


def run_live(monkeypatch, bundle_path, u, *args, **fake):
    sd = FakeSoundDevice(u, devices=[FakeDevice("Fake duplex", rate=SR, rates=(SR,))], **fake)
    monkeypatch.setattr(live, "import_sounddevice", lambda: sd)
    return CliRunner().invoke(app, ["run", str(bundle_path), "-q", *args])


def test_a_recorded_rehearsal_is_kept_and_replays_exactly(rehearsal_case, monkeypatch, tmp_path):
    case, bundle_path = rehearsal_case
    u = case.u[: 5 * SR]
    folder = tmp_path / "rehearsal"
    result = run_live(monkeypatch, bundle_path, u, "--record", str(folder))
    assert result.exit_code == 0, result.output
    # the take's samples are floats (not a sound card's integers): kept exactly, as float WAV
    assert sorted(p.name for p in folder.iterdir()) == ["path.csv", "played.flac", "take.wav", "timing.json",
                                                          "trace.csv"]
    take, sr = sf.read(folder / "take.wav", dtype="float32")
    assert sr == SR and take.ndim == 1 and len(take) >= len(u) - 2 * 441
    np.testing.assert_array_equal(take[: len(u) // 441 * 441], u[: len(u) // 441 * 441][: len(take)])
    played = sf.read(folder / "played.flac", dtype="float32", always_2d=True)[0]
    assert played.shape[1] == 2 and len(played) == len(take) and np.abs(played).max() > 0.01
    timing = json.loads((folder / "timing.json").read_text())
    assert timing["samplerate"] == SR and timing["late_blocks"] == 0
    assert timing["assumed_latency_s"] == pytest.approx(0.03 + round(1.5 * 441) / SR, abs=1e-6)  # device + queue

    replay = tmp_path / "replay.csv"
    done = CliRunner().invoke(app, ["run", str(bundle_path), "--input", str(folder),
                                    "--alignment", str(replay), "-q"])
    assert done.exit_code == 0, done.output
    live_path = np.loadtxt(folder / "path.csv", delimiter=",", skiprows=1)
    assert len(live_path) > 200
    np.testing.assert_array_equal(np.loadtxt(replay, delimiter=",", skiprows=1), live_path)

    trace = np.loadtxt(folder / "trace.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(trace[:, :2], live_path)
    truth = tmp_path / "truth.csv"
    np.savetxt(truth, np.column_stack([case.onsets_u, case.onsets_x]), delimiter=",", header="u_time_s,x_time_s",
               comments="")
    drawn = CliRunner().invoke(app, ["report", str(folder), "--truth", str(truth)])
    assert drawn.exit_code == 0, drawn.output
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sound_cards_take_is_kept_as_flac(rehearsal_case, monkeypatch, tmp_path):
    """16-bit samples (a sound card's) fit FLAC exactly: the take is take.flac, and replays."""
    case, bundle_path = rehearsal_case
    u = (np.round(case.u[: 2 * SR] * 32767) / 32768).astype(np.float32)
    folder = tmp_path / "card"
    assert run_live(monkeypatch, bundle_path, u, "--record", str(folder)).exit_code == 0
    assert recorded_take(folder).name == "take.flac" and not (folder / "take.wav").exists()
    take, _ = sf.read(folder / "take.flac", dtype="float32")
    np.testing.assert_array_equal(take[: len(u) // 441 * 441], u[: len(take)][: len(u) // 441 * 441])


def test_an_existing_rehearsal_needs_force(rehearsal_case, monkeypatch, tmp_path):
    case, bundle_path = rehearsal_case
    folder = tmp_path / "taken"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = run_live(monkeypatch, bundle_path, case.u[: SR], "--record", str(folder))
    assert result.exit_code == 2 and "--force" in result.stderr and "Traceback" not in result.output
    assert result.stderr.count("\n") == 1
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    again = run_live(monkeypatch, bundle_path, case.u[: SR], "--record", str(folder), "--force")
    assert again.exit_code == 0, again.output
    assert (folder / "take.wav").exists() and (folder / "notes.txt").exists() is not False


def test_a_full_disk_stops_the_recording_not_the_rehearsal(rehearsal_case, monkeypatch, tmp_path):
    case, bundle_path = rehearsal_case
    writes = []
    real_write = recorder.RehearsalRecorder._write

    def filling_up(self, item):
        writes.append(item[0])
        if len(writes) > 40:
            raise OSError(28, "No space left on device")
        real_write(self, item)

    monkeypatch.setattr(recorder.RehearsalRecorder, "_write", filling_up)
    result = run_live(monkeypatch, bundle_path, case.u[: 3 * SR], "--record", str(tmp_path / "full"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], result.stderr
    assert "Traceback" not in result.output
    assert sf.info(str(tmp_path / "full" / "take.wav")).frames > 0  # what was written is readable


def test_a_device_that_goes_away_is_one_line_and_the_files_are_closed(rehearsal_case, monkeypatch, tmp_path):
    case, bundle_path = rehearsal_case
    result = run_live(monkeypatch, bundle_path, case.u[: 2 * SR], "--record", str(tmp_path / "lost"),
                      lose_device_after_s=0.3)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: the audio stream stopped by itself") and result.stderr.count("\n") == 1
    take, sr = sf.read(recorded_take(tmp_path / "lost"))
    assert sr == SR and len(take) > SR


def test_a_killed_recording_leaves_readable_files(tmp_path):
    """kill -9 while recording: the take, what was played and the path are readable up to
    about half a second before the kill (the files are flushed that often)."""
    folder = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys, time, numpy as np
        from types import SimpleNamespace
        from player.recorder import RehearsalRecorder
        rec = RehearsalRecorder({str(folder)!r}, 8000, 1, 2)
        st = SimpleNamespace(x_s=0.0, tempo=1.0, confidence=1.0, detune_cents=0.0, active=True)
        for k in range(1000):
            rec.block(np.full((160, 1), 0.1, np.float32), np.full((160, 2), 0.2, np.float32))
            st.x_s = k * 0.02
            rec.frame(k * 0.02, st)
            if k == 100:
                print("recording", flush=True)
            time.sleep(0.02)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.stdout.readline().strip() == "recording"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    take, sr = sf.read(folder / "take.wav")
    played, _ = sf.read(folder / "played.wav")
    assert sr == 8000 and len(take) >= 100 * 160 and np.allclose(take, 0.1, atol=1e-6)
    assert played.shape[1] == 2 and len(played) == len(take)
    path = np.loadtxt(folder / "path.csv", delimiter=",", skiprows=1, ndmin=2)
    assert len(path) >= 100
    assert (folder / "trace.csv").exists()
