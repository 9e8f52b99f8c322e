"""Mutation fuzzing of bundles: damage a valid bundle byte by byte and load it.

Shared by the test suite (tests/test_hostile_input.py, a few hundred mutations; more under
the ``slow`` marker) and the benchmark ``python -m benchmarks.fuzz_bundles`` (10,000+).

Most of a bundle is the audio's FLAC bytes and compressed arrays, where a changed byte only
changes a value; the bytes libhdf5 *parses* (superblock, object headers, B-trees, heaps,
filter pipelines) are where a loader hangs or crashes. So mutations go mostly to those
"metadata" bytes, found by subtracting every dataset's stored chunks from the file.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from shared.bundle import load_bundle
from shared.errors import BundleError

#: Kinds of mutation: a random byte, a flipped bit, 0xFF, 0x00, a little-endian length grown.
KINDS = ("byte", "bit", "ff", "zero", "length")


def metadata_offsets(path: Path) -> np.ndarray:
    """Byte offsets of ``path`` that are not inside any dataset's stored data (int64)."""
    size = path.stat().st_size
    is_data = np.zeros(size, dtype=bool)

    def visit(_name: str, obj) -> None:
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks is None:
            offset = obj.id.get_offset()
            if offset is not None:
                is_data[offset: offset + obj.id.get_storage_size()] = True
            return
        for i in range(obj.id.get_num_chunks()):
            info = obj.id.get_chunk_info(i)
            is_data[info.byte_offset: info.byte_offset + info.size] = True

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return np.flatnonzero(~is_data)


def mutate(data: bytes, rng: np.random.Generator, meta: np.ndarray, meta_share: float = 0.9) -> tuple[bytes, str]:
    """One mutation of ``data`` (1-3 changes); returns the bytes and a description."""
    out = bytearray(data)
    notes = []
    for _ in range(int(rng.integers(1, 4))):
        pos = int(rng.choice(meta)) if rng.random() < meta_share else int(rng.integers(0, len(out)))
        kind = KINDS[int(rng.integers(0, len(KINDS)))]
        if kind == "byte":
            out[pos] = int(rng.integers(0, 256))
        elif kind == "bit":
            out[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == "ff":
            out[pos] = 0xFF
        elif kind == "zero":
            out[pos] = 0
        else:  # grow a 16-bit little-endian field: how lengths and counts go wrong
            if pos + 1 < len(out):
                out[pos + 1] = (out[pos + 1] + int(rng.integers(1, 16))) % 256
        notes.append(f"{kind}@{pos}")
    return bytes(out), " ".join(notes)


def invariant_problems(bundle) -> list[str]:
    """What is wrong with a bundle the loader accepted (an independent check: empty if sound)."""
    problems = []
    arrays = {"state_mag": bundle.state_mag, "onsets": bundle.onsets, "onset_bank": bundle.onset_bank,
              "w_shape": bundle.nmf.w_shape, "w_rate": bundle.nmf.w_rate}
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            problems.append(f"{name} not finite")
    if not (np.isfinite(bundle.source.duration_s) and bundle.source.duration_s > 0):
        problems.append(f"source duration {bundle.source.duration_s}")
    if abs(bundle.source.duration_s - bundle.duration_s) > 0.1:
        problems.append("source duration disagrees with the audio")
    if bundle.templates.q.shape[1] != bundle.state_mag.shape[0]:
        problems.append("templates and spectra disagree on the states")
    if not (np.isfinite(bundle.templates.offset) and np.isfinite(bundle.templates.step) and bundle.templates.step > 0):
        problems.append("template quantisation not finite")
    return problems


@dataclass
class FuzzReport:
    """Outcome counts of a fuzzing run (``examples``: one description per kind of failure)."""

    tried: int = 0
    accepted: int = 0
    refused: int = 0
    timeouts: int = 0
    uncaught: int = 0
    wrongly_accepted: int = 0
    child_peak_mb: float = 0.0
    seconds: float = 0.0
    examples: dict = field(default_factory=dict)

    def failures(self) -> int:
        """Outcomes that are defects: an exception other than ``BundleError``, or a bundle
        accepted with broken content. (A timeout is the sandbox doing its job: refused.)"""
        return self.uncaught + self.wrongly_accepted


def fuzz(source: Path, work: Path, n: int, seed: int = 0, timeout_s: float = 3.0) -> FuzzReport:
    """Load ``n`` mutations of the bundle ``source`` (written in ``work``) and count outcomes.

    A mutation that loads is also asked for its first and last audio chunk, as the player
    would. A timeout is a libhdf5 loop the sandbox stopped (the bundle is refused); an
    uncaught exception is any exception other than ``BundleError``. A real hang would stop
    this loop: the caller runs it under a deadline.
    """
    rng = np.random.default_rng(seed)
    data = source.read_bytes()
    meta = metadata_offsets(source)
    report = FuzzReport()
    started = time.perf_counter()
    target = work / "mutant.h5"
    for _ in range(n):
        mutant, note = mutate(data, rng, meta)
        target.write_bytes(mutant)
        report.tried += 1
        try:
            with load_bundle(target, timeout_s=timeout_s) as bundle:
                bundle.audio.read(0, 256)
                bundle.audio.read(max(0, bundle.audio.n_samples - 256), 256)
                problems = invariant_problems(bundle)
            if problems:
                report.wrongly_accepted += 1
                report.examples.setdefault("wrongly accepted", f"{note}: {problems}")
            else:
                report.accepted += 1
        except BundleError as exc:
            report.refused += 1
            if "longer than" in str(exc):  # libhdf5 looped; the sandbox stopped it
                report.timeouts += 1
                report.examples.setdefault("timeout", f"{note}: {exc}")
        except Exception as exc:  # noqa: BLE001 - counting them is the point
            report.uncaught += 1
            report.examples.setdefault("uncaught", f"{note}: {type(exc).__name__}: {exc}")
    report.seconds = time.perf_counter() - started
    report.child_peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return report
