"""``prep inspect BUNDLE --plot out.png``: a picture of what a bundle holds.

Three panels: X's coarse spectrogram (log magnitude, seconds x Hz, the observation band
marked), the states as the player sees them (the observation templates at 0 cents, one
column per state, state indices on the top axis), and the learned accompaniment bases
(posterior mean ``E[W] = w_shape / w_rate``, one column per basis, sorted by peak
frequency, on a log-frequency axis).

matplotlib is optional (``pip install "followme-karaoke[plot]"``); it is imported only
here and only when a plot is asked for, and it is used through its object API with the
Agg canvas (no pyplot, no global backend switch, no display needed), at 100 dpi, and
saved as a palette PNG (:func:`encode_png`, about 130 kB for a minute of music). It is written
with ``atomic_output``: it never overwrites without ``force`` and never leaves a partial
file. Long recordings are reduced to at most :data:`MAX_COLUMNS` time columns (max
pooling, so short loud events stay visible) before drawing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.bundle import Bundle
from shared.plotting import check_plot_path, new_figure, require_matplotlib, save_png
from shared.text import inert

FIGSIZE_IN = (12.0, 7.5)
#: Time columns drawn at most (a 40-minute piece has 24000 states).
MAX_COLUMNS = 1200
#: Dynamic range shown (dB below the loudest cell).
SPECTROGRAM_RANGE_DB = 80.0
BASES_RANGE_DB = 60.0


def pool_columns(image: np.ndarray, max_columns: int = MAX_COLUMNS) -> tuple[np.ndarray, int]:
    """Max-pool ``(n_frames, n_bins)`` along frames to at most ``max_columns`` rows.

    Returns the pooled array and the pooling factor (frames per row).
    """
    n = image.shape[0]
    factor = max(1, -(-n // max_columns))
    if factor == 1:
        return image, 1
    pad = (-n) % factor
    if pad:
        image = np.concatenate([image, np.repeat(image[-1:], pad, axis=0)])
    return image.reshape(-1, factor, image.shape[1]).max(axis=1), factor


def sorted_bases_db(w: np.ndarray, floor_db: float = -BASES_RANGE_DB) -> tuple[np.ndarray, np.ndarray]:
    """Bases ``(K, n_bins)`` in dB relative to each basis's own peak, sorted by peak bin.

    Returns ``(db, order)``: ``db[k]`` is basis ``order[k]``, clipped below at ``floor_db``.
    Bin 0 (DC) is included; callers drawing a log axis drop it.
    """
    w = np.asarray(w, dtype=np.float64)
    peaks = np.argmax(w, axis=1)
    order = np.lexsort((np.arange(len(peaks)), peaks))  # by peak bin, ties by index (stable)
    rel = w[order] / np.maximum(w[order].max(axis=1, keepdims=True), 1e-300)
    db = np.maximum(20.0 * np.log10(np.maximum(rel, 1e-300)), floor_db)
    return db, order


def draw_bundle(bundle: Bundle):
    """The figure (a matplotlib ``Figure`` on an Agg canvas) for a loaded bundle."""
    p = bundle.params
    period = p.coarse_period_s
    hz_per_bin = p.sr / p.n_fft
    n_states = bundle.n_states
    end_s = (n_states - 0.5) * period

    fig = new_figure(FIGSIZE_IN)
    grid = fig.add_gridspec(2, 2, width_ratios=(4.0, 1.4), height_ratios=(3.0, 1.6))
    ax_spec = fig.add_subplot(grid[0, 0])
    ax_states = fig.add_subplot(grid[1, 0], sharex=ax_spec)
    ax_bases = fig.add_subplot(grid[:, 1])
    minutes, seconds = divmod(bundle.duration_s, 60.0)
    fig.suptitle(f"{inert(bundle.path.name)}: {inert(bundle.source.name)}, {int(minutes)}:{seconds:04.1f}, "
                 f"{n_states} states, {bundle.nmf.w_shape.shape[0]} NMF bases", fontsize=11,
                 parse_math=False)  # a name is text, not mathtext ("$" in it must not fail the plot)

    # X's coarse spectrogram, in dB below its loudest cell.
    mag, factor = pool_columns(bundle.state_mag.astype(np.float32))
    image_end_s = (mag.shape[0] * factor - 0.5) * period  # pooling pads the last column
    db = 20.0 * np.log10(np.maximum(mag, 1e-12))
    top = float(db.max())
    image = ax_spec.imshow(db.T, origin="lower", aspect="auto", interpolation="nearest", cmap="magma",
                           vmin=top - SPECTROGRAM_RANGE_DB, vmax=top,
                           extent=(-0.5 * period, image_end_s, -0.5 * hz_per_bin, (p.n_bins - 0.5) * hz_per_bin))
    for edge in (p.fmin_hz, p.fmax_hz):
        ax_spec.axhline(edge, color="white", linewidth=0.8, linestyle="--", alpha=0.7)
    ax_spec.set_ylabel("frequency (Hz)")
    ax_spec.set_title(f"coarse spectrogram (log magnitude; dashed: observation band "
                      f"{p.fmin_hz:g}-{p.fmax_hz:g} Hz)", fontsize=9)
    ax_spec.tick_params(labelbottom=False)
    fig.colorbar(image, ax=ax_spec, label="dB", pad=0.01, fraction=0.03)

    # The states: the observation templates at 0 cents, one column per state.
    zero = int(np.argmin(np.abs(np.asarray(p.detune_cents))))
    templates, _ = pool_columns(bundle.templates.dequantize(detune=zero))
    obs = p.obs_bins
    image = ax_states.imshow(templates.T, origin="lower", aspect="auto", interpolation="nearest", cmap="viridis",
                             extent=(-0.5 * period, image_end_s, (obs.start - 0.5) * hz_per_bin,
                                     (obs.stop - 0.5) * hz_per_bin))
    fig.colorbar(image, ax=ax_states, label="log p", pad=0.01, fraction=0.03)
    ax_states.set_xlabel("time in the recording (s)")
    ax_states.set_ylabel("Hz")
    ax_states.set_title(f"states: observation templates at {p.detune_cents[zero]:+g} cents "
                        f"({1.0 / period:g} states/s; top axis: state index)", fontsize=9)
    ax_states.set_xlim(-0.5 * period, end_s)
    top_axis = ax_states.secondary_xaxis("top", functions=(lambda t: t / period, lambda k: k * period))
    top_axis.tick_params(labelsize=8)

    # The accompaniment bases E[W], sorted by peak frequency, log-frequency axis.
    bases_db, order = sorted_bases_db(bundle.nmf.W)
    k = bases_db.shape[0]
    bins = np.arange(1, p.n_bins)  # no DC on a log axis
    edges_hz = np.concatenate([[0.5], bins + 0.5]) * hz_per_bin
    ax_bases.pcolormesh(np.arange(k + 1) - 0.5, edges_hz, bases_db[:, 1:].T, cmap="magma",
                        vmin=-BASES_RANGE_DB, vmax=0.0, shading="flat")
    ax_bases.set_yscale("log")
    ax_bases.set_ylim(max(edges_hz[0], 20.0), edges_hz[-1])
    ax_bases.set_xlim(-0.5, k - 0.5)
    ax_bases.set_xlabel("basis (sorted by peak frequency)")
    ax_bases.set_ylabel("frequency (Hz, log)")
    ax_bases.set_title("NMF bases E[W] (dB re. own peak)", fontsize=9)
    if k <= 40:  # label each column with the basis's index in the bundle
        ax_bases.set_xticks(np.arange(k), [str(i) for i in order], fontsize=6, rotation=90 if k > 12 else 0)
    return fig


def plot_bundle(bundle: Bundle, path: str | Path, *, force: bool = False) -> int:
    """Draw ``bundle`` into the PNG ``path`` atomically; returns the file's size in bytes.

    Raises:
        PlotError: matplotlib is missing, or ``path`` is not a ``.png`` name.
        OutputError: ``path`` exists (without ``force``) or cannot be written.
    """
    require_matplotlib()
    return save_png(draw_bundle(bundle), check_plot_path(Path(path)), force=force)

