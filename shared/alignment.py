"""Alignment paths (``u_time_s,x_time_s`` CSV) and their causal error against a truth.

A path has one row per analysis frame: where in X the player was believed to be at that
moment of U. Read causally, as the scorer beside the repository reads it, the estimate at
a time ``t`` of U is the ``x_time_s`` of the last row with ``u_time_s <= t`` (1e-9 s of
slack for the rows' rounding to microseconds); before the first row it is 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from shared.errors import AudioError, first_line

#: Slack (seconds) when matching a time to the rows at or before it: rows are written to
#: microseconds.
ROW_SLACK_S = 1e-9


def read_path(path: str | Path, what: str = "path") -> np.ndarray:
    """A ``u_time_s,x_time_s`` CSV (one header line) as float64 ``(n, 2)``, sorted by
    ``u_time_s``; one clear ``AudioError`` if it is not one (``what`` names it)."""
    path = Path(path)
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError) as exc:
        raise AudioError(f"cannot read the {what} file {path.name}: {first_line(exc)}") from None
    if data.shape[0] < 2 or data.shape[1] != 2 or not np.isfinite(data).all() or np.any(np.diff(data[:, 0]) < 0):
        raise AudioError(f"{what} file {path.name} must hold rows u_time_s,x_time_s sorted by u_time_s")
    return data


def causal_positions(path: np.ndarray, times_s: np.ndarray) -> np.ndarray:
    """The causal estimate (seconds of X) at each of ``times_s`` (seconds of U) from
    ``path`` ``(n, >=2)`` (columns u_time_s, x_time_s, ...)."""
    idx = np.searchsorted(path[:, 0], np.asarray(times_s) + ROW_SLACK_S, side="right") - 1
    return np.where(idx >= 0, path[np.clip(idx, 0, None), 1], 0.0)


def heard_times(heard: np.ndarray, x_s: np.ndarray, max_rate: float = 4.0) -> np.ndarray:
    """When (seconds of U) each X time of ``x_s`` is first heard.

    Args:
        heard: ``(n, 2)`` rows (u_s, x_s), one per output block in order: when the block's
            first sample is heard and the X time it plays (NaN: silence).
        x_s: ``(m,)`` X times (e.g. the accompaniment's onsets).
        max_rate: a step of X faster than this per second of U is a seek, not playing.

    Returns:
        ``(m,)``: the U time at which playback first passes each X time, interpolated
        within the block that plays it; NaN if it is never played.
    """
    u0, x0, u1, x1 = heard[:-1, 0], heard[:-1, 1], heard[1:, 0], heard[1:, 1]
    with np.errstate(invalid="ignore"):
        played = np.isfinite(x0) & np.isfinite(x1) & (x1 >= x0) & (x1 - x0 <= max_rate * (u1 - u0))
    out = np.full(np.shape(x_s), np.nan)
    for k, x in enumerate(np.asarray(x_s, dtype=np.float64)):
        hit = np.flatnonzero(played & (x0 <= x) & (x < x1))
        if hit.size:
            i = hit[0]
            out[k] = u0[i] + (x - x0[i]) / (x1[i] - x0[i]) * (u1[i] - u0[i])
    return out


def causal_errors(path: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Signed error (seconds; negative: behind) of the causal estimate at each truth row
    ``(m, 2)`` (u_time_s, x_time_s)."""
    return causal_positions(path, truth[:, 0]) - truth[:, 1]


def rate_wobble(heard: np.ndarray, window_s: float = 0.1) -> dict:
    """How much the playback rate moves (issue 22: at most 10 % within any 100 ms, except
    at a seek).

    Args:
        heard: ``(n, 4)`` rows (u_s, x_s, rate, seek) of :attr:`player.trace.RunTrace.heard`,
            one per output block in order (rate NaN while silent; seek 1 where the block
            began with one).
        window_s: the window (seconds of U).

    Returns:
        ``max_change_pct``: the largest ``max / min - 1`` of the rate over any window of
        blocks that are all playing and hold no seek (%); ``over_10_pct``: the share of those
        windows where it passes 10 % (%); ``jitter_pct``: the RMS of the block-to-block
        relative change (%); ``seeks_per_min``: seeks per minute of playing.
    """
    rate, seek = heard[:, 2], heard[:, 3] > 0
    playing = np.isfinite(rate)
    block_s = float(np.median(np.diff(heard[:, 0]))) if len(heard) > 1 else window_s
    span = max(1, int(round(window_s / block_s)))
    ok = playing & ~seek
    changes = np.zeros(0)
    if len(rate) >= span:
        whole = sliding_window_view(ok, span).all(axis=1)
        windows = sliding_window_view(rate, span)[whole]
        changes = windows.max(axis=1) / windows.min(axis=1) - 1.0
    both = ok[1:] & ok[:-1]
    steps = np.diff(rate)[both] / rate[:-1][both]
    minutes = playing.sum() * block_s / 60.0
    return {"max_change_pct": float(100 * changes.max()) if changes.size else 0.0,
            "over_10_pct": float(100 * np.mean(changes > 0.1 + 1e-9)) if changes.size else 0.0,
            "jitter_pct": float(100 * np.sqrt(np.mean(steps ** 2))) if steps.size else 0.0,
            "seeks_per_min": float((seek & playing).sum() / minutes) if minutes > 0 else 0.0}
