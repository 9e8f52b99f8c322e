"""The HDF5 bundle: everything the player needs from one recording X, and nothing else.

The layout and its bounds are in :mod:`shared.bundle_schema`.

Bundles are shared between people, so ``load_bundle`` treats them as untrusted: it refuses
links, virtual datasets, object/variable-length data and unknown filters, checks every
dtype and shape against the parameters, bounds every size, and checks values are finite,
before anything is used. Every failure is a ``BundleError`` with a one-line message.
Writes are atomic (:mod:`shared.fileio`). The schema lives in :mod:`shared.bundle_schema`,
the audio's chunked storage in :mod:`shared.audio_store`, the validation in
:mod:`shared.bundle_check`; this module writes and loads.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

from shared.audio_store import DEFAULT_CHUNK_SAMPLES, BundleAudio, encode_audio
from shared.bundle_check import read_validated
from shared.bundle_schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    VOLATILE_ATTRS,
    Bundle,
    BundleContent,
    NMFBases,
    SourceInfo,
)
from shared.errors import BundleError, first_line
from shared.fileio import atomic_output

__all__ = ["Bundle", "BundleAudio", "BundleContent", "NMFBases", "SourceInfo", "FORMAT_NAME", "FORMAT_VERSION",
           "VOLATILE_ATTRS", "load_bundle", "write_bundle"]


def write_bundle(
    path: str | Path,
    content: BundleContent,
    samples: np.ndarray,
    sr: int,
    subtype: str,
    *,
    force: bool = False,
    tool_version: str = "0",
    chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write a bundle atomically.

    Args:
        path: output ``.h5`` path.
        content: analysis results.
        samples: float32 ``(n_samples, channels)`` audio of X at its original rate ``sr``.
        subtype: the source's soundfile subtype (decides 16- or 24-bit storage).
        force: overwrite an existing file.
        progress: called as ``progress(done_chunks, total_chunks)`` while encoding audio.
    """
    p = content.params
    with atomic_output(path, force) as tmp:
        with h5py.File(tmp, "w", track_order=True) as f:
            f.attrs.update(
                format=FORMAT_NAME,
                format_version=FORMAT_VERSION,
                source_name=content.source.name,
                source_sha256=content.source.sha256,
                source_duration_s=float(content.source.duration_s),
                created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
                tool_version=str(tool_version),
            )
            params = f.create_group("params")
            for key, value in p.to_dict().items():
                params.attrs[key] = np.asarray(value, dtype=np.float64) if key == "detune_cents" else value
            spectra = f.create_group("spectra")
            spectra.create_dataset("coarse", data=content.state_mag.astype(np.float16),
                                   compression="gzip", shuffle=True, track_times=False)
            spectra.create_dataset("onsets", data=np.asarray(content.onsets, dtype=np.float32),
                                   compression="gzip", shuffle=True, track_times=False)
            spectra.create_dataset("onset_bank", data=np.asarray(content.onset_bank, dtype=np.float32),
                                   compression="gzip", shuffle=True, track_times=False)
            templates = f.create_group("templates")
            log_obs = templates.create_dataset("log_obs", data=content.templates.q, compression="gzip",
                                               track_times=False,
                                               chunks=(1, min(512, content.templates.n_states), p.n_obs_bins))
            log_obs.attrs.update(offset=float(content.templates.offset), step=float(content.templates.step))
            templates.create_dataset("detune_cents", data=np.asarray(p.detune_cents, dtype=np.float64),
                                     track_times=False)
            nmf = f.create_group("nmf")
            nmf.attrs.update({k: float(v) for k, v in content.nmf.priors.items()})
            nmf.attrs["n_iter"] = int(content.nmf.n_iter)
            nmf.attrs["data_scale"] = float(content.nmf.data_scale)
            for name in ("w_shape", "w_rate"):
                nmf.create_dataset(name, data=getattr(content.nmf, name).astype(np.float32),
                                   compression="gzip", shuffle=True, track_times=False)
            nmf.create_dataset("bound_trace", data=np.asarray(content.nmf.bound_trace, dtype=np.float64),
                               track_times=False)
            encode_audio(f.create_group("audio"), samples, sr, subtype, chunk_samples, progress)
    return Path(path)


def load_bundle(path: str | Path) -> Bundle:
    """Open and validate a bundle; see the module docstring for what is checked.

    Raises:
        BundleError: with a one-line message naming the first problem found.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    if path.is_dir():
        raise BundleError(f"bundle path is a directory: {path}")
    if not h5py.is_hdf5(path):
        raise BundleError(f"{path.name} is not an HDF5 bundle (corrupt, truncated or another kind of file)")
    try:
        with h5py.File(path, "r") as f:
            return read_validated(f, path)
    except BundleError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise BundleError(f"{path.name} is damaged and cannot be read ({first_line(exc)})") from None


