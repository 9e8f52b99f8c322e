"""The HDF5 bundle: everything the player needs from one recording X, and nothing else.

Layout (schema version 2)::

    /                    attrs: format, format_version, source_name, source_sha256,
                                source_duration_s, created_utc*, tool_version*
    /params              attrs: the AnalysisParams (sr, n_fft, hops, band, gain, detune_cents,
                                onset_*)
    /audio/data          FLAC:  uint8 (n_bytes,)    concatenated FLAC streams, one per chunk
                         PCM:   int16|int32 (n_samples, channels), shuffle+gzip (> 8 channels)
    /audio/offsets       int64 (n_chunks + 1,)      byte offsets of the FLAC chunks
    /audio               attrs: codec, sr, channels, n_samples, chunk_samples, subtype
    /spectra/coarse      float16 (n_states, n_bins) magnitude of X at the coarse hop
    /spectra/onsets      float32 (n_frames,)        onset strength of X at the fine hop, in [0, 1]
                         (frame k centred on sample k * fine_hop at params.sr)
    /spectra/onset_bank  float32 (onset_bands, n_bins) the mel filterbank of the onset strength
    /templates/log_obs   uint8 (n_detune, n_states, n_obs_bins) log observation templates,
                         attrs offset, step: log T = offset + step * code
    /templates/detune_cents float64 (n_detune,)
    /nmf/w_shape, /nmf/w_rate float32 (n_components, n_bins) q(W) of the accompaniment bases
    /nmf/bound_trace     float64 (n,)               learning curve of the VB bound
    /nmf                 attrs: a, b, c, d, n_iter, data_scale

(* volatile: reported by ``prep diff`` but not counted as a difference.)

Bundles are shared between people, so ``load_bundle`` treats them as untrusted: it refuses
links, virtual datasets, object/variable-length data and unknown filters, checks every
dtype and shape against the parameters, bounds every size, and checks values are finite,
before anything is used. Every failure is a ``BundleError`` with a one-line message.
Writes are atomic: a temporary file in the target folder, renamed into place when complete.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import soundfile as sf

from shared.errors import BundleError, OutputError
from shared.spectral import AnalysisParams, QuantizedTemplates

FORMAT_NAME = "followme-karaoke-bundle"
FORMAT_VERSION = 2  # 2: /spectra/onsets and /spectra/onset_bank
#: Root attributes that change from build to build and are not content.
VOLATILE_ATTRS = ("created_utc", "tool_version")

#: Bounds on what a bundle may declare (protects the player from hostile files).
MAX_STATES = 4 * 3600 * 50
MAX_BINS = 8193
MAX_DETUNE = 31
MAX_COMPONENTS = 1024
MAX_CHANNELS = 64
MAX_SAMPLE_RATE = 384000
MAX_AUDIO_SAMPLES = 4 * 3600 * MAX_SAMPLE_RATE
MAX_CHUNK_SAMPLES = 1 << 20
FLAC_MAX_CHANNELS = 8
DEFAULT_CHUNK_SAMPLES = 1 << 16
ALLOWED_FILTERS = {None, "gzip", "lzf"}


@dataclass(frozen=True)
class SourceInfo:
    """What the bundle was made from."""

    name: str
    sha256: str
    duration_s: float


@dataclass(frozen=True)
class NMFBases:
    """Posterior q(W) of the accompaniment bases learned by prep, with their priors.

    Attributes:
        w_shape, w_rate: float32 ``(n_components, n_bins)`` Gamma shape and rate of W.
        priors: ``{"a", "b", "c", "d"}`` Gamma hyperparameters used in learning.
        n_iter: VB iterations run.
        bound_trace: float64 ``(n,)`` the bound along learning.
        data_scale: factor applied to magnitudes before the NMF (Poisson needs a count scale).
    """

    w_shape: np.ndarray
    w_rate: np.ndarray
    priors: dict
    n_iter: int
    bound_trace: np.ndarray = field(default_factory=lambda: np.zeros(0))
    data_scale: float = 1.0

    @property
    def W(self) -> np.ndarray:
        """Posterior mean E[W], float32 ``(n_components, n_bins)``."""
        return (self.w_shape / self.w_rate).astype(np.float32)


@dataclass(frozen=True)
class BundleContent:
    """The analysis results prep writes (everything but the audio itself)."""

    params: AnalysisParams
    source: SourceInfo
    state_mag: np.ndarray  # (n_states, n_bins)
    onsets: np.ndarray  # (n_frames,) onset strength at the fine hop
    onset_bank: np.ndarray  # (onset_bands, n_bins) its filterbank
    templates: QuantizedTemplates  # (n_detune, n_states, n_obs_bins)
    nmf: NMFBases


# ----------------------------------------------------------------------------- writing
def check_output_path(path: str | Path, force: bool) -> Path:
    """Fail early (before any work) if ``path`` cannot be written.

    Raises:
        OutputError: the folder is missing or not writable, the path is a folder, or the
            file exists and ``force`` is False.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output path is a directory: {path}")
    if not parent.is_dir():
        raise OutputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {parent}")
    if path.exists() and not force:
        raise OutputError(f"{path} exists; use --force to overwrite it")
    return path


@contextmanager
def atomic_output(path: str | Path, force: bool) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    An exception (or Ctrl-C) inside the block removes the temporary file, so no partial
    output is ever left and an existing file is never damaged.
    """
    path = check_output_path(path, force)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent} ({exc.strerror or exc})") from None
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
    try:
        yield tmp
        if path.exists() and not force:
            raise OutputError(f"{path} appeared while working; use --force to overwrite it")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _subtype_for_storage(subtype: str) -> str:
    """Integer PCM up to 16 bits is kept at 16 bits, everything else at 24 bits.

    Lossless for 8/16/24-bit PCM sources; float and already-compressed sources (OGG, MP3)
    are stored at 24 bits, whose rounding error (-144 dBFS) is far below any audible level.
    """
    return "PCM_16" if subtype in ("PCM_16", "PCM_S8", "PCM_U8", "ULAW", "ALAW") else "PCM_24"


def _encode_audio(group: h5py.Group, samples: np.ndarray, sr: int, subtype: str,
                  chunk_samples: int, progress: Callable[[int, int], None] | None) -> None:
    n, channels = samples.shape
    storage = _subtype_for_storage(subtype)
    n_chunks = max(1, -(-n // chunk_samples))
    group.attrs.update(sr=int(sr), channels=int(channels), n_samples=int(n),
                       chunk_samples=int(chunk_samples), subtype=storage)
    clipped = np.clip(samples, -1.0, 1.0 - 2.0**-23)
    if channels > FLAC_MAX_CHANNELS:
        # FLAC holds at most 8 channels: store integer PCM with lossless gzip instead.
        group.attrs["codec"] = "pcm"
        scale, dtype = (2**15, np.int16) if storage == "PCM_16" else (2**23, np.int32)
        dset = group.create_dataset("data", shape=(n, channels), dtype=dtype,
                                    chunks=(min(chunk_samples, n), channels),
                                    compression="gzip", shuffle=True, track_times=False)
        for i in range(n_chunks):
            sl = slice(i * chunk_samples, min(n, (i + 1) * chunk_samples))
            dset[sl] = np.round(clipped[sl] * scale).astype(dtype)
            if progress:
                progress(i + 1, n_chunks)
        return
    group.attrs["codec"] = "flac"
    blobs = []
    offsets = np.zeros(n_chunks + 1, dtype=np.int64)
    for i in range(n_chunks):
        buf = io.BytesIO()
        sf.write(buf, clipped[i * chunk_samples:(i + 1) * chunk_samples], sr, format="FLAC", subtype=storage)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
        offsets[i + 1] = offsets[i] + blobs[-1].size
        if progress:
            progress(i + 1, n_chunks)
    data = np.concatenate(blobs)
    group.create_dataset("data", data=data, chunks=(min(1 << 18, data.size),), track_times=False)
    group.create_dataset("offsets", data=offsets, track_times=False)


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
                created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
            _encode_audio(f.create_group("audio"), samples, sr, subtype, chunk_samples, progress)
    return Path(path)


# ----------------------------------------------------------------------------- reading
class BundleAudio:
    """Random access to X's audio in a bundle, decoding only the chunks asked for.

    Memory stays bounded by a small cache of decoded chunks, so a 40-minute concerto never
    needs to be decoded whole. Thread-safe (one lock around file access).
    """

    def __init__(self, path: Path, attrs: dict, cache_chunks: int = 4) -> None:
        self.path = path
        self.codec = str(attrs["codec"])
        self.sr = int(attrs["sr"])
        self.channels = int(attrs["channels"])
        self.n_samples = int(attrs["n_samples"])
        self.chunk_samples = int(attrs["chunk_samples"])
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_chunks = cache_chunks
        self._lock = threading.Lock()
        self._file: h5py.File | None = None

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sr

    def _h5(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _chunk(self, index: int) -> np.ndarray:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        start = index * self.chunk_samples
        expect = min(self.chunk_samples, self.n_samples - start)
        try:
            group = self._h5()["audio"]
            if self.codec == "flac":
                lo, hi = (int(v) for v in group["offsets"][index:index + 2])
                blob = group["data"][lo:hi].tobytes()
                block, _ = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
            else:
                raw = group["data"][start:start + expect]
                scale = 2.0**15 if raw.dtype == np.int16 else 2.0**23
                block = raw.astype(np.float32) / np.float32(scale)
        except (OSError, RuntimeError, sf.LibsndfileError, ValueError) as exc:
            raise BundleError(f"bundle {self.path.name}: audio chunk {index} is unreadable ({exc})") from None
        if block.shape != (expect, self.channels):
            raise BundleError(f"bundle {self.path.name}: audio chunk {index} has shape {block.shape}, expected {(expect, self.channels)}")
        self._cache[index] = block
        if len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return block

    def read(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Samples ``[start, start + n)`` as float32 ``(n, channels)``; zeros outside the file."""
        if out is None:
            out = np.zeros((n, self.channels), dtype=np.float32)
        else:
            out[:] = 0.0
        lo, hi = max(start, 0), min(start + n, self.n_samples)
        with self._lock:
            pos = lo
            while pos < hi:
                index = pos // self.chunk_samples
                block = self._chunk(index)
                c0 = pos - index * self.chunk_samples
                take = min(hi - pos, block.shape[0] - c0)
                out[pos - start:pos - start + take] = block[c0:c0 + take]
                pos += take
        return out

    def read_all(self) -> np.ndarray:
        """The whole recording (for tests and short pieces)."""
        return self.read(0, self.n_samples)


@dataclass
class Bundle:
    """A validated bundle, with the arrays the player keeps in memory (templates as 8-bit codes)."""

    path: Path
    params: AnalysisParams
    source: SourceInfo
    attrs: dict
    state_mag: np.ndarray
    onsets: np.ndarray
    onset_bank: np.ndarray
    templates: QuantizedTemplates
    nmf: NMFBases
    audio: BundleAudio

    @property
    def n_states(self) -> int:
        return self.templates.n_states

    @property
    def duration_s(self) -> float:
        return self.audio.duration_s

    def close(self) -> None:
        self.audio.close()

    def __enter__(self) -> "Bundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fail(path: Path, message: str) -> BundleError:
    return BundleError(f"invalid bundle {path.name}: {message}")


def _check_tree(f: h5py.File, path: Path) -> None:
    """Refuse links, virtual datasets, object/compound dtypes and unknown filters."""

    def walk(group: h5py.Group, prefix: str) -> None:
        for name in group:
            link = group.get(name, getlink=True)
            where = f"{prefix}/{name}"
            if isinstance(link, h5py.ExternalLink):
                raise _fail(path, f"{where} is an external link (refused: bundles must be self-contained)")
            if isinstance(link, h5py.SoftLink):
                raise _fail(path, f"{where} is a soft link (refused)")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                walk(obj, where)
                continue
            if not isinstance(obj, h5py.Dataset):
                raise _fail(path, f"{where} is not a dataset or group")
            if obj.is_virtual:
                raise _fail(path, f"{where} is a virtual dataset (refused)")
            if obj.dtype.kind not in "iuf" or obj.dtype.names is not None:
                raise _fail(path, f"{where} has dtype {obj.dtype} (only plain numbers are allowed)")
            if obj.compression not in ALLOWED_FILTERS:
                raise _fail(path, f"{where} uses an unsupported filter ({obj.compression})")
            if obj.external:
                raise _fail(path, f"{where} stores its data in external files (refused)")
            for key, value in obj.attrs.items():
                _check_attr(path, f"{where}@{key}", value)
        for key, value in group.attrs.items():
            _check_attr(path, f"{prefix or '/'}@{key}", value)

    walk(f, "")


def _check_attr(path: Path, where: str, value) -> None:
    if isinstance(value, (str, bytes, int, float, np.integer, np.floating)):
        return
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf" and value.size <= 1024:
        return
    raise _fail(path, f"attribute {where} has an unsupported type ({type(value).__name__})")


def _dataset(f: h5py.File, path: Path, name: str, kinds: str, shape: tuple | None = None) -> h5py.Dataset:
    if name not in f:
        raise _fail(path, f"missing dataset /{name}")
    dset = f[name]
    if not isinstance(dset, h5py.Dataset):
        raise _fail(path, f"/{name} is not a dataset")
    if dset.dtype.kind not in kinds:
        raise _fail(path, f"/{name} has dtype {dset.dtype}, expected {'float' if kinds == 'f' else 'integer'}")
    if shape is not None:
        if len(dset.shape) != len(shape) or any(s is not None and s != d for s, d in zip(shape, dset.shape)):
            want = tuple("*" if s is None else s for s in shape)
            raise _fail(path, f"/{name} has shape {dset.shape}, expected {want}")
    return dset


def _finite(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        raise _fail(path, f"/{name} contains NaN or infinite values")
    return array


def _read_attrs(f: h5py.File, path: Path) -> dict:
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    if attrs.get("format") != FORMAT_NAME:
        raise _fail(path, "not a follow-me karaoke bundle (format attribute missing); build one with 'prep build'")
    version = attrs.get("format_version")
    if not isinstance(version, (int, np.integer)):
        raise _fail(path, "format_version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise _fail(path, f"format version {version} is newer than this tool supports ({FORMAT_VERSION}); update the software")
    if version < FORMAT_VERSION:
        raise _fail(path, f"format version {version} is older than this tool supports ({FORMAT_VERSION}); rebuild it with 'prep build'")
    for key, kind in (("source_name", str), ("source_sha256", str), ("source_duration_s", (float, np.floating))):
        if not isinstance(attrs.get(key), kind):
            raise _fail(path, f"root attribute {key} is missing or has the wrong type")
    return attrs


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
            return _load_validated(f, path)
    except BundleError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise BundleError(f"{path.name} is damaged and cannot be read ({str(exc).splitlines()[0][:120]})") from None


def _load_validated(f: h5py.File, path: Path) -> Bundle:
    attrs = _read_attrs(f, path)
    _check_tree(f, path)
    if "params" not in f:
        raise _fail(path, "missing group /params")
    try:
        params = AnalysisParams.from_dict(dict(f["params"].attrs))
    except (ValueError, TypeError) as exc:
        raise _fail(path, str(exc)) from None
    missing = [k for k in AnalysisParams.__dataclass_fields__ if k not in f["params"].attrs]
    if missing:
        raise _fail(path, f"/params lacks {', '.join(missing)}")

    n_det, n_bins, n_obs = len(params.detune_cents), params.n_bins, params.n_obs_bins
    coarse = _dataset(f, path, "spectra/coarse", "f", (None, n_bins))
    n_states = coarse.shape[0]
    if not 2 <= n_states <= MAX_STATES:
        raise _fail(path, f"{n_states} states (2..{MAX_STATES} allowed)")
    if n_bins > MAX_BINS:
        raise _fail(path, f"{n_bins} frequency bins (at most {MAX_BINS})")
    templ = _dataset(f, path, "templates/log_obs", "u", (n_det, n_states, n_obs))
    if templ.dtype != np.uint8:
        raise _fail(path, f"/templates/log_obs has dtype {templ.dtype}, expected uint8")
    t_offset, t_step = templ.attrs.get("offset"), templ.attrs.get("step")
    if not all(isinstance(v, (float, np.floating)) and np.isfinite(v) for v in (t_offset, t_step)):
        raise _fail(path, "/templates/log_obs lacks finite offset/step attributes")
    if not (-100.0 <= t_offset < 0.0 and 0.0 < t_step and t_offset + 255 * t_step <= 1e-3):
        raise _fail(path, "/templates/log_obs offset/step give positive or absurd log-probabilities")
    cents = _dataset(f, path, "templates/detune_cents", "f", (n_det,))
    if not np.allclose(cents[()], params.detune_cents):
        raise _fail(path, "templates/detune_cents disagree with /params")
    w_shape = _dataset(f, path, "nmf/w_shape", "f", (None, n_bins))
    n_comp = w_shape.shape[0]
    if not 1 <= n_comp <= MAX_COMPONENTS:
        raise _fail(path, f"{n_comp} NMF components (1..{MAX_COMPONENTS} allowed)")
    w_rate = _dataset(f, path, "nmf/w_rate", "f", (n_comp, n_bins))
    trace = _dataset(f, path, "nmf/bound_trace", "f", (None,))
    nmf_attrs = dict(f["nmf"].attrs)
    priors = {}
    for key in ("a", "b", "c", "d"):
        value = nmf_attrs.get(key)
        if not isinstance(value, (float, np.floating)) or not (0 < value < 1e6):
            raise _fail(path, f"/nmf attribute {key} is missing or out of range")
        priors[key] = float(value)

    data_scale = nmf_attrs.get("data_scale")
    if not isinstance(data_scale, (float, np.floating)) or not (0 < data_scale < 1e12):
        raise _fail(path, "/nmf attribute data_scale is missing or out of range")
    audio_attrs = _audio_attrs(f, path)
    state_mag = _finite(path, "spectra/coarse", coarse[()])
    templates = QuantizedTemplates(q=templ[()], offset=float(t_offset), step=float(t_step))
    if (state_mag < 0).any():
        raise _fail(path, "spectra/coarse has negative magnitudes")
    ws, wr = _finite(path, "nmf/w_shape", w_shape[()]), _finite(path, "nmf/w_rate", w_rate[()])
    if (ws <= 0).any() or (wr <= 0).any():
        raise _fail(path, "nmf parameters must be positive")
    duration = audio_attrs["n_samples"] / audio_attrs["sr"]
    expected_states = int(round(duration * params.sr)) // params.coarse_hop + 1
    if abs(expected_states - n_states) > 2:
        raise _fail(path, f"{n_states} states do not match the audio's duration ({expected_states} expected)")
    onsets = _dataset(f, path, "spectra/onsets", "f", (None,))
    expected_frames = int(round(duration * params.sr)) // params.fine_hop + 1
    if abs(onsets.shape[0] - expected_frames) > 2 * params.fine_per_coarse:
        raise _fail(path, f"/spectra/onsets has {onsets.shape[0]} frames, the audio's duration gives {expected_frames}")
    onsets = _finite(path, "spectra/onsets", onsets[()]).astype(np.float32)
    if (onsets < 0).any() or (onsets > 1).any():
        raise _fail(path, "/spectra/onsets has values outside [0, 1]")
    bank = _finite(path, "spectra/onset_bank",
                   _dataset(f, path, "spectra/onset_bank", "f", (params.onset_bands, n_bins))[()]).astype(np.float32)
    if (bank < 0).any() or (bank > 1.0).any():
        raise _fail(path, "/spectra/onset_bank has weights outside [0, 1]")
    return Bundle(
        path=path,
        params=params,
        source=SourceInfo(attrs["source_name"], attrs["source_sha256"], float(attrs["source_duration_s"])),
        attrs=attrs,
        state_mag=state_mag,
        onsets=onsets,
        onset_bank=bank,
        templates=templates,
        nmf=NMFBases(ws, wr, priors, int(nmf_attrs.get("n_iter", 0)), _finite(path, "nmf/bound_trace", trace[()]),
                     float(data_scale)),
        audio=BundleAudio(path, audio_attrs),
    )


def _audio_attrs(f: h5py.File, path: Path) -> dict:
    if "audio" not in f or not isinstance(f["audio"], h5py.Group):
        raise _fail(path, "missing group /audio")
    raw = dict(f["audio"].attrs)
    out = {}
    for key, lo, hi in (("sr", 1000, MAX_SAMPLE_RATE), ("channels", 1, MAX_CHANNELS),
                        ("n_samples", 1, MAX_AUDIO_SAMPLES), ("chunk_samples", 1024, MAX_CHUNK_SAMPLES)):
        value = raw.get(key)
        if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
            raise _fail(path, f"/audio attribute {key} is missing or out of range ({lo}..{hi})")
        out[key] = int(value)
    codec = raw.get("codec")
    codec = codec.decode() if isinstance(codec, bytes) else codec
    if codec not in ("flac", "pcm"):
        raise _fail(path, f"/audio codec {codec!r} is not supported")
    out["codec"] = codec
    n_chunks = -(-out["n_samples"] // out["chunk_samples"])
    if codec == "flac":
        if out["channels"] > FLAC_MAX_CHANNELS:
            raise _fail(path, "FLAC audio with more than 8 channels")
        data = _dataset(f, path, "audio/data", "u", (None,))
        offsets = _dataset(f, path, "audio/offsets", "i", (n_chunks + 1,))[()]
        if offsets[0] != 0 or (np.diff(offsets) <= 0).any() or offsets[-1] != data.shape[0]:
            raise _fail(path, "/audio/offsets are inconsistent with /audio/data")
    else:
        _dataset(f, path, "audio/data", "i", (out["n_samples"], out["channels"]))
    return out
