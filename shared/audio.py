"""Audio input: reading files of any rate and channel count, validation, resampling.

All sample arrays are float32 with shape ``(n_samples, n_channels)`` (frames first, as
soundfile returns them) unless a function says it returns mono ``(n_samples,)``.
Resampling goes through soxr (the library librosa itself uses), never by hand.

Files are never decoded whole: :func:`scan_audio` checks a file in one streaming pass
(header, length, NaN/Inf, peak, silence) and :func:`read_blocks` reads it again block by
block, so memory stays bounded whatever the recording's length.
"""

from __future__ import annotations

import hashlib
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf
import soxr

from shared.errors import AudioError, first_line

#: Anything quieter than this peak (about -100 dBFS) is treated as digital silence.
SILENCE_PEAK = 1e-5
#: Longest source we accept (seconds): bounds the bundle, whose states the player holds in memory.
MAX_DURATION_S = 4 * 3600.0
MAX_CHANNELS = 64


#: Bytes of float32 samples decoded at a time by the streaming readers (whatever the channels).
BLOCK_BYTES = 4 << 20


def block_frames(channels: int) -> int:
    """Frames per block of the streaming readers: ``BLOCK_BYTES`` of float32 (at least 64)."""
    return max(64, BLOCK_BYTES // (4 * max(1, int(channels))))


@dataclass(frozen=True)
class AudioScan:
    """What one streaming pass over an audio file found (:func:`scan_audio`); none of the
    audio itself is kept.

    Attributes:
        sr: sample rate (Hz).
        channels: channels.
        n_samples: frames actually decoded (not what the header claims).
        subtype: soundfile's subtype of the source (e.g. ``"PCM_16"``), for lossless storage.
        peak: largest absolute sample (1.0 = full scale; floating-point files may exceed it).
    """

    sr: int
    channels: int
    n_samples: int
    subtype: str
    peak: float

    @property
    def duration_s(self) -> float:
        return self.n_samples / float(self.sr)


def to_mono(samples: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Mix ``(n, ch)`` (or already mono ``(n,)``) down to ``(n,)`` by averaging the channels.

    Without ``out``: float32, a new array (or ``samples`` itself when already mono float32).
    With ``out`` (``(n,)``, any float dtype): the mean is accumulated in ``out``'s dtype
    without allocating (the vocoder's per-frame form) and ``out`` is returned.
    """
    if out is not None:
        if samples.ndim == 1:
            np.copyto(out, samples)
            return out
        np.copyto(out, samples[:, 0])
        for ch in range(1, samples.shape[1]):
            out += samples[:, ch]
        if samples.shape[1] > 1:
            out *= 1.0 / samples.shape[1]
        return out
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    channels = samples.shape[1]
    if channels == 1:
        return samples[:, 0].astype(np.float32)
    # a matrix-vector product: far cheaper per block than .mean(axis=1) over a short axis
    return samples.astype(np.float32, copy=False) @ np.full(channels, 1.0 / channels, dtype=np.float32)


#: Seconds of a recording's opening searched for where its music starts (:func:`music_start_s`).
MUSIC_START_SEARCH_S = 30.0


def music_start_s(audio: ChunkedAudio, threshold_db: float = -40.0, frame_s: float = 0.01) -> float:
    """Where a recording's music starts: :func:`first_sound_s` over its first
    :data:`MUSIC_START_SEARCH_S` seconds (seconds), read a chunk at a time (prep stores it
    in the bundle, so that the player need not decode those seconds at start-up; memory
    holds a chunk, never the 30 s)."""
    hop = max(1, int(round(frame_s * audio.sr)))
    n = int(min(audio.duration_s, MUSIC_START_SEARCH_S) * audio.sr) // hop  # whole frames
    step = max(1, audio.chunk_samples // hop)  # frames per read
    power = np.concatenate([frame_mean_square(audio.read(a * hop, min(step, n - a) * hop), hop)
                            for a in range(0, n, step)] or [np.zeros(0)])
    return _first_above(power, hop, audio.sr, threshold_db)


def first_sound_s(samples: np.ndarray, sr: int, threshold_db: float = -40.0, frame_s: float = 0.01) -> float:
    """Where the music starts: the first ``frame_s`` frame of ``samples`` (``(n,)`` or
    ``(n, channels)`` at ``sr`` Hz) whose RMS is within ``-threshold_db`` dB of the
    excerpt's loudest frame (seconds; 0.0 if it is all silence). Leading digital silence or
    room tone before the first note lies below it."""
    hop = max(1, int(round(frame_s * sr)))
    return _first_above(frame_mean_square(np.asarray(samples), hop), hop, sr, threshold_db)


def frame_mean_square(samples: np.ndarray, hop: int) -> np.ndarray:
    """The mean square of the mono mix of ``samples`` over each whole frame of ``hop``
    samples, float64 ``(len(samples) // hop,)`` (a frame's value depends on its samples
    alone: frames read in pieces give the same values as read at once)."""
    mono = to_mono(samples)
    n = mono.size // hop
    return np.mean(np.square(mono[: n * hop].reshape(n, hop), dtype=np.float64), axis=1)


def _first_above(power: np.ndarray, hop: int, sr: int, threshold_db: float) -> float:
    """The start (seconds) of the first frame of ``power`` within ``-threshold_db`` dB of its
    loudest (0.0 for none or all silence)."""
    if power.size == 0:
        return 0.0
    peak = float(power.max())
    if peak <= 0.0:
        return 0.0
    return float(np.argmax(power >= peak * 10.0 ** (threshold_db / 10.0)) * hop / sr)


def resample(y: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resample along axis 0 with soxr (high quality). Returns float32, same layout."""
    if sr_in == sr_out:
        return np.ascontiguousarray(y, dtype=np.float32)
    return soxr.resample(np.ascontiguousarray(y, dtype=np.float32), sr_in, sr_out, quality="HQ").astype(
        np.float32, copy=False
    )


def resampled_length(n_samples: int, sr_in: int, sr_out: int) -> int:
    """Length of ``n_samples`` at ``sr_in`` Hz resampled to ``sr_out`` Hz:
    ``n_samples * sr_out / sr_in`` rounded, halves up (exact, in integers)."""
    return (2 * int(n_samples) * int(sr_out) + int(sr_in)) // (2 * int(sr_in))


class StreamResampler:
    """Mono resampling with soxr block by block (``soxr.ResampleStream``): the same samples
    :func:`resample` gives for the whole signal, whatever the blocks, in bounded memory.

    Exactly :func:`resampled_length` samples come out in all (soxr's own count can differ
    by one in rare cases where the length falls on half a sample: the end is then trimmed
    or zero-padded by that sample).

    Args:
        sr_in, sr_out: rates (Hz).
        n_samples: length of the whole input (samples at ``sr_in``), known in advance.
        quality: soxr's quality, as :func:`resample`'s.
    """

    def __init__(self, sr_in: int, sr_out: int, n_samples: int, quality: str = "HQ") -> None:
        same = int(sr_in) == int(sr_out)
        self.n_out = int(n_samples) if same else resampled_length(n_samples, sr_in, sr_out)
        self._stream = None if same else soxr.ResampleStream(int(sr_in), int(sr_out), 1, dtype="float32",
                                                             quality=quality)
        self._done = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        """The next mono samples ``(n,)``; returns float32 ``(m,)`` resampled so far (soxr
        keeps back what its filter still needs)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self._take(x if self._stream is None else self._stream.resample_chunk(x))

    def finish(self) -> np.ndarray:
        """The rest, float32: after it exactly ``n_out`` samples have come out."""
        tail = np.zeros(0, np.float32)
        if self._stream is not None:
            tail = self._take(self._stream.resample_chunk(tail, last=True))
        return np.concatenate([tail, np.zeros(self.n_out - self._done, np.float32)])

    def _take(self, y: np.ndarray) -> np.ndarray:
        keep = min(y.size, self.n_out - self._done)
        self._done += keep
        return np.asarray(y[:keep], dtype=np.float32)


def check_readable_file(path: Path, what: str = "audio file") -> Path:
    """Raise AudioError unless ``path`` is an existing, non-empty regular file."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{what} not found: {path}")
    if path.is_dir():
        raise AudioError(f"{what} is a directory, not a file: {path}")
    if path.stat().st_size == 0:
        raise AudioError(f"{what} is empty (0 bytes): {path}")
    return path


#: What soundfile raises on a file it cannot decode.
_DECODE_ERRORS = (sf.LibsndfileError, RuntimeError, TypeError, ValueError, OSError)


def _cannot_decode(path: Path, what: str, exc: BaseException) -> AudioError:
    why = first_line(exc, 160) or type(exc).__name__
    if "Error opening" in why:  # libsndfile's "File does not exist ...": it exists, it is not audio
        why = "its format is not recognised or its header is damaged"
    return AudioError(f"cannot decode {what} {path.name}: not a supported or intact audio file ({why})")


@contextmanager
def _quiet_decoder() -> Iterator[None]:
    """Silence what native decoders print on the process's stderr (libmpg123 writes its
    own "Note: Illegal Audio-MPEG-Header" lines) for the length of one call: a damaged file
    gets our one line, not theirs before it. Python's own output is not involved."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _open_quietly(path: Path) -> sf.SoundFile:
    """The file opened for reading, without the decoder's own lines on stderr."""
    with _quiet_decoder():
        return sf.SoundFile(str(path))


def _too_long(path: Path, what: str, seconds: float) -> AudioError:
    return AudioError(f"{what} {path.name} lasts {seconds / 3600:.1f} h; at most {MAX_DURATION_S / 3600:.0f} h are supported")


def _check_header(path: Path, what: str, info: sf.SoundFile) -> None:
    """Refuse, before reading any sample, what the header alone shows: an invalid rate, too
    many channels, more than ``MAX_DURATION_S``."""
    if info.samplerate <= 0:
        raise AudioError(f"{what} {path.name} has an invalid sample rate ({info.samplerate} Hz)")
    if info.channels > MAX_CHANNELS:
        raise AudioError(f"{what} {path.name} has {info.channels} channels; at most {MAX_CHANNELS} are supported")
    if info.frames / info.samplerate > MAX_DURATION_S:
        raise _too_long(path, what, info.frames / info.samplerate)


def scan_audio(
    path: str | Path,
    *,
    min_duration_s: float = 0.0,
    allow_silent: bool = False,
    what: str = "audio file",
    progress: Callable[[int, int], None] | None = None,
) -> AudioScan:
    """Check a WAV/FLAC/OGG/MP3 file in one streaming pass, keeping none of its audio: its
    rate, channels and length from the header (before reading), then, block by block, that
    it decodes, has no NaN/Inf sample (refused at the first) and is not silent.

    Args:
        path: file to read.
        min_duration_s: shortest acceptable duration (seconds).
        allow_silent: accept all-silent audio instead of raising.
        what: how error messages name the file.
        progress: called as ``progress(frames_done, frames_total)`` after each block.

    Raises:
        AudioError: missing, directory, not audio, corrupt/truncated, empty, too short,
            too long, too many channels, NaN/Inf samples, or silent (one line each).
    """
    path = check_readable_file(Path(path), what)
    try:
        with _open_quietly(path) as f:
            _check_header(path, what, f)
            sr, channels, subtype, claimed = int(f.samplerate), int(f.channels), str(f.subtype), int(f.frames)
            n, peak = 0, 0.0
            buffer = np.empty((block_frames(channels), channels), dtype=np.float32)  # reused: one block held
            while True:
                with _quiet_decoder():
                    block = f.read(out=buffer)
                if block.shape[0] == 0:
                    break
                hi, lo = float(block.max()), float(block.min())  # (NaN propagates; no temporary array)
                if not (math.isfinite(hi) and math.isfinite(lo)):
                    first = n + int(np.argmin(np.isfinite(block).all(axis=1)))
                    raise AudioError(f"{what} {path.name} contains NaN or infinite samples (the first at {first / sr:.3f} s)")
                peak, n = max(peak, hi, -lo), n + block.shape[0]
                if n / sr > MAX_DURATION_S:  # (a header can understate the length)
                    raise _too_long(path, what, n / sr)
                if progress:
                    progress(min(n, claimed), max(claimed, 1))
    except AudioError:
        raise
    except _DECODE_ERRORS as exc:
        raise _cannot_decode(path, what, exc) from None
    if n == 0:
        raise AudioError(f"{what} {path.name} contains no audio (0 samples)")
    if n / sr < min_duration_s:
        raise AudioError(
            f"{what} {path.name} is too short ({n / sr * 1000:.0f} ms); it needs at least {min_duration_s * 1000:.0f} ms"
        )
    if not allow_silent and peak < SILENCE_PEAK:
        raise AudioError(f"{what} {path.name} is silent (peak below -100 dBFS)")
    return AudioScan(sr=sr, channels=channels, n_samples=n, subtype=subtype, peak=peak)


def read_blocks(path: str | Path, scan: AudioScan, *, gain: float = 1.0, what: str = "audio file",
                frames: int | None = None) -> Iterator[np.ndarray]:
    """The samples of a file checked by :func:`scan_audio`, again, block by block.

    Yields float32 blocks ``(frames, channels)`` (the last one shorter; ``frames`` defaults
    to :func:`block_frames`), multiplied by ``gain`` unless it is 1: exactly
    ``scan.n_samples`` frames in all.

    Raises:
        AudioError: the file no longer decodes, or is not what the scan found (it changed).
    """
    path = Path(path)
    step = int(frames or block_frames(scan.channels))
    changed = AudioError(f"{what} {path.name} changed while it was being read; try again")
    try:
        with _open_quietly(path) as f:
            if (f.samplerate, f.channels) != (scan.sr, scan.channels):
                raise changed
            n = 0
            while n < scan.n_samples:
                with _quiet_decoder():
                    block = f.read(min(step, scan.n_samples - n), dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    raise changed
                if gain != 1.0:
                    block *= np.float32(gain)
                n += block.shape[0]
                yield block
    except _DECODE_ERRORS as exc:
        raise _cannot_decode(path, what, exc) from None


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes (identifies the source recording)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_window(start: int, n: int, n_samples: int, channels: int,
                out: np.ndarray | None = None) -> tuple[np.ndarray, int, int]:
    """For a random-access read of samples ``[start, start + n)`` from a source of
    ``n_samples``: the zeroed float32 buffer ``(n, channels)`` (``out`` itself when given)
    and the part ``[lo, hi)`` that lies inside the source (empty when ``hi <= lo``)."""
    if out is None:
        out = np.zeros((n, channels), dtype=np.float32)
    else:
        out[:] = 0.0
    return out, max(start, 0), min(start + n, n_samples)


class AudioSource(Protocol):
    """Random-access audio (what the vocoder reads X from): ``sr`` (Hz), ``channels``,
    ``n_samples`` and ``read(start, n, out=None)`` -> float32 ``(n, channels)``, zeros
    outside the signal."""

    sr: int
    channels: int
    n_samples: int

    def read(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray: ...


class ChunkedAudio:
    """Random access to audio made chunk by chunk on demand (decoded, resampled), through
    a small least-recently-used cache of chunks: memory stays bounded whatever the length.
    Thread-safe (one lock). Subclasses implement :meth:`_decode`.

    Args:
        sr: sample rate (Hz).
        channels: channels.
        n_samples: length (samples).
        chunk_samples: samples per chunk (the last may be shorter).
        cache_chunks: chunks kept decoded.
    """

    def __init__(self, sr: int, channels: int, n_samples: int, chunk_samples: int, cache_chunks: int = 4) -> None:
        self.sr, self.channels, self.n_samples = int(sr), int(channels), int(n_samples)
        self.chunk_samples = int(chunk_samples)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_chunks = cache_chunks
        self._lock = threading.Lock()

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sr

    def _decode(self, index: int) -> np.ndarray:
        """Chunk ``index``: float32 ``(min(chunk_samples, n_samples - index * chunk_samples),
        channels)``."""
        raise NotImplementedError

    def _chunk(self, index: int) -> np.ndarray:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        block = self._decode(index)
        self._cache[index] = block
        if len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return block

    def read(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Samples ``[start, start + n)`` as float32 ``(n, channels)``; zeros outside."""
        if out is not None and 0 <= start and 0 < n <= self.chunk_samples and start + n <= self.n_samples:
            index = start // self.chunk_samples
            c0 = start - index * self.chunk_samples
            with self._lock:
                block = self._chunk(index)
                if c0 + n <= block.shape[0]:  # inside one chunk (most of a player's reads): one copy
                    out[...] = block[c0:c0 + n]
                    return out
        out, lo, hi = read_window(start, n, self.n_samples, self.channels, out)
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
        """The whole signal (for tests and short pieces)."""
        return self.read(0, self.n_samples)


class ResampledAudio(ChunkedAudio):
    """``source`` (an :class:`AudioSource`) at another sample rate, with random access:
    what the speakers play when the device runs at another rate than the recording.

    Each chunk is resampled with soxr (the whole chunk at once, linear phase, no delay)
    from the source's samples around it, with ``margin`` output samples on either side so
    that chunks join seamlessly; chunk boundaries fall on whole periods of the rate ratio,
    where an output sample lies exactly on a source sample. Made on demand and cached:
    nothing is allocated per block, one chunk (about 0.7 s) at a time.

    Args:
        source: the audio to resample.
        sr: the rate to present (Hz).
        quality: soxr's quality ("HQ": 20-bit, flat to 91 % of Nyquist).
    """

    def __init__(self, source: AudioSource, sr: int, quality: str = "HQ", cache_chunks: int = 4) -> None:
        sr_in, sr_out = int(source.sr), int(sr)
        g = math.gcd(sr_in, sr_out)
        self._step_out, self._step_in = sr_out // g, sr_in // g  # a whole period of the ratio
        chunk = self._step_out * max(1, -(-32768 // self._step_out))
        n_out = int(round(source.n_samples * sr_out / sr_in))
        super().__init__(sr_out, source.channels, n_out, chunk, cache_chunks)
        self.source, self.quality = source, quality
        self._margin = self._step_out * max(1, -(-1024 // self._step_out))  # output samples

    def _decode(self, index: int) -> np.ndarray:
        start = index * self.chunk_samples
        n = min(self.chunk_samples, self.n_samples - start)
        first = start - self._margin  # a whole number of ratio periods: on a source sample
        src_first = first // self._step_out * self._step_in
        src_n = (n + 2 * self._margin) // self._step_out * self._step_in + self._step_in
        segment = self.source.read(src_first, src_n)
        resampled = soxr.resample(segment, self.source.sr, self.sr, quality=self.quality)
        block = resampled[self._margin:self._margin + n]
        if block.shape[0] < n:  # (soxr rounds the length down by at most a sample)
            block = np.concatenate([block, np.zeros((n - block.shape[0], self.channels), np.float32)])
        return np.ascontiguousarray(block, dtype=np.float32)


class ArrayAudio:
    """In-memory audio with the random-access interface of the bundle's audio
    (``sr``, ``channels``, ``n_samples``, ``read(start, n)``): for tests and examples.

    Args:
        samples: ``(n,)`` or ``(n, channels)`` float samples.
        sr: sample rate (Hz).
    """

    def __init__(self, samples: np.ndarray, sr: int) -> None:
        data = np.asarray(samples, dtype=np.float32)
        self.data = data[:, None] if data.ndim == 1 else data
        self.sr = int(sr)
        self.n_samples, self.channels = self.data.shape

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sr

    def read(self, start: int, n: int, out: np.ndarray | None = None) -> np.ndarray:
        """Samples ``[start, start + n)`` as float32 ``(n, channels)``; zeros outside."""
        out, lo, hi = read_window(start, n, self.n_samples, self.channels, out)
        if hi > lo:
            out[lo - start:hi - start] = self.data[lo:hi]
        return out
