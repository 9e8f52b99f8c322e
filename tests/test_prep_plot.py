"""``prep inspect BUNDLE --plot out.png``: a valid, small PNG written atomically, and one-line
errors (exit 2) for missing or invalid bundles, existing files and a missing matplotlib."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from prep.cli import app
from prep.plots import FIGSIZE_IN, pool_columns, sorted_bases_db
from shared.plotting import DPI, INSTALL_HINT
from shared.synth import make_case

matplotlib_image = pytest.importorskip("matplotlib.image")

runner = CliRunner()
QUICK = ["--components", "6", "--nmf-iter", "10", "-q"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, match: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], result.stderr
    assert "Traceback" not in result.output


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".part" in p.name]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plot")
    case = make_case(n_notes=8, seed=5)
    src = folder / "duet.wav"
    sf.write(src, case.x[: 4 * case.sr], case.sr, subtype="PCM_16")
    out = folder / "duet.h5"
    result = run("build", src, "-o", out, *QUICK)
    assert result.exit_code == 0, result.output
    return out


def test_plot_is_a_small_valid_png(bundle, tmp_path):
    png = tmp_path / "duet.png"
    result = run("inspect", bundle, "--plot", png)
    assert result.exit_code == 0, result.output
    assert "states" in result.stdout and f"plot written to {png}" in result.stdout
    data = png.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) < 300_000
    image = matplotlib_image.imread(png)
    assert image.shape[:2] == (round(FIGSIZE_IN[1] * DPI), round(FIGSIZE_IN[0] * DPI)) and image.shape[2] in (3, 4)
    assert float(image[..., :3].std()) > 0.05  # something was drawn
    assert leftovers(tmp_path) == []


def test_plot_with_json_keeps_stdout_json(bundle, tmp_path):
    png = tmp_path / "duet.png"
    result = run("inspect", bundle, "--json", "--plot", png)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["states"] > 30
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_plot_never_overwrites_without_force(bundle, tmp_path):
    png = tmp_path / "duet.png"
    png.write_bytes(b"keep me")
    assert_one_line_error(run("inspect", bundle, "--plot", png), "--force")
    assert png.read_bytes() == b"keep me"
    result = run("inspect", bundle, "--plot", png, "--force")
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert leftovers(tmp_path) == []


def test_missing_or_invalid_bundle_is_one_line(tmp_path):
    png = tmp_path / "x.png"
    assert_one_line_error(run("inspect", tmp_path / "nope.h5", "--plot", png), "not found")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    assert_one_line_error(run("inspect", garbage, "--plot", png), "garbage.h5")
    text = tmp_path / "notes.h5"
    text.write_text("not a bundle\n")
    assert_one_line_error(run("inspect", text, "--plot", png), "not an HDF5 bundle")
    assert not png.exists() and leftovers(tmp_path) == []


def test_bad_plot_paths_are_one_line(bundle, tmp_path):
    assert_one_line_error(run("inspect", bundle, "--plot", tmp_path / "x.svg"), ".png")
    assert_one_line_error(run("inspect", bundle, "--plot", tmp_path / "no" / "dir" / "x.png"), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_says_how_to_install_it(bundle, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" fail
    result = run("inspect", bundle, "--plot", tmp_path / "x.png")
    assert_one_line_error(result, 'pip install "followme-karaoke[plot]"')
    assert INSTALL_HINT in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_install_hint_names_the_real_project():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert "plot" in project["optional-dependencies"]
    assert f'pip install "{project["name"]}[plot]"' in INSTALL_HINT


def test_long_recordings_are_pooled_keeping_peaks():
    frames = np.zeros((5001, 3), np.float32)
    frames[4321, 1] = 7.0
    pooled, factor = pool_columns(frames, max_columns=1000)
    assert factor == 6 and pooled.shape == (834, 3)  # ceil(5001 / 6) rows, the last one padded
    assert pooled[4321 // 6, 1] == 7.0 and pooled.sum() == 7.0
    same, one = pool_columns(frames[:10], max_columns=1000)
    assert one == 1 and same.shape == (10, 3)


def test_bases_are_sorted_by_peak_frequency():
    w = np.full((3, 8), 1e-3)
    w[0, 6], w[1, 2], w[2, 4] = 1.0, 2.0, 0.5
    db, order = sorted_bases_db(w)
    assert list(order) == [1, 2, 0]
    assert list(np.argmax(db, axis=1)) == [2, 4, 6]
    assert np.allclose(db.max(axis=1), 0.0) and db.min() >= -60.0
