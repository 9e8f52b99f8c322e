"""The player's command line: a file-driven run end to end, other input formats, and every
bad input we can think of (one clear line on stderr, non-zero exit, no traceback, nothing
left behind in the output folder)."""

import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import soxr
from typer.testing import CliRunner

from player.cli import app
from prep.pipeline import BuildOptions, build_bundle
from shared.bundle import load_bundle
from shared.synth import make_case

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A 12-note synthetic duet: X built into a bundle, the solo take U as a WAV file."""
    folder = tmp_path_factory.mktemp("player_cli")
    case = make_case(n_notes=12, seed=4)
    x_wav = folder / "x.wav"
    sf.write(x_wav, case.x, case.sr, subtype="PCM_16")
    bundle = folder / "x.h5"
    build_bundle(x_wav, bundle, BuildOptions(n_components=4, nmf_iter=5))
    u_wav = folder / "u.wav"
    sf.write(u_wav, case.u, case.sr, subtype="PCM_16")
    with load_bundle(bundle) as b:
        facts = SimpleNamespace(sr=b.audio.sr, channels=b.audio.channels, duration_s=b.duration_s,
                                frames_per_s=b.params.sr / b.params.fine_hop,
                                block=int(round(b.params.fine_period_s * b.audio.sr)))
    return SimpleNamespace(folder=folder, case=case, bundle=bundle, u=u_wav, x=x_wav, **vars(facts))


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def outputs_in(folder):
    """The run's outputs: out.wav, path.csv (+ timing) and any temporary .part file."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name in ("out.wav", "path.csv", "path.csv.timing.json") or ".part" in p.name)


def assert_clean_failure(result, folder, match: str = ""):
    assert result.exit_code != 0, result.output
    assert result.exit_code != 3, f"an internal error instead of a clear message: {result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and len(lines[0]) > len("error: "), lines[0]
    assert match.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert outputs_in(folder) == [], outputs_in(folder)


def read_path(path):
    lines = path.read_text().splitlines()
    rows = np.array([[float(v) for v in line.split(",")] for line in lines[1:]]).reshape(-1, 2)
    return lines[0], rows


# ----------------------------------------------------------------------------- happy paths
def test_happy_path(setup, tmp_path):
    out, csv = tmp_path / "out.wav", tmp_path / "path.csv"
    result = run("run", setup.bundle, "--input", setup.u, "--output", out, "--alignment", csv)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output

    header, rows = read_path(csv)
    assert header == "u_time_s,x_time_s"
    u_info = sf.info(str(setup.u))
    u_duration = u_info.frames / u_info.samplerate
    assert abs(len(rows) - u_duration * setup.frames_per_s) <= 2, (len(rows), u_duration)
    assert 45 * u_duration <= len(rows) <= 55 * u_duration
    assert np.isfinite(rows).all()
    assert (np.diff(rows[:, 0]) >= 0).all(), "u_time goes backwards"
    assert rows[0, 0] > 0 and rows[-1, 0] <= u_duration + 1e-6
    assert (rows[:, 1] >= 0).all() and (rows[:, 1] <= setup.duration_s + 1e-6).all()

    info = sf.info(str(out))
    assert info.samplerate == setup.sr and info.channels == setup.channels
    assert abs(info.frames - u_duration * setup.sr) <= setup.block, (info.frames, u_duration * setup.sr)
    assert np.abs(sf.read(str(out))[0]).max() > 0, "the output is silent"

    timing = json.loads((tmp_path / "path.csv.timing.json").read_text())
    assert {"rtf", "per_frame_ms", "frames"} <= set(timing), sorted(timing)
    assert timing["frames"] == len(rows)
    assert timing["rtf"] > 0 and isinstance(timing["per_frame_ms"], dict)
    assert [p.name for p in tmp_path.iterdir() if ".part" in p.name] == []


def test_heard_file_says_what_each_block_plays_and_when(setup, tmp_path):
    """--heard: one row per output block, when it is heard, the X time it plays (where the
    soloist is then: the synthetic take's true map), its rate and whether it sought."""
    heard = tmp_path / "heard.csv"
    result = run("run", setup.bundle, "--input", setup.u, "--heard", heard, "--latency", "0.05")
    assert result.exit_code == 0, result.output
    lines = heard.read_text().splitlines()
    assert lines[0] == "heard_u_s,x_s,rate,seek"
    rows = np.loadtxt(heard, delimiter=",", skiprows=1, ndmin=2)
    u_info = sf.info(str(setup.u))
    assert len(rows) == -(-u_info.frames // setup.block)  # (the last block may be short)
    np.testing.assert_allclose(rows[0, 0], setup.block / setup.sr + 0.05, atol=1e-6)  # the latency is in
    playing = np.isfinite(rows[:, 1])
    assert np.isnan(rows[~playing, 2]).all() and np.isfinite(rows[playing, 2]).all()
    assert set(np.unique(rows[:, 3])) <= {0.0, 1.0}
    case = setup.case
    late = playing & (rows[:, 0] > case.onsets_u[0] + 2.0) & (rows[:, 0] < case.onsets_u[-1])
    assert np.median(np.abs(rows[late, 1] - case.x_of_u(rows[late, 0]))) < 0.15


def test_heard_file_bad_uses_are_one_line(setup, tmp_path):
    """--heard is for file mode; an existing file is kept unless --force."""
    result = run("run", setup.bundle, "--heard", tmp_path / "heard.csv")
    assert_clean_failure(result, tmp_path, "--input")
    assert not (tmp_path / "heard.csv").exists()
    heard = tmp_path / "heard.csv"
    heard.write_text("an earlier run's")
    result = run("run", setup.bundle, "--input", setup.u, "--heard", heard)
    assert_clean_failure(result, tmp_path, "--force")
    assert heard.read_text() == "an earlier run's"


def test_input_at_48k_stereo_is_accepted(setup, tmp_path):
    u48 = soxr.resample(setup.case.u, setup.case.sr, 48000)
    src = tmp_path / "u48.wav"
    sf.write(src, np.stack([u48, 0.5 * u48], axis=1), 48000, subtype="PCM_16")
    out, csv = tmp_path / "out.wav", tmp_path / "path.csv"
    result = run("run", setup.bundle, "--input", src, "--output", out, "--alignment", csv, "-q")
    assert result.exit_code == 0, result.output
    info = sf.info(str(out))
    assert info.samplerate == setup.sr and info.channels == setup.channels
    u_duration = len(u48) / 48000
    assert abs(info.frames - u_duration * setup.sr) <= setup.block
    header, rows = read_path(csv)
    assert header == "u_time_s,x_time_s"
    assert abs(len(rows) - u_duration * setup.frames_per_s) <= 2
    assert (np.diff(rows[:, 0]) >= 0).all()


def test_intro_plays_before_the_first_note(setup, tmp_path):
    """``--intro``: the recording sounds, and the position moves, from the first block (the
    take's second of room noise before its first note); without it both wait for the note."""
    first_note = float(setup.case.onsets_u[0])
    heard = {}
    for flag in ([], ["--intro"]):
        out, csv = tmp_path / f"out{len(flag)}.wav", tmp_path / f"path{len(flag)}.csv"
        result = run("run", setup.bundle, "--input", setup.u, "--output", out, "--alignment", csv, "-q", *flag)
        assert result.exit_code == 0, result.output
        audio, sr = sf.read(str(out))
        _, rows = read_path(csv)
        early = rows[rows[:, 0] < first_note - 0.1]
        heard[bool(flag)] = np.abs(audio[: int((first_note - 0.1) * sr)]).max(), np.ptp(early[:, 1])
    assert heard[False] == (0.0, 0.0)
    assert heard[True][0] > 0.01 and heard[True][1] >= 0.5 * (first_note - 0.2)


def test_existing_output_needs_force(setup, tmp_path):
    out, csv = tmp_path / "out.wav", tmp_path / "path.csv"
    out.write_bytes(b"keep me")
    result = run("run", setup.bundle, "--input", setup.u, "--output", out, "--alignment", csv)
    assert result.exit_code != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--force" in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert out.read_bytes() == b"keep me"
    assert outputs_in(tmp_path) == ["out.wav"]  # no path.csv, no timing, no .part
    out.unlink()
    timing = tmp_path / "path.csv.timing.json"
    timing.write_text("an earlier run's timing")
    result = run("run", setup.bundle, "--input", setup.u, "--output", out, "--alignment", csv)
    assert result.exit_code != 0 and "--force" in result.stderr and "timing.json" in result.stderr
    assert timing.read_text() == "an earlier run's timing"
    assert outputs_in(tmp_path) == ["path.csv.timing.json"]

    result = run("run", setup.bundle, "--input", setup.u, "--output", out, "--alignment", csv, "--force")
    assert result.exit_code == 0, result.output
    assert out.read_bytes() != b"keep me"
    assert sf.info(str(out)).samplerate == setup.sr
    assert outputs_in(tmp_path) == ["out.wav", "path.csv", "path.csv.timing.json"]


# ----------------------------------------------------------------------------- bad inputs
BAD_CASES = ("missing bundle", "text bundle", "truncated bundle", "missing input", "silent input",
             "input shorter than a block", "input not audio", "start beyond the end", "negative start",
             "blocksize 3", "alpha above 2", "alpha negative", "tempo above the follower's range",
             "tempo not a number", "report not png", "truth without report",
             "truth malformed", "bundle with unsupported analysis", "input with Inf in every block",
             "input MP3 of garbage")


@pytest.fixture(scope="module")
def bad_cases(setup, tmp_path_factory):
    """name -> (bundle, input, extra options, text the error line must contain)."""
    src = tmp_path_factory.mktemp("bad_inputs")
    good_bytes = setup.bundle.read_bytes()
    text_bundle = src / "text.h5"
    text_bundle.write_text("this is not a bundle\n" * 40)
    truncated = src / "truncated.h5"
    truncated.write_bytes(good_bytes[: len(good_bytes) // 2])
    silent = src / "silent.wav"
    sf.write(silent, np.zeros(2 * setup.sr, np.float32), setup.sr, subtype="PCM_16")
    short = src / "short.wav"
    sf.write(short, setup.case.u[:100], setup.case.sr, subtype="PCM_16")
    not_audio = src / "notes.wav"
    not_audio.write_text("this is not audio\n" * 50)
    infinite = src / "inf.wav"
    take = setup.case.u.astype(np.float32).copy()
    take[:: setup.block // 2] = np.inf  # one sample in every block: nothing could be followed
    sf.write(infinite, take, setup.case.sr, subtype="FLOAT")
    garbage_mp3 = src / "take.mp3"
    garbage_mp3.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + np.random.default_rng(0).bytes(20000))
    from shared.spectral import AnalysisParams

    odd = src / "odd.h5"
    build_bundle(setup.x, odd, BuildOptions(n_components=4, nmf_iter=5,
                                           params=AnalysisParams(n_fft=4096, fine_hop=2205, coarse_hop=2205)))
    b, u = setup.bundle, setup.u
    cases = {
        "missing bundle": (src / "missing.h5", u, [], "not found"),
        "text bundle": (text_bundle, u, [], "not an HDF5 bundle"),
        "truncated bundle": (truncated, u, [], "truncated.h5"),
        "missing input": (b, src / "missing.wav", [], "not found"),
        "silent input": (b, silent, [], "silent"),
        "input shorter than a block": (b, short, [], "shorter than one block"),
        "input not audio": (b, not_audio, [], "cannot decode"),
        "start beyond the end": (b, u, ["--start", "1000"], "--start"),
        "negative start": (b, u, ["--start", "-1"], "--start"),
        "blocksize 3": (b, u, ["--blocksize", "3"], "--blocksize"),
        "alpha above 2": (b, u, ["--alpha", "2.5"], "--alpha"),
        "alpha negative": (b, u, ["--alpha", "-0.1"], "--alpha"),
        "tempo above the follower's range": (b, u, ["--tempo", "3"], "--tempo"),
        "tempo not a number": (b, u, ["--tempo", "nan"], "--tempo"),
        "report not png": (b, u, ["--report", src / "report.jpg"], "PNG"),
        "truth without report": (b, u, ["--truth", src / "truth.csv"], "--report"),
        "truth malformed": (b, u, ["--report", src / "r.png", "--truth", not_audio], "truth"),
        "bundle with unsupported analysis": (odd, u, [], "rebuild"),
        "input with Inf in every block": (b, infinite, [], "NaN or infinite"),
        "input MP3 of garbage": (b, garbage_mp3, [], "not recognised"),
    }
    assert set(cases) == set(BAD_CASES)
    return cases


@pytest.mark.parametrize("name", BAD_CASES)
def test_bad_input(bad_cases, tmp_path, name):
    bundle, u, extra, match = bad_cases[name]
    result = run("run", bundle, "--input", u, "--output", tmp_path / "out.wav",
                 "--alignment", tmp_path / "path.csv", *extra)
    assert_clean_failure(result, tmp_path, match)


def test_report_with_truth(setup, tmp_path):
    truth = tmp_path / "truth.csv"
    np.savetxt(truth, np.column_stack([setup.case.onsets_u, setup.case.onsets_x]), delimiter=",",
               header="u_time_s,x_time_s", comments="")
    png = tmp_path / "report.png"
    result = run("run", setup.bundle, "--input", setup.u, "--report", png, "--truth", truth, "-q")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert width >= 600 and height >= 400


def test_output_in_missing_folder(setup, tmp_path):
    result = run("run", setup.bundle, "--input", setup.u, "--output", tmp_path / "no" / "such" / "out.wav",
                 "--alignment", tmp_path / "path.csv")
    assert_clean_failure(result, tmp_path, "does not exist")
    assert not (tmp_path / "no").exists()
    result = run("run", setup.bundle, "--input", setup.u, "--output", tmp_path / "out.wav",
                 "--alignment", tmp_path / "no" / "path.csv")
    assert_clean_failure(result, tmp_path, "does not exist")


# ----------------------------------------------------------------------------- live audio
def _without_portaudio(monkeypatch):
    """Importing sounddevice fails as it does where the PortAudio library is missing (it
    raises OSError('PortAudio library not found')), whether or not this machine has it."""
    import builtins

    real_import = builtins.__import__

    def importing(name, *args, **kwargs):
        if name == "sounddevice":
            raise OSError("PortAudio library not found")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "sounddevice", raising=False)
    monkeypatch.setattr(builtins, "__import__", importing)


def _assert_portaudio_hint(result):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error:") and "PortAudio" in line, line
    assert "install" in line and ("apt-get install" in line or "brew install" in line), line
    assert "Traceback" not in result.output


def test_live_without_portaudio(setup, monkeypatch):
    _without_portaudio(monkeypatch)
    _assert_portaudio_hint(run("run", setup.bundle))


def test_devices_without_portaudio(monkeypatch):
    _without_portaudio(monkeypatch)
    _assert_portaudio_hint(run("devices"))


# ----------------------------------------------------------------------------- console script
def test_console_script_missing_bundle(setup, tmp_path):
    """The installed entry point itself (not just the in-process runner) fails cleanly."""
    exe = shutil.which("player", path=os.path.dirname(sys.executable))
    assert exe, "the player console script is not installed next to the interpreter"
    missing = tmp_path / "missing.h5"
    proc = subprocess.run([exe, "run", str(missing), "--input", str(setup.u), "--output", str(tmp_path / "out.wav")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.strip() == f"error: bundle not found: {missing}"
    assert "Traceback" not in proc.stdout + proc.stderr
    assert outputs_in(tmp_path) == []


def test_the_player_runs_without_the_analysis_libraries(setup, tmp_path):
    """`player run` in a fresh process never imports librosa (a lean install on a small
    device): X's analysis, the onset filterbank included, comes from the bundle."""
    code = ("import sys; from player.cli import app; "
            "sys.argv = ['player', 'run', sys.argv[1], '--input', sys.argv[2], '--alignment', sys.argv[3], '-q']; "
            "app(standalone_mode=False); print(sorted(m for m in sys.modules if m.split('.')[0] == 'librosa'))")
    proc = subprocess.run([sys.executable, "-c", code, str(setup.bundle), str(setup.u), str(tmp_path / "path.csv")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
    assert (tmp_path / "path.csv").exists()


def test_a_player_far_from_the_recording_s_tempo_is_told_about_tempo():
    """After a file run the summary suggests ``--tempo`` when the player's typical tempo
    (the median over the frames played and followed surely) is far from the one given."""
    from player.cli import tempo_hint
    from player.trace import RunTrace

    t = np.arange(0.0, 20.0, 0.02)
    tempo = np.where(t < 10.0, 0.7, 0.74)
    confidence = np.where(t < 1.0, 0.2, 0.9)  # unsure at first: left out
    frames = np.column_stack([t, 0.7 * t, np.where(t < 1.0, 1.0, tempo), confidence, np.zeros_like(t),
                              np.ones_like(t)])
    trace = RunTrace(frames, np.zeros(0), np.zeros((0, 1)))
    assert trace.playing_tempo() == pytest.approx(0.72, abs=0.021)
    assert "--tempo 0.7" in tempo_hint(trace.playing_tempo(), told=1.0)
    assert tempo_hint(trace.playing_tempo(), told=0.7) is None  # they said so
    assert tempo_hint(1.08, told=1.0) is None and tempo_hint(float("nan"), told=1.0) is None
    short = RunTrace(frames[:100], np.zeros(0), np.zeros((0, 1)))  # 2 s: too little to tell
    assert np.isnan(short.playing_tempo())
