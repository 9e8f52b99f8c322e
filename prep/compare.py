"""Content comparison of two bundles (``prep diff``): what differs, and by how much.

Datasets are compared value by value with tolerances (floats) or exactly (integers), in
row blocks so that large templates never need two full copies in memory. The FLAC audio
streams are compared as bytes first and, if the encoder differed, as decoded samples.
Volatile root attributes (creation time, tool version) are reported but do not count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from shared.bundle import VOLATILE_ATTRS, load_bundle

ROW_BLOCK = 256


@dataclass
class BundleDiff:
    """Result of comparing bundle A with bundle B.

    Attributes:
        differences: one line per difference that counts.
        volatile: one line per volatile attribute that differs (informational).
    """

    differences: list[str] = field(default_factory=list)
    volatile: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.differences


def _norm(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _compare_attrs(where: str, a: h5py.AttributeManager, b: h5py.AttributeManager, out: BundleDiff,
                   volatile: tuple[str, ...] = ()) -> None:
    for key in sorted(set(a) | set(b)):
        va, vb = (_norm(a[key]) if key in a else None), (_norm(b[key]) if key in b else None)
        if va == vb:
            continue
        if isinstance(va, float) and isinstance(vb, float) and np.isclose(va, vb, rtol=1e-9, atol=0):
            continue
        line = f"{where}@{key}: {va!r} != {vb!r}"
        (out.volatile if key in volatile else out.differences).append(line)


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found: dict[str, h5py.Dataset] = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _compare_values(name: str, da: h5py.Dataset, db: h5py.Dataset, rtol: float, atol: float) -> str | None:
    exact = da.dtype.kind in "iu" and db.dtype.kind in "iu"
    max_abs, n_bad, first_bad = 0.0, 0, None
    rows = da.shape[0] if da.shape else 1
    for lo in range(0, max(rows, 1), ROW_BLOCK):
        sl = slice(lo, lo + ROW_BLOCK) if da.shape else ()
        va = np.asarray(da[sl], dtype=np.float64)
        vb = np.asarray(db[sl], dtype=np.float64)
        diff = np.abs(va - vb)
        bad = diff > 0 if exact else diff > atol + rtol * np.abs(vb)
        if bad.any():
            n_bad += int(bad.sum())
            if first_bad is None:
                first_bad = np.unravel_index(int(np.argmax(bad)), bad.shape)
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
    if n_bad:
        return f"/{name}: {n_bad} of {da.size} values differ (max abs diff {max_abs:.3g})"
    return None


def _compare_audio(a_path: Path, b_path: Path, rtol: float, atol: float) -> str | None:
    """Decoded audio, compared chunk by chunk (used when the FLAC bytes differ)."""
    with load_bundle(a_path) as ba, load_bundle(b_path) as bb:
        if (ba.audio.sr, ba.audio.channels, ba.audio.n_samples) != (bb.audio.sr, bb.audio.channels, bb.audio.n_samples):
            return (f"/audio: {ba.audio.sr} Hz x{ba.audio.channels} ({ba.audio.n_samples} samples) != "
                    f"{bb.audio.sr} Hz x{bb.audio.channels} ({bb.audio.n_samples} samples)")
        step, max_abs = ba.audio.chunk_samples, 0.0
        for start in range(0, ba.audio.n_samples, step):
            max_abs = max(max_abs, float(np.abs(ba.audio.read(start, step) - bb.audio.read(start, step)).max()))
        if max_abs > atol:
            return f"/audio: decoded samples differ (max abs diff {max_abs:.3g})"
    return None


def diff_bundles(a_path: str | Path, b_path: str | Path, rtol: float = 1e-5, atol: float = 1e-6) -> BundleDiff:
    """Compare the contents of two bundles (both validated first).

    Raises:
        BundleError: either bundle is missing or invalid.
    """
    a_path, b_path = Path(a_path), Path(b_path)
    for p in (a_path, b_path):
        load_bundle(p).close()  # validate both before trusting anything in them
    out = BundleDiff()
    with h5py.File(a_path, "r") as fa, h5py.File(b_path, "r") as fb:
        _compare_attrs("/", fa.attrs, fb.attrs, out, VOLATILE_ATTRS)
        da, db = _datasets(fa), _datasets(fb)
        groups = sorted({n.rsplit("/", 1)[0] for n in list(da) + list(db) if "/" in n})
        for g in groups:
            if g in fa and g in fb:
                _compare_attrs(f"/{g}", fa[g].attrs, fb[g].attrs, out)
        audio_differs = False
        for name in sorted(set(da) | set(db)):
            if name not in da or name not in db:
                out.differences.append(f"/{name}: only in {'B' if name not in da else 'A'}")
                continue
            x, y = da[name], db[name]
            if x.shape != y.shape or x.dtype != y.dtype:
                if name.startswith("audio/"):
                    audio_differs = True
                    continue
                out.differences.append(f"/{name}: shape/dtype {x.shape} {x.dtype} != {y.shape} {y.dtype}")
                continue
            line = _compare_values(name, x, y, rtol, atol)
            if line and name.startswith("audio/"):
                audio_differs = True
            elif line:
                out.differences.append(line)
    if audio_differs:
        line = _compare_audio(a_path, b_path, rtol, atol)
        if line:
            out.differences.append(line)
    return out
