"""``player run ... --report report.png``: a picture of what the player did.

Four panels over U's time (seconds): the alignment path (the position the player believed
at each moment; with ``--truth`` the true path too), the position error against the truth
(or the confidence when there is no truth), tempo (X seconds per U second) with the
confidence, and the solo-removal gain over time (mean gain per band, 60 Hz to 8 kHz).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from player.trace import MASK_BAND_EDGES_HZ, RunTrace
from shared.alignment import causal_errors
from shared.plotting import new_figure, save_png
from shared.text import inert

FIGSIZE_IN = (10.0, 8.0)


def draw_run(trace: RunTrace, truth: np.ndarray | None = None, title: str = ""):
    """The report figure (matplotlib Figure)."""
    fig = new_figure(FIGSIZE_IN)
    axes = fig.subplots(4, 1, sharex=True, height_ratios=(3, 1.3, 1.3, 2))
    u, x = trace.frames[:, 0], trace.frames[:, 1]
    ax = axes[0]
    ax.plot(u, x, color="tab:blue", lw=1.2, label="followed")
    if truth is not None:
        ax.plot(truth[:, 0], truth[:, 1], "o", ms=3, color="tab:orange", label="truth")
    ax.set_ylabel("position in recording (s)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(inert(title or "alignment path"), parse_math=False)  # file names: plain text
    ax = axes[1]
    if truth is not None:
        err_ms = 1000 * causal_errors(trace.path, truth)
        ax.axhspan(-100, 100, color="tab:green", alpha=0.12, lw=0)
        ax.plot(truth[:, 0], err_ms, ".", ms=4, color="tab:red")
        lim = max(150.0, float(np.percentile(np.abs(err_ms), 95)) * 1.2)
        ax.set_ylim(-lim, lim)
        ax.set_ylabel("error (ms)")
        within = 100 * np.mean(np.abs(err_ms) <= 100)
        ax.text(0.01, 0.85, f"{within:.0f}% within 100 ms", transform=ax.transAxes, fontsize=8)
    else:
        ax.plot(u, trace.frames[:, 3], color="tab:purple", lw=1)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("confidence")
    ax = axes[2]
    ax.plot(u, trace.frames[:, 2], color="tab:green", lw=1, label="tempo")
    ax.set_ylabel("tempo (x)")
    twin = ax.twinx()
    twin.plot(u, trace.frames[:, 3], color="tab:purple", lw=0.8, alpha=0.6)
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("confidence", color="tab:purple", fontsize=8)
    ax = axes[3]
    if trace.mask.size:
        t = trace.block_u_s
        ax.imshow(trace.mask.T.astype(np.float32), origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=1,
                  extent=(t[0], t[-1], 0, trace.mask.shape[1]), interpolation="nearest")
        ticks = [i for i, f in enumerate(MASK_BAND_EDGES_HZ[:-1]) if i % 12 == 0]
        ax.set_yticks(ticks, [f"{MASK_BAND_EDGES_HZ[i]:.0f}" for i in ticks])
    ax.set_ylabel("gain by band (Hz)")
    ax.set_xlabel("time in your performance (s)")
    return fig


def write_report(trace: RunTrace, path: str | Path, *, truth: np.ndarray | None = None,
                 title: str = "", force: bool = False) -> int:
    """Draw the report into the PNG ``path`` atomically; returns its size in bytes."""
    return save_png(draw_run(trace, truth, title), path, force=force)
