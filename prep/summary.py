"""``prep inspect``: a readable summary of a bundle (a table, or JSON for scripts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from rich.text import Text

from shared.bundle import load_bundle
from shared.text import inert


def count_onsets(strength: np.ndarray, threshold: float = 0.5) -> int:
    """Onsets in an onset-strength curve ``(n_frames,)``: rises through ``threshold``."""
    above = np.asarray(strength) >= threshold
    return int(above[0]) + int(np.count_nonzero(above[1:] & ~above[:-1]))


def bundle_summary(path: Path) -> dict:
    """A JSON-ready description of a bundle (validated first)."""
    with load_bundle(path) as b:
        p = b.params
        return {
            "path": str(path),
            "format_version": int(b.attrs["format_version"]),
            "created_utc": str(b.attrs.get("created_utc", "")),
            "tool_version": str(b.attrs.get("tool_version", "")),
            "source": {"name": b.source.name, "sha256": b.source.sha256, "duration_s": round(b.source.duration_s, 3)},
            "audio": {"sample_rate": b.audio.sr, "channels": b.audio.channels, "samples": b.audio.n_samples,
                      "codec": b.audio.codec, "music_start_s": b.music_start_s},
            "states": b.n_states,
            "state_rate_hz": round(1.0 / p.coarse_period_s, 3),
            "live_frame_rate_hz": round(1.0 / p.fine_period_s, 3),
            "detune_cents": list(p.detune_cents),
            "observation_bins": p.n_obs_bins,
            "onsets": count_onsets(b.onsets),
            "nmf_components": int(b.nmf.w_shape.shape[0]),
            "nmf_priors": b.nmf.priors,
            "params": p.to_dict(),
            "bytes": path.stat().st_size,
        }


def print_summary_table(bundle: Path, info: dict) -> None:
    """The summary as a table on stdout; names and attributes from the bundle shown inert
    (``Text`` cells are never parsed as rich markup; control characters are escaped)."""
    table = Table(title=Text(inert(bundle.name)), show_header=False)
    minutes, seconds = divmod(info["source"]["duration_s"], 60)
    rows = [
        ("source", f"{info['source']['name']} ({int(minutes)}:{seconds:04.1f})"),
        ("sha256", info["source"]["sha256"][:16] + "..."),
        ("audio", f"{info['audio']['sample_rate']} Hz, {info['audio']['channels']} ch, {info['audio']['codec']}"),
        ("music starts", "not stored (a bundle of an older prep)" if info["audio"]["music_start_s"] is None
         else f"at {info['audio']['music_start_s']:.2f} s"),
        ("states", f"{info['states']} at {info['state_rate_hz']:g}/s (live frames {info['live_frame_rate_hz']:g}/s)"),
        ("detune", ", ".join(f"{c:+g}" for c in info["detune_cents"]) + " cents"),
        ("observation", f"{info['observation_bins']} bins, {info['params']['fmin_hz']:g}-{info['params']['fmax_hz']:g} Hz"),
        ("onsets", f"{info['onsets']} heard in the recording "
                   f"({info['onsets'] / max(info['source']['duration_s'], 1e-9) * 60:.0f} per minute)"),
        ("NMF bases", f"{info['nmf_components']} (c={info['nmf_priors']['c']:g})"),
        ("size", f"{info['bytes'] / 1e6:.1f} MB"),
        ("format", f"v{info['format_version']}, made {info['created_utc']} by {info['tool_version']}"),
    ]
    for key, value in rows:
        table.add_row(key, Text(inert(value)))
    Console().print(table)
