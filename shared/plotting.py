"""What every picture of the project shares: the optional matplotlib import (with the
install hint), PNG-only output names, a headless figure and its atomic save.

matplotlib is used through its object API with the Agg canvas (no pyplot, no global
backend switch, no display needed).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from shared.errors import KaraokeError
from shared.fileio import atomic_output

#: The one line printed when matplotlib is missing (the project's name in pyproject.toml).
INSTALL_HINT = 'plotting needs matplotlib, which is not installed: pip install "followme-karaoke[plot]"'
DPI = 100
#: PNGs are re-encoded with fewer colours until they fit in this many bytes.
MAX_PNG_BYTES = 300_000


class PlotError(KaraokeError):
    """The plot cannot be drawn (matplotlib missing, wrong file type)."""


def require_matplotlib() -> None:
    """Raise :class:`PlotError` with the install hint unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise PlotError(INSTALL_HINT) from None


def check_plot_path(path: Path, option: str = "--plot") -> Path:
    """Only ``.png`` names: the file is always a PNG image."""
    if path.suffix.lower() != ".png":
        raise PlotError(f"{option} writes a PNG image; give it a .png name (got {path.name})")
    return path


def new_figure(size_in: tuple[float, float]):
    """A headless matplotlib Figure (Agg canvas), laid out automatically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size_in, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def encode_png(fig, max_bytes: int = MAX_PNG_BYTES) -> bytes:
    """The figure as PNG bytes, small: a 256-colour palette (Pillow, which matplotlib needs)
    makes spectrograms 3-4x smaller than matplotlib's RGBA PNG, with no visible change.
    Fewer colours are tried if it is still larger than ``max_bytes``."""
    from PIL import Image

    fig.canvas.draw()
    rgb = Image.fromarray(np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3]))
    data = b""
    for colours in (256, 128, 64):
        buffer = io.BytesIO()
        palette = rgb.quantize(colors=colours, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
        palette.save(buffer, format="PNG", optimize=True)
        data = buffer.getvalue()
        if len(data) <= max_bytes:
            break
    return data


def save_png(fig, path: str | Path, *, force: bool = False) -> int:
    """Write ``fig`` to the PNG ``path`` atomically (never over a file without ``force``);
    returns the file's size in bytes."""
    path = Path(path)
    data = encode_png(fig)
    with atomic_output(path, force) as tmp:
        Path(tmp).write_bytes(data)
    return path.stat().st_size
