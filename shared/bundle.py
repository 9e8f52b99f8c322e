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

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import h5py
import numpy as np

from shared.audio_store import DEFAULT_CHUNK_SAMPLES, BundleAudio, encode_audio
from shared.bundle_check import file_identity, read_validated
from shared.bundle_schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_LOADED_BYTES,
    VOLATILE_ATTRS,
    Bundle,
    NMFBases,
    SourceInfo,
)
from shared.errors import BundleError, first_line
from shared.fileio import atomic_output
from shared.sandbox import SandboxError, run_isolated
from shared.spectral import AnalysisParams, frame_power

#: Reading a bundle may take this long (seconds), plus a second per LOAD_BYTES_PER_S bytes;
#: a libhdf5 that loops on a corrupted file is stopped there.
LOAD_TIMEOUT_S = 10.0
LOAD_BYTES_PER_S = 5e6
#: What the sandboxed reader may allocate beyond the caller's size at the fork (bytes): the
#: arrays it returns (at most MAX_LOADED_BYTES) and libhdf5's buffers.
LOAD_MEMORY_BYTES = MAX_LOADED_BYTES + (256 << 20)

__all__ = ["Bundle", "BundleAudio", "NMFBases", "SourceInfo", "FORMAT_NAME", "FORMAT_VERSION",
           "VOLATILE_ATTRS", "BundleWriter", "load_bundle", "write_bundle"]


class _Rows:
    """Fills a pre-sized dataset in order along ``axis``, a whole storage chunk at a time
    (so each compressed chunk is written once, never read back): holds less than one chunk
    of rows beyond the last block given."""

    def __init__(self, dset: h5py.Dataset, axis: int = 0) -> None:
        self.dset, self.axis = dset, axis
        self.size, self.step = dset.shape[axis], dset.chunks[axis]
        self.done = 0  # rows written
        self._held: list[np.ndarray] = []
        self._n_held = 0

    def add(self, rows: np.ndarray) -> None:
        """Append ``rows`` (the dataset's shape but ``k`` along ``axis``)."""
        k = rows.shape[self.axis]
        if self.done + self._n_held + k > self.size:
            raise ValueError(f"{self.dset.name}: more than its {self.size} rows given")
        if k:
            self._held.append(np.asarray(rows, dtype=self.dset.dtype))
            self._n_held += k
        if self._n_held >= self.step:
            self._flush(self._n_held // self.step * self.step)

    def close(self) -> None:
        """Write what is held; every row must have been given."""
        self._flush(self._n_held)
        if self.done != self.size:
            raise ValueError(f"{self.dset.name}: {self.done} of {self.size} rows given")

    def _flush(self, n: int) -> None:
        if n <= 0:
            return
        joined = np.concatenate(self._held, axis=self.axis) if len(self._held) > 1 else self._held[0]
        head = [slice(None)] * joined.ndim
        head[self.axis] = slice(0, n)
        target = list(head)
        target[self.axis] = slice(self.done, self.done + n)
        self.dset[tuple(target)] = joined[tuple(head)]
        head[self.axis] = slice(n, None)
        rest = joined[tuple(head)]
        self._held, self._n_held = ([rest] if rest.shape[self.axis] else []), rest.shape[self.axis]
        self.done += n


class BundleWriter:
    """A bundle being written, streamed (made by :func:`write_bundle`): its big datasets are
    pre-sized from ``n_states`` and ``n_onset_frames`` and filled block by block, in order,
    a storage chunk at a time, so memory holds a block, never the recording's arrays.

    Fill everything, in any order between the datasets: :meth:`add_coarse`,
    :meth:`add_onsets`, :meth:`add_templates` (blocks of states or frames, in order),
    :meth:`set_template_scale`, :meth:`write_onset_bank`, :meth:`write_nmf`,
    :meth:`write_audio`.
    """

    # The two large datasets (coarse spectra, templates) are stored without compression:
    # gzip saved 18 % and 9 % of them but cost the player 0.3 s of start-up on a 32-minute
    # piece (decompression), a quarter of what a 1-minute piece's whole start-up costs.
    #: States per storage chunk of /spectra/coarse (n_bins float16 each: 512 kB for 1025 bins).
    COARSE_CHUNK_STATES = 256
    #: States per storage chunk of /templates/log_obs (one detune variant per chunk).
    TEMPLATE_CHUNK_STATES = 512
    ONSET_CHUNK_FRAMES = 1 << 15
    POWER_CHUNK_STATES = 1 << 14

    def __init__(self, f: h5py.File, params: AnalysisParams, source: SourceInfo, n_states: int,
                 n_onset_frames: int, tool_version: str) -> None:
        self.params, self._file = params, f
        f.attrs.update(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            source_name=source.name,
            source_sha256=source.sha256,
            source_duration_s=float(source.duration_s),
            created_utc=datetime.now(UTC).isoformat(timespec="seconds"),
            tool_version=str(tool_version),
        )
        group = f.create_group("params")
        for key, value in params.to_dict().items():
            group.attrs[key] = np.asarray(value, dtype=np.float64) if key == "detune_cents" else value
        self._spectra = f.create_group("spectra")
        self._coarse = _Rows(self._spectra.create_dataset(
            "coarse", shape=(n_states, params.n_bins), dtype=np.float16,
            chunks=(min(self.COARSE_CHUNK_STATES, n_states), params.n_bins), track_times=False))
        # each state's power, as the player's loader would compute it from the stored
        # float16 magnitudes: the player then never reads the spectra (39 MB on 32 minutes)
        self._power = _Rows(self._spectra.create_dataset(
            "power", shape=(n_states,), dtype=np.float64,
            chunks=(min(self.POWER_CHUNK_STATES, n_states),), track_times=False))
        self._onsets = _Rows(self._spectra.create_dataset(
            "onsets", shape=(n_onset_frames,), dtype=np.float32, compression="gzip", shuffle=True,
            chunks=(min(self.ONSET_CHUNK_FRAMES, n_onset_frames),), track_times=False))
        templates = f.create_group("templates")
        self._log_obs = templates.create_dataset(
            "log_obs", shape=(len(params.detune_cents), n_states, params.n_obs_bins), dtype=np.uint8,
            chunks=(1, min(self.TEMPLATE_CHUNK_STATES, n_states), params.n_obs_bins),
            track_times=False)
        self._templates = _Rows(self._log_obs, axis=1)
        templates.create_dataset("detune_cents", data=np.asarray(params.detune_cents, dtype=np.float64),
                                 track_times=False)
        self._nmf = f.create_group("nmf")
        self._audio = f.create_group("audio")
        self._written: set[str] = set()

    def add_coarse(self, mag: np.ndarray) -> None:
        """The next states' magnitudes, ``(k, n_bins)`` (stored as float16, clamped to its
        range), and their power (:func:`shared.spectral.frame_power` of the stored values)."""
        stored = np.minimum(mag, np.finfo(np.float16).max).astype(np.float16)
        self._coarse.add(stored)
        self._power.add(frame_power(stored))

    def add_onsets(self, strength: np.ndarray) -> None:
        """The next frames' onset strengths, ``(k,)`` in [0, 1]."""
        self._onsets.add(strength)

    def add_templates(self, q: np.ndarray) -> None:
        """The next states' template codes, uint8 ``(n_detune, k, n_obs_bins)``."""
        self._templates.add(q)

    def set_template_scale(self, offset: float, step: float) -> None:
        """The codes' scale: ``log T = offset + step * code``."""
        self._log_obs.attrs.update(offset=float(offset), step=float(step))
        self._written.add("template scale")

    def write_onset_bank(self, bank: np.ndarray) -> None:
        """The onset strength's mel filterbank, ``(onset_bands, n_bins)``."""
        self._spectra.create_dataset("onset_bank", data=np.asarray(bank, dtype=np.float32),
                                     compression="gzip", shuffle=True, track_times=False)
        self._written.add("onset bank")

    def write_nmf(self, nmf: NMFBases) -> None:
        """The accompaniment bases."""
        group = self._nmf
        group.attrs.update({k: float(v) for k, v in nmf.priors.items()})
        group.attrs["n_iter"] = int(nmf.n_iter)
        group.attrs["data_scale"] = float(nmf.data_scale)
        for name in ("w_shape", "w_rate"):
            group.create_dataset(name, data=getattr(nmf, name).astype(np.float32),
                                 compression="gzip", shuffle=True, track_times=False)
        group.create_dataset("bound_trace", data=np.asarray(nmf.bound_trace, dtype=np.float64), track_times=False)
        self._written.add("nmf")

    def write_audio(self, blocks: Iterable[np.ndarray], n_samples: int, channels: int, sr: int, subtype: str, *,
                    chunk_samples: int = DEFAULT_CHUNK_SAMPLES, progress: Callable[[int, int], None] | None = None) -> None:
        """X's audio at its own rate ``sr``, streamed: float32 ``(n_i, channels)`` blocks,
        ``n_samples`` frames in all (:func:`shared.audio_store.encode_audio`);
        ``progress(done_chunks, total_chunks)``."""
        encode_audio(self._audio, blocks, n_samples, channels, sr, subtype, chunk_samples, progress)
        self._written.add("audio")

    def close(self) -> None:
        """Write what is held; raise ``ValueError`` if anything was not given."""
        for rows in (self._coarse, self._power, self._onsets, self._templates):
            rows.close()
        missing = {"template scale", "onset bank", "nmf", "audio"} - self._written
        if missing:
            raise ValueError(f"bundle incomplete: no {', '.join(sorted(missing))}")


@contextmanager
def write_bundle(
    path: str | Path,
    params: AnalysisParams,
    source: SourceInfo,
    *,
    n_states: int,
    n_onset_frames: int,
    force: bool = False,
    tool_version: str = "0",
) -> Iterator[BundleWriter]:
    """Write a bundle atomically and streamed: ``with write_bundle(...) as bundle:`` fill
    ``bundle`` (a :class:`BundleWriter`); the file appears at ``path`` only when the block
    ends without error and everything was given. An exception (or Ctrl-C) leaves nothing.

    Args:
        path: output ``.h5`` path.
        params: the analysis parameters.
        source: what the bundle is made from.
        n_states: coarse states (rows of /spectra/coarse and /templates/log_obs).
        n_onset_frames: frames of /spectra/onsets.
        force: overwrite an existing file.
        tool_version: stored in the bundle (volatile).

    Raises:
        OutputError: ``path`` cannot be written, or exists and ``force`` is False.
    """
    with atomic_output(path, force) as tmp:
        # (a file object: libhdf5 cannot open atomic_output's /proc/self/fd path by name)
        with open(tmp, "w+b") as fh, h5py.File(fh, "w", track_order=True) as f:
            bundle = BundleWriter(f, params, source, n_states, n_onset_frames, tool_version)
            yield bundle
            bundle.close()


def load_bundle(path: str | Path, *, spectra: bool = True, timeout_s: float | None = None) -> Bundle:
    """Open and validate a bundle; see the module docstring for what is checked.

    libhdf5 parses the file only in a sandboxed child process (:mod:`shared.sandbox`):
    a corrupted file that would make the library hang or allocate without bound costs the
    child its life, not the caller's. The child returns the validated arrays; the audio is
    read later, a chunk at a time, from the same file (its identity is checked again).

    Args:
        spectra: also return X's coarse magnitude spectra (``Bundle.state_mag``); without
            them only their power (``Bundle.state_power``), which is all the player uses:
            a 32-minute piece's 39 MB of spectra are then not even read (the bundle
            stores their power; one from an older prep has them read for it).
        timeout_s: wall-clock limit on reading (seconds); default ``LOAD_TIMEOUT_S`` plus
            one second per ``LOAD_BYTES_PER_S`` bytes of file.

    Raises:
        BundleError: with a one-line message naming the first problem found.
    """
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}")
    if path.is_dir():
        raise BundleError(f"bundle path is a directory: {path}")
    if not path.is_file():
        raise BundleError(f"bundle path is not a regular file: {path}")
    try:
        if not h5py.is_hdf5(path):
            raise BundleError(f"{path.name} is not an HDF5 bundle (corrupt, truncated or another kind of file)")
        if timeout_s is None:
            timeout_s = LOAD_TIMEOUT_S + path.stat().st_size / LOAD_BYTES_PER_S
        checked = run_isolated(_read_checked, path, spectra, timeout_s=timeout_s, memory_bytes=LOAD_MEMORY_BYTES)
    except SandboxError as exc:
        raise BundleError(f"{path.name} is damaged or hostile and was refused: {exc}") from None
    except OSError as exc:
        raise BundleError(f"cannot read bundle {path.name} ({exc.strerror or first_line(exc)})") from None
    if file_identity(path) != checked.audio.identity:
        raise BundleError(f"{path.name} changed while it was being checked; load it again")
    return checked


def _read_checked(path: Path, spectra: bool = True) -> Bundle:
    """Open and validate (run in the sandboxed child): every failure is a ``BundleError``."""
    try:
        with h5py.File(path, "r") as f:
            return read_validated(f, path, spectra)
    except BundleError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever h5py raises on a damaged file is one line
        raise BundleError(f"{path.name} is damaged and cannot be read ({first_line(exc)})") from None
