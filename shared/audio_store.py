"""X's audio inside a bundle: written in chunks, decoded on demand.

The recording is stored losslessly in chunks of ``chunk_samples`` frames: each chunk one
FLAC stream (concatenated in ``/audio/data``, byte offsets in ``/audio/offsets``), or, for
more than 8 channels (FLAC's limit), integer PCM with gzip. :class:`BundleAudio` reads any
range by decoding only the chunks it touches, through a small cache, so memory stays
bounded whatever the recording's length.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf

from shared.audio import ChunkedAudio
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


def encode_audio(group: h5py.Group, samples: np.ndarray, sr: int, subtype: str,
                  chunk_samples: int, progress: Callable[[int, int], None] | None) -> None:
    n, channels = samples.shape
    storage = storage_subtype(subtype)
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


class BundleAudio(ChunkedAudio):
    """Random access to X's audio in a bundle, decoding only the chunks asked for (a
    :class:`shared.audio.ChunkedAudio`: memory stays bounded by a small cache of decoded
    chunks, so a 40-minute concerto never needs to be decoded whole; thread-safe).
    """

    def __init__(self, path: Path, attrs: dict, cache_chunks: int = 4) -> None:
        super().__init__(int(attrs["sr"]), int(attrs["channels"]), int(attrs["n_samples"]),
                         int(attrs["chunk_samples"]), cache_chunks)
        self.path = path
        self.codec = str(attrs["codec"])
        self._file: h5py.File | None = None

    def _h5(self) -> h5py.File:
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        return self._file

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _decode(self, index: int) -> np.ndarray:
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
            raise BundleError(f"bundle {self.path.name}: audio chunk {index} has shape {block.shape}, "
                              f"expected {(expect, self.channels)}")
        return block
