"""X's audio inside a bundle: written in chunks, decoded on demand.

The recording is stored losslessly in chunks of ``chunk_samples`` frames: each chunk one
FLAC stream (concatenated in ``/audio/data``, byte offsets in ``/audio/offsets``), or, for
more than 8 channels (FLAC's limit), integer PCM with gzip. :func:`encode_audio` writes
them as the audio streams in, a chunk at a time. :class:`BundleAudio` reads any
range by decoding only the chunks it touches, through a small cache, so memory stays
bounded whatever the recording's length.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf

from shared.audio import ChunkedAudio, music_start_s
from shared.errors import BundleError

#: FLAC holds at most this many channels; more are stored as gzip'd integer PCM.
FLAC_MAX_CHANNELS = 8
DEFAULT_CHUNK_SAMPLES = 1 << 16


def storage_subtype(subtype: str) -> str:
    """Integer PCM up to 16 bits is kept at 16 bits, everything else at 24 bits.

    Lossless for 8/16/24-bit PCM sources; float and already-compressed sources (OGG, MP3)
    are stored at 24 bits, whose rounding error (-144 dBFS) is far below any audible level.
    """
    return "PCM_16" if subtype in ("PCM_16", "PCM_S8", "PCM_U8", "ULAW", "ALAW") else "PCM_24"


#: Bytes of FLAC data per HDF5 storage chunk of ``/audio/data`` (written a whole one at a time).
FLAC_DATA_CHUNK = 1 << 18
#: Largest value stored: integer PCM cannot hold +1.0 itself.
_FULL_SCALE = 1.0 - 2.0**-23


def rechunk(blocks: Iterable[np.ndarray], chunk_samples: int, n_samples: int) -> Iterator[np.ndarray]:
    """Re-cut a stream of ``(n_i, channels)`` blocks of any lengths into chunks of exactly
    ``chunk_samples`` frames (the last one shorter), ``n_samples`` frames in all; holds at
    most one chunk and one block.

    Raises:
        ValueError: the blocks do not add up to ``n_samples``.
    """
    pieces: list[np.ndarray] = []
    held = done = 0
    for block in blocks:
        pieces.append(block)
        held += block.shape[0]
        while held >= chunk_samples:
            joined = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
            yield joined[:chunk_samples]
            pieces, held, done = [joined[chunk_samples:]], held - chunk_samples, done + chunk_samples
    if held:
        yield np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    if done + held != n_samples:
        raise ValueError(f"audio stream of {done + held} frames, {n_samples} announced")


def encode_audio(group: h5py.Group, blocks: Iterable[np.ndarray], n_samples: int, channels: int, sr: int,
                 subtype: str, chunk_samples: int, progress: Callable[[int, int], None] | None) -> None:
    """Store X's audio losslessly in ``group``, streamed: memory holds one chunk, never the
    recording.

    Args:
        group: the bundle's ``/audio`` group (empty).
        blocks: float32 ``(n_i, channels)`` blocks of any lengths, ``n_samples`` frames in
            all (e.g. :func:`shared.audio.read_blocks`); samples beyond full scale are clipped.
        n_samples, channels, sr: the audio's length (frames), channels and rate (Hz).
        subtype: the source's soundfile subtype (decides 16- or 24-bit storage).
        chunk_samples: frames per stored chunk.
        progress: called as ``progress(done_chunks, total_chunks)``.
    """
    storage = storage_subtype(subtype)
    n_chunks = max(1, -(-n_samples // chunk_samples))
    group.attrs.update(sr=int(sr), channels=int(channels), n_samples=int(n_samples),
                       chunk_samples=int(chunk_samples), subtype=storage)
    if channels > FLAC_MAX_CHANNELS:
        # FLAC holds at most 8 channels: store integer PCM with lossless gzip instead.
        group.attrs["codec"] = "pcm"
        scale, dtype = (2**15, np.int16) if storage == "PCM_16" else (2**23, np.int32)
        dset = group.create_dataset("data", shape=(n_samples, channels), dtype=dtype,
                                    chunks=(min(chunk_samples, n_samples), channels),
                                    compression="gzip", shuffle=True, track_times=False)
        for i, chunk in enumerate(rechunk(blocks, chunk_samples, n_samples)):
            start = i * chunk_samples
            dset[start:start + chunk.shape[0]] = np.round(np.clip(chunk, -1.0, _FULL_SCALE) * scale).astype(dtype)
            if progress:
                progress(i + 1, n_chunks)
        _store_music_start(group)
        return
    group.attrs["codec"] = "flac"
    data = group.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.uint8, chunks=(FLAC_DATA_CHUNK,),
                                track_times=False)
    offsets = np.zeros(n_chunks + 1, dtype=np.int64)
    pending = bytearray()  # encoded bytes not yet written (less than one storage chunk after each write)
    for i, chunk in enumerate(rechunk(blocks, chunk_samples, n_samples)):
        buf = io.BytesIO()
        sf.write(buf, np.clip(chunk, -1.0, _FULL_SCALE), sr, format="FLAC", subtype=storage)
        pending += buf.getbuffer()
        offsets[i + 1] = offsets[i] + buf.getbuffer().nbytes
        whole = len(pending) // FLAC_DATA_CHUNK * FLAC_DATA_CHUNK
        if whole:
            _append(data, pending[:whole])
            del pending[:whole]
        if progress:
            progress(i + 1, n_chunks)
    _append(data, pending)
    group.create_dataset("offsets", data=offsets, track_times=False)
    _store_music_start(group)


def _store_music_start(group: h5py.Group) -> None:
    """Where the music starts (:func:`shared.audio.music_start_s`), computed from the audio
    as stored and decoded (the player's own samples), kept as ``/audio`` attribute
    ``music_start_s``: the player need not decode the opening at start-up."""
    group.attrs["music_start_s"] = music_start_s(GroupAudio(group))


def _append(dset: h5py.Dataset, data: bytes | bytearray) -> None:
    """Append bytes to a resizable uint8 dataset ``(n,)``."""
    if data:
        start = dset.shape[0]
        dset.resize((start + len(data),))
        dset[start:] = np.frombuffer(data, dtype=np.uint8)


class BundleAudio(ChunkedAudio):
    """Random access to X's audio in a bundle, decoding only the chunks asked for (a
    :class:`shared.audio.ChunkedAudio`: memory stays bounded by a small cache of decoded
    chunks, so a 40-minute concerto never needs to be decoded whole; thread-safe).
    """

    def __init__(self, path: Path, attrs: dict, cache_chunks: int = 4, identity: tuple | None = None) -> None:
        super().__init__(int(attrs["sr"]), int(attrs["channels"]), int(attrs["n_samples"]),
                         int(attrs["chunk_samples"]), cache_chunks)
        self.path = path
        self.codec = str(attrs["codec"])
        self.identity = identity
        self._attrs = dict(attrs)
        self._file: h5py.File | None = None

    def __reduce__(self):
        """Pickled as what opens it again (the loader's sandbox sends it to the parent):
        no lock, no cache, no open file."""
        return (BundleAudio, (self.path, self._attrs, self._cache_chunks, self.identity))

    def _h5(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
            if self.identity is not None:
                # The file validated (in the loader's sandbox) must be the one read now.
                st = os.fstat(self._file.id.get_vfd_handle())
                if (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) != tuple(self.identity):
                    self._file.close()
                    self._file = None
                    raise BundleError(f"bundle {self.path.name} changed since it was loaded; load it again")
        return self._file

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _decode(self, index: int) -> np.ndarray:
        try:
            return decode_chunk(self._h5()["audio"], index, self.codec, self.chunk_samples, self.n_samples,
                                self.channels)
        except (OSError, RuntimeError, sf.LibsndfileError, ValueError) as exc:
            raise BundleError(f"bundle {self.path.name}: audio chunk {index} is unreadable ({exc})") from None


class GroupAudio(ChunkedAudio):
    """Random access to the audio of an open bundle's ``/audio`` group (prep reads back what
    it has just stored, with the player's own decoding)."""

    def __init__(self, group: h5py.Group) -> None:
        a = group.attrs
        super().__init__(int(a["sr"]), int(a["channels"]), int(a["n_samples"]), int(a["chunk_samples"]))
        self._group = group
        self.codec = str(a["codec"])

    def _decode(self, index: int) -> np.ndarray:
        return decode_chunk(self._group, index, self.codec, self.chunk_samples, self.n_samples, self.channels)


def decode_chunk(group: h5py.Group, index: int, codec: str, chunk_samples: int, n_samples: int,
                 channels: int) -> np.ndarray:
    """Chunk ``index`` of the audio stored in ``group`` (a bundle's ``/audio``): float32
    ``(min(chunk_samples, n_samples - index * chunk_samples), channels)``.

    Raises:
        ValueError: the chunk decodes to another shape (or cannot be decoded by soundfile).
    """
    start = index * chunk_samples
    expect = min(chunk_samples, n_samples - start)
    if codec == "flac":
        lo, hi = (int(v) for v in group["offsets"][index:index + 2])
        blob = group["data"][lo:hi].tobytes()
        block, _ = sf.read(io.BytesIO(blob), dtype="float32", always_2d=True)
    else:
        raw = group["data"][start:start + expect]
        scale = 2.0**15 if raw.dtype == np.int16 else 2.0**23
        block = raw.astype(np.float32) / np.float32(scale)
    if block.shape != (expect, channels):
        raise ValueError(f"audio chunk {index} has shape {block.shape}, expected {(expect, channels)}")
    return block
