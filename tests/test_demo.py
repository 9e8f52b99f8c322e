"""``player demo``: the README's first command, end to end in a temporary folder."""

import numpy as np
import soundfile as sf
from typer.testing import CliRunner

from player.cli import app
from player.demo import DEMO_FILES
from shared.alignment import causal_errors, read_path

runner = CliRunner()


def test_demo_end_to_end(tmp_path):
    folder = tmp_path / "demo"
    result = runner.invoke(app, ["demo", str(folder)])
    assert result.exit_code == 0, result.output
    assert str(folder.resolve()) in result.stdout
    assert sorted(p.name for p in folder.iterdir()) == sorted([*DEMO_FILES, "path.csv.timing.json"])
    assert (folder / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "report.png").stat().st_size < 300_000

    # the path follows the take: error at the take's onsets within the demo's known bound
    err = np.abs(causal_errors(read_path(folder / "path.csv"), read_path(folder / "truth.csv", "truth")))
    assert np.mean(err <= 0.1) >= 0.7, err
    assert np.median(err) < 0.08, err

    out, sr = sf.read(folder / "out.wav")
    u_info = sf.info(str(folder / "U.wav"))
    assert out.ndim == 2 and out.shape[1] == 2 and sr == u_info.samplerate
    assert abs(out.shape[0] - u_info.frames) <= 1
    assert np.abs(out).max() > 0.01

    again = runner.invoke(app, ["demo", str(folder)])
    assert again.exit_code != 0 and "--force" in again.stderr and "Traceback" not in again.output
