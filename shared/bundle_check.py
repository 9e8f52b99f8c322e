"""Validation of untrusted bundles: everything is checked before anything is used.

Bundles are shared between people, so a bundle is hostile until proven otherwise:
:func:`read_validated` refuses links, virtual datasets, object/variable-length data and
unknown filters, checks every dtype and shape against the parameters, bounds every size,
and checks values are finite. Every failure is a ``BundleError`` naming the first problem.

Nothing large is read before it is known to be the size the parameters say: the declared
bytes of every dataset and of every storage chunk are bounded first, the number of states
and frames cross-checked against the audio's duration, and only then is data read, so a
small file declaring huge datasets costs nothing. This runs in a sandboxed child process
(:mod:`shared.sandbox`, called by :func:`shared.bundle.load_bundle`): libhdf5 itself can
hang or allocate without bound on a corrupted file, which no check written here can stop.
"""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from shared.audio_store import FLAC_MAX_CHANNELS, BundleAudio
from shared.bundle_schema import (
    ALLOWED_FILTERS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_AUDIO_SAMPLES,
    MAX_BINS,
    MAX_CHANNELS,
    MAX_CHUNK_SAMPLES,
    MAX_COMPONENTS,
    MAX_LOADED_BYTES,
    MAX_NMF_ITER,
    MAX_SAMPLE_RATE,
    MAX_STATES,
    MAX_STORAGE_CHUNK_BYTES,
    MAX_TEXT,
    Bundle,
    NMFBases,
    SourceInfo,
)
from shared.errors import BundleError
from shared.spectral import AnalysisParams, QuantizedTemplates, frame_power

#: FLAC never takes much more room than the PCM it codes; allow this many bytes per
#: sample and channel (plus a header per chunk) before calling /audio/data absurd.
_FLAC_BYTES_PER_SAMPLE = 4
_FLAC_CHUNK_OVERHEAD = 1 << 16
#: States of /spectra/coarse read (and checked) at a time.
_COARSE_ROWS = 1024


def file_identity(path: Path) -> tuple:
    """``(device, inode, size, mtime_ns)``: the file checked is the file read later."""
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _fail(path: Path, message: str) -> BundleError:
    return BundleError(f"invalid bundle {path.name}: {message}")


def _check_tree(f: h5py.File, path: Path) -> None:
    """Refuse links, virtual datasets, object/compound dtypes, unknown filters, storage
    chunks too large to decompress safely, and more declared bytes than a bundle may load."""
    loaded = 0

    def walk(group: h5py.Group, prefix: str) -> None:
        nonlocal loaded
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
            item = obj.dtype.itemsize
            if obj.chunks is not None and math.prod(obj.chunks) * item > MAX_STORAGE_CHUNK_BYTES:
                raise _fail(path, f"{where} is stored in chunks of {math.prod(obj.chunks) * item >> 20} MB "
                                  f"(at most {MAX_STORAGE_CHUNK_BYTES >> 20} MB)")
            if not where.startswith("/audio/"):
                loaded += math.prod(obj.shape) * item
                if loaded > MAX_LOADED_BYTES:
                    raise _fail(path, f"its arrays declare more than {MAX_LOADED_BYTES >> 20} MB")
            for key, value in obj.attrs.items():
                _check_attr(path, f"{where}@{key}", value)
        for key, value in group.attrs.items():
            _check_attr(path, f"{prefix or '/'}@{key}", value)

    walk(f, "")


def _check_attr(path: Path, where: str, value) -> None:
    if isinstance(value, (str, bytes)):
        if len(value) > MAX_TEXT:
            raise _fail(path, f"attribute {where} is longer than {MAX_TEXT} characters")
        return
    if isinstance(value, (int, float, np.integer, np.floating)):
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
        if len(dset.shape) != len(shape) or any(s is not None and s != d for s, d in zip(shape, dset.shape, strict=True)):
            want = tuple("*" if s is None else s for s in shape)
            raise _fail(path, f"/{name} has shape {dset.shape}, expected {want}")
    return dset


def _finite(path: Path, name: str, array: np.ndarray) -> np.ndarray:
    if not np.isfinite(array).all():
        raise _fail(path, f"/{name} contains NaN or infinite values")
    return array


def _number(path: Path, where: str, value, lo: float, hi: float, integer: bool = False) -> float:
    """``value`` as a float, if it is a finite number within ``[lo, hi]`` (and whole)."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds) or not lo <= float(value) <= hi:
        raise _fail(path, f"{where} is missing or out of range ({lo:g}..{hi:g})")
    return float(value)


def _read_attrs(f: h5py.File, path: Path) -> dict:
    attrs = {k: (v.decode(errors="replace") if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    if attrs.get("format") != FORMAT_NAME:
        raise _fail(path, "not a follow-me karaoke bundle (format attribute missing); build one with 'prep build'")
    version = attrs.get("format_version")
    if not isinstance(version, (int, np.integer)):
        raise _fail(path, "format_version is missing or not an integer")
    if version > FORMAT_VERSION:
        raise _fail(path, f"format version {version} is newer than this tool supports ({FORMAT_VERSION}); update the software")
    if version < FORMAT_VERSION:
        raise _fail(path, f"format version {version} is older than this tool supports ({FORMAT_VERSION}); "
                          "rebuild it with 'prep build'")
    for key in ("source_name", "source_sha256"):
        if not isinstance(attrs.get(key), str) or len(attrs[key]) > MAX_TEXT:
            raise _fail(path, f"root attribute {key} is missing or has the wrong type")
    for key in ("created_utc", "tool_version"):
        if key in attrs and not isinstance(attrs[key], str):
            raise _fail(path, f"root attribute {key} has the wrong type")
    if not isinstance(attrs.get("source_duration_s"), (float, np.floating)):
        raise _fail(path, "root attribute source_duration_s is missing or has the wrong type")
    _number(path, "root attribute source_duration_s", attrs["source_duration_s"], 0.0, MAX_AUDIO_SAMPLES / 1000)
    return attrs


def read_validated(f: h5py.File, path: Path, spectra: bool = True) -> Bundle:
    """The bundle in the open file ``f`` (named ``path``), validated; raises ``BundleError``.
    Its audio is not read: ``Bundle.audio`` reads it a chunk at a time, later, from the
    file identified as the one checked here. Without ``spectra`` the coarse spectra are
    not returned (they are the bundle's largest array after the templates, and the player
    needs only their power): not read at all when the bundle stores that power
    (``/spectra/power``), else read and checked a chunk at a time for it. The stored power
    is not checked against the spectra (a hostile value misleads only the silent-state
    estimate, as hostile templates would mislead the following).

    Order matters: attributes and structure first, then every shape against the parameters
    and the audio's duration, and only then the data (see the module docstring).
    """
    attrs = _read_attrs(f, path)
    _check_tree(f, path)
    if "params" not in f or not isinstance(f["params"], h5py.Group):
        raise _fail(path, "missing group /params")
    try:
        params = AnalysisParams.from_dict(dict(f["params"].attrs))
    except (ValueError, TypeError) as exc:
        raise _fail(path, str(exc)) from None
    missing = [k for k in AnalysisParams.__dataclass_fields__ if k not in f["params"].attrs]
    if missing:
        raise _fail(path, f"/params lacks {', '.join(missing)}")
    audio_attrs = _audio_attrs(f, path)
    duration = audio_attrs["n_samples"] / audio_attrs["sr"]
    if abs(float(attrs["source_duration_s"]) - duration) > 0.05:
        raise _fail(path, f"source_duration_s={float(attrs['source_duration_s']):.3f} s disagrees with its audio "
                          f"({duration:.3f} s)")

    # Shapes, all cross-checked before any data is read.
    n_det, n_bins, n_obs = len(params.detune_cents), params.n_bins, params.n_obs_bins
    if n_bins > MAX_BINS:
        raise _fail(path, f"{n_bins} frequency bins (at most {MAX_BINS})")
    coarse = _dataset(f, path, "spectra/coarse", "f", (None, n_bins))
    n_states = coarse.shape[0]
    if not 2 <= n_states <= MAX_STATES:
        raise _fail(path, f"{n_states} states (2..{MAX_STATES} allowed)")
    expected_states = int(round(duration * params.sr)) // params.coarse_hop + 1
    if abs(expected_states - n_states) > 2:
        raise _fail(path, f"{n_states} states do not match the audio's duration ({expected_states} expected)")
    # each state's power (prep writes it; a bundle of an older prep lacks it: computed)
    stored_power = _dataset(f, path, "spectra/power", "f", (n_states,)) if "spectra/power" in f else None
    onsets = _dataset(f, path, "spectra/onsets", "f", (None,))
    expected_frames = int(round(duration * params.sr)) // params.fine_hop + 1
    if abs(onsets.shape[0] - expected_frames) > 2 * params.fine_per_coarse:
        raise _fail(path, f"/spectra/onsets has {onsets.shape[0]} frames, the audio's duration gives {expected_frames}")
    bank = _dataset(f, path, "spectra/onset_bank", "f", (params.onset_bands, n_bins))
    templ = _dataset(f, path, "templates/log_obs", "u", (n_det, n_states, n_obs))
    if templ.dtype != np.uint8:
        raise _fail(path, f"/templates/log_obs has dtype {templ.dtype}, expected uint8")
    t_offset, t_step = templ.attrs.get("offset"), templ.attrs.get("step")
    if not all(isinstance(v, (float, np.floating)) and np.isfinite(v) for v in (t_offset, t_step)):
        raise _fail(path, "/templates/log_obs lacks finite offset/step attributes")
    if not (-100.0 <= t_offset < 0.0 and 0.0 < t_step and t_offset + 255 * t_step <= 1e-3):
        raise _fail(path, "/templates/log_obs offset/step give positive or absurd log-probabilities")
    cents = _dataset(f, path, "templates/detune_cents", "f", (n_det,))
    w_shape = _dataset(f, path, "nmf/w_shape", "f", (None, n_bins))
    n_comp = w_shape.shape[0]
    if not 1 <= n_comp <= MAX_COMPONENTS:
        raise _fail(path, f"{n_comp} NMF components (1..{MAX_COMPONENTS} allowed)")
    w_rate = _dataset(f, path, "nmf/w_rate", "f", (n_comp, n_bins))
    nmf_attrs = dict(f["nmf"].attrs)
    n_iter = int(_number(path, "/nmf attribute n_iter", nmf_attrs.get("n_iter"), 1, MAX_NMF_ITER, integer=True))
    trace = _dataset(f, path, "nmf/bound_trace", "f", (None,))
    if trace.shape[0] > n_iter + 1:
        raise _fail(path, f"/nmf/bound_trace has {trace.shape[0]} values for {n_iter} iterations")
    priors = {key: _number(path, f"/nmf attribute {key}", nmf_attrs.get(key), 1e-300, 1e6) for key in "abcd"}
    data_scale = _number(path, "/nmf attribute data_scale", nmf_attrs.get("data_scale"), 1e-300, 1e12)

    # Data, now that every size is known to be what the parameters say.
    if not np.allclose(cents[()], params.detune_cents):
        raise _fail(path, "templates/detune_cents disagree with /params")
    state_mag = np.empty(coarse.shape, dtype=coarse.dtype) if spectra else None
    state_power = np.empty(n_states)
    if stored_power is not None:
        state_power[:] = _finite(path, "spectra/power", stored_power[()])
        if (state_power < 0).any():
            raise _fail(path, "spectra/power has negative values")
    if spectra or stored_power is None:  # (the player needs the power alone)
        for a in range(0, n_states, _COARSE_ROWS):
            rows = _finite(path, "spectra/coarse", coarse[a:a + _COARSE_ROWS])
            if (rows < 0).any():
                raise _fail(path, "spectra/coarse has negative magnitudes")
            if stored_power is None:
                state_power[a:a + rows.shape[0]] = frame_power(rows)
            if state_mag is not None:
                state_mag[a:a + rows.shape[0]] = rows
    templates = QuantizedTemplates(q=templ[()], offset=float(t_offset), step=float(t_step))
    ws, wr = _finite(path, "nmf/w_shape", w_shape[()]), _finite(path, "nmf/w_rate", w_rate[()])
    if (ws <= 0).any() or (wr <= 0).any():
        raise _fail(path, "nmf parameters must be positive")
    onsets = _finite(path, "spectra/onsets", onsets[()]).astype(np.float32)
    if (onsets < 0).any() or (onsets > 1).any():
        raise _fail(path, "/spectra/onsets has values outside [0, 1]")
    bank = _finite(path, "spectra/onset_bank", bank[()]).astype(np.float32)
    if (bank < 0).any() or (bank > 1.0).any():
        raise _fail(path, "/spectra/onset_bank has weights outside [0, 1]")
    return Bundle(
        path=path,
        params=params,
        source=SourceInfo(attrs["source_name"], attrs["source_sha256"], float(attrs["source_duration_s"])),
        attrs=attrs,
        state_mag=state_mag,
        state_power=state_power,
        onsets=onsets,
        onset_bank=bank,
        templates=templates,
        nmf=NMFBases(ws, wr, priors, n_iter, _finite(path, "nmf/bound_trace", trace[()]), data_scale),
        audio=BundleAudio(path, audio_attrs, identity=file_identity(path)),
        music_start_s=audio_attrs.get("music_start_s"),
    )


def _audio_attrs(f: h5py.File, path: Path) -> dict:
    """The audio's attributes, its datasets' shapes and its chunk index, checked."""
    if "audio" not in f or not isinstance(f["audio"], h5py.Group):
        raise _fail(path, "missing group /audio")
    raw = dict(f["audio"].attrs)
    out = {}
    for key, lo, hi in (("sr", 1000, MAX_SAMPLE_RATE), ("channels", 1, MAX_CHANNELS),
                        ("n_samples", 1, MAX_AUDIO_SAMPLES), ("chunk_samples", 1024, MAX_CHUNK_SAMPLES)):
        out[key] = int(_number(path, f"/audio attribute {key}", raw.get(key), lo, hi, integer=True))
    if out["n_samples"] / out["sr"] > MAX_AUDIO_SAMPLES / MAX_SAMPLE_RATE:
        raise _fail(path, f"its audio lasts {out['n_samples'] / out['sr'] / 3600:.1f} h "
                          f"(at most {MAX_AUDIO_SAMPLES / MAX_SAMPLE_RATE / 3600:.0f} h)")
    if "music_start_s" in raw:  # prep stores it; a bundle of an older prep lacks it (the player computes it)
        out["music_start_s"] = _number(path, "/audio attribute music_start_s", raw["music_start_s"], 0.0,
                                       out["n_samples"] / out["sr"])
    codec = raw.get("codec")
    codec = codec.decode(errors="replace") if isinstance(codec, bytes) else codec
    if codec not in ("flac", "pcm"):
        raise _fail(path, f"/audio codec {codec!r} is not supported")
    out["codec"] = codec
    n_chunks = -(-out["n_samples"] // out["chunk_samples"])
    if codec == "flac":
        if out["channels"] > FLAC_MAX_CHANNELS:
            raise _fail(path, "FLAC audio with more than 8 channels")
        data = _dataset(f, path, "audio/data", "u", (None,))
        if data.dtype != np.uint8:
            raise _fail(path, f"/audio/data has dtype {data.dtype}, expected uint8")
        most = out["n_samples"] * out["channels"] * _FLAC_BYTES_PER_SAMPLE + n_chunks * _FLAC_CHUNK_OVERHEAD
        if data.shape[0] > most:
            raise _fail(path, f"/audio/data holds {data.shape[0]} bytes for {out['n_samples']} samples (at most {most})")
        offsets = _dataset(f, path, "audio/offsets", "i", (n_chunks + 1,))[()]
        if offsets[0] != 0 or (np.diff(offsets) <= 0).any() or offsets[-1] != data.shape[0]:
            raise _fail(path, "/audio/offsets are inconsistent with /audio/data")
        if int(np.diff(offsets).max()) > MAX_STORAGE_CHUNK_BYTES:
            raise _fail(path, f"an audio chunk holds more than {MAX_STORAGE_CHUNK_BYTES >> 20} MB")
    else:
        data = _dataset(f, path, "audio/data", "i", (out["n_samples"], out["channels"]))
    _check_chunk_index(data, path)
    return out


def _check_chunk_index(dset: h5py.Dataset, path: Path) -> None:
    """Walk the audio's chunk index here, in the sandbox, so the player's later reads of
    it (outside the sandbox) parse nothing new: every chunk written, inside the file."""
    if dset.chunks is None:
        return
    size = path.stat().st_size
    expected = math.prod(-(-n // c) for n, c in zip(dset.shape, dset.chunks, strict=True))
    if dset.id.get_num_chunks() != expected:
        raise _fail(path, f"/audio/data stores {dset.id.get_num_chunks()} chunks, its shape needs {expected}")
    ends = []
    dset.id.chunk_iter(lambda info: ends.append(info.byte_offset + info.size))
    if len(ends) != expected or max(ends, default=0) > size:
        raise _fail(path, "/audio/data's chunk index points outside the file")
