"""Spectral analysis shared by prep (offline, on X) and the player (online, on U).

Frequency representation. The observation model compares magnitude spectra on *linear*
STFT bins between ``fmin_hz`` and ``fmax_hz`` (100 Hz - 5 kHz: the fundamentals and the
strongest partials of melody instruments; above 5 kHz mostly noise and room). A
log-frequency mapping would turn detuning into a plain shift, but it blurs the upper
partials that carry most of the information about *which* note of a melody is playing
(harmonics are equally spaced on the linear axis), and it loses the fine pitch precision
needed to tell semitones apart in the low register once bins are merged. Detuning is
instead handled by precomputed detuned templates (``detune_spectrum``), interpolated on
the linear axis (docs/DECISIONS.md).

Compression. Each frame is divided by its own maximum and compressed with
``log1p(compression_gain * mag / max)`` before being normalised to sum to one: this makes
the feature independent of the input level (a microphone's gain is unknown) and keeps
quiet partials visible, which a plain magnitude spectrum drowns. The gain sets how far
below the peak a bin still counts (10; docs/DECISIONS.md).

Time convention: frame ``k`` of an offline analysis (``stft_magnitude``) is centred on
sample ``k * hop``; the online analysis (``OnlineSpectrum``) emits a frame when its last
sample arrives, so that frame is centred ``n_fft / 2`` samples before "now".
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import cached_property

import numpy as np

from shared.config import check_fields
from shared.errors import ConfigError
from shared.kernels import kernel

#: Smallest value a normalised template bin may take, so no template gives log(0).
TEMPLATE_FLOOR = 1e-4
#: The onset strength's running peak below which bands count as digital silence: after
#: minutes of zeros the decayed peak would otherwise make ``gain / peak`` overflow float32.
SILENT_REF = 1e-30


@dataclass(frozen=True)
class AnalysisParams:
    """Every parameter of the analysis; stored in the bundle and checked by the player.

    Attributes:
        sr: analysis sample rate (Hz); both X and U are resampled to it.
        n_fft: window length = FFT size (samples at ``sr``).
        fine_hop: hop of U's live analysis (samples); ``sr / fine_hop`` frames/s (~50).
        coarse_hop: hop of X's HMM states (samples); ``sr / coarse_hop`` states/s (~10).
        fmin_hz, fmax_hz: band of the observation features (Hz).
        compression_gain: ``g`` in ``log1p(g * mag / frame_max)`` (dimensionless).
        detune_cents: detune of each template variant (cents, ascending, includes 0).
        onset_bands: mel bands of the onset strength (:class:`OnsetStrength`) in the band.
        onset_lag: frames back the onset strength compares each frame with.
        onset_ref_s: decay time (seconds) of the running peak that sets the onset
            strength's reference level.
        onset_baseline_s: time constant (seconds) of the running mean flux subtracted as
            the texture's steady change.
        onset_scale: flux above that mean (mean log rise per band) that gives strength
            ``1 - 1/e``.
    """

    sr: int = 22050
    n_fft: int = 2048
    fine_hop: int = 441
    coarse_hop: int = 2205
    fmin_hz: float = 100.0
    fmax_hz: float = 5000.0
    compression_gain: float = 10.0
    detune_cents: tuple[float, ...] = field(default=(-50.0, -25.0, 0.0, 25.0, 50.0))
    onset_bands: int = 96
    onset_lag: int = 2
    onset_ref_s: float = 3.0
    onset_baseline_s: float = 0.5
    onset_scale: float = 0.02

    def __post_init__(self) -> None:
        object.__setattr__(self, "detune_cents", tuple(float(c) for c in self.detune_cents))
        check_fields(self)  # every number finite (an infinite or NaN size would break the checks below)
        problems = []
        if not 8000 <= self.sr <= 96000:
            problems.append(f"sr={self.sr} Hz (8000..96000)")
        if not 256 <= self.n_fft <= 16384:
            problems.append(f"n_fft={self.n_fft} (256..16384)")
        if not 16 <= self.fine_hop <= self.n_fft:
            problems.append(f"fine_hop={self.fine_hop} (16..n_fft)")
        if self.fine_hop < 1 or self.coarse_hop < self.fine_hop or self.coarse_hop % self.fine_hop:
            problems.append(f"coarse_hop={self.coarse_hop} (a multiple of fine_hop={self.fine_hop})")
        if not 0 <= self.fmin_hz < self.fmax_hz <= self.sr / 2:
            problems.append(f"band {self.fmin_hz}-{self.fmax_hz} Hz (0 <= fmin < fmax <= sr/2)")
        if not 0 < self.compression_gain <= 1e6:
            problems.append(f"compression_gain={self.compression_gain} (0..1e6)")
        cents = self.detune_cents
        if not 1 <= len(cents) <= 31 or 0.0 not in cents or list(cents) != sorted(set(cents)):
            problems.append("detune_cents (1..31 ascending distinct values including 0)")
        elif max(abs(c) for c in cents) > 200:
            problems.append("detune_cents (within +-200 cents)")
        if not 4 <= self.onset_bands <= 256:
            problems.append(f"onset_bands={self.onset_bands} (4..256)")
        if not 1 <= self.onset_lag <= 16:
            problems.append(f"onset_lag={self.onset_lag} (1..16)")
        if not (0.01 <= self.onset_ref_s <= 600 and 0.01 <= self.onset_baseline_s <= 600):
            problems.append("onset_ref_s / onset_baseline_s (0.01..600 s)")
        if not 1e-6 <= self.onset_scale <= 10:
            problems.append(f"onset_scale={self.onset_scale} (1e-6..10)")
        if problems:
            raise ConfigError("invalid analysis parameters: " + "; ".join(problems))

    # Derived quantities -------------------------------------------------------------
    @property
    def n_bins(self) -> int:
        """Number of STFT bins ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def obs_bins(self) -> slice:
        """Slice of STFT bins inside [fmin_hz, fmax_hz]."""
        hz_per_bin = self.sr / self.n_fft
        lo = int(np.ceil(self.fmin_hz / hz_per_bin))
        hi = int(np.floor(self.fmax_hz / hz_per_bin)) + 1
        return slice(lo, min(hi, self.n_bins))

    @property
    def n_obs_bins(self) -> int:
        s = self.obs_bins
        return s.stop - s.start

    @property
    def fine_period_s(self) -> float:
        """Seconds between two fine (U) frames."""
        return self.fine_hop / self.sr

    @property
    def coarse_period_s(self) -> float:
        """Seconds between two coarse (X state) frames."""
        return self.coarse_hop / self.sr

    @property
    def fine_per_coarse(self) -> int:
        return self.coarse_hop // self.fine_hop

    @property
    def window_s(self) -> float:
        return self.n_fft / self.sr

    def to_dict(self) -> dict:
        d = asdict(self)
        d["detune_cents"] = list(self.detune_cents)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> AnalysisParams:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "detune_cents" in known:
            known["detune_cents"] = tuple(float(c) for c in np.asarray(known["detune_cents"]).ravel())
        for key in ("sr", "n_fft", "fine_hop", "coarse_hop", "onset_bands", "onset_lag"):
            if key in known:
                value = float(known[key])
                if not value.is_integer():  # also NaN and infinities, which int() cannot take
                    raise ConfigError(f"invalid analysis parameters: {key}={known[key]!r} (a whole number)", field=key)
                known[key] = int(value)
        for key in ("fmin_hz", "fmax_hz", "compression_gain", "onset_ref_s", "onset_baseline_s", "onset_scale"):
            if key in known:
                known[key] = float(known[key])
        return cls(**known)


def analysis_window(n_fft: int, dtype: type = np.float32) -> np.ndarray:
    """Periodic Hann window ``(n_fft,)`` of ``dtype`` (computed in float64, then cast): the
    formula of librosa.stft's window, equal to it within 1e-15 (prep's :class:`CentredSTFT`
    takes scipy's, bit for bit, to match librosa exactly; the player needs no scipy)."""
    return (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)).astype(dtype)


def centred_frame_count(n_samples: int, n_fft: int, hop: int) -> int:
    """Frames of a centred STFT of ``n_samples`` samples (``n_fft // 2`` zeros padded at
    both ends, frame ``k`` centred on sample ``k * hop``): ``1 + (n + 2 * (n_fft // 2) - n_fft) // hop``."""
    return 1 + max(0, n_samples + 2 * (n_fft // 2) - n_fft) // hop


class CentredSTFT:
    """Offline magnitude STFT of a mono signal fed block by block, in bounded memory.

    Frame ``k`` is centred on sample ``k * hop`` of the whole signal, which is zero-padded
    by ``n_fft // 2`` samples at both ends (``librosa.stft(center=True,
    pad_mode="constant")``, computed the same way: periodic Hann window in float64, FFT in
    float64, rounded to complex64, magnitude in float32), so the frames do not depend on
    how the signal is cut into blocks. Only the samples of frames not yet complete are
    kept (less than ``n_fft + hop`` beyond the last block).

    Args:
        params: analysis parameters (``n_fft``; the signal is at ``params.sr``).
        hop: hop between frames (samples).
        n_samples: length of the whole signal (samples), known in advance: it fixes the
            number of frames (:func:`centred_frame_count`) and the end's padding.
    """

    def __init__(self, params: AnalysisParams, hop: int, n_samples: int) -> None:
        from scipy.signal import get_window  # offline only (prep): the window librosa.stft uses

        self.n_fft, self.hop, self.n_samples = params.n_fft, int(hop), int(n_samples)
        self.n_frames = centred_frame_count(self.n_samples, self.n_fft, self.hop)
        self._window = get_window("hann", self.n_fft, fftbins=True).astype(np.float64)
        self._pending = np.zeros(self.n_fft // 2, dtype=np.float32)  # padded signal from frame `done`
        self._skip = 0  # samples still to drop before frame `done` starts (when hop > n_fft)
        self._fed = 0  # samples of the signal pushed so far
        self.done = 0  # frames returned so far

    def push(self, y: np.ndarray) -> np.ndarray:
        """Take the next samples ``(n,)`` of the signal; return the frames they complete,
        float32 ``(k, n_bins)`` (``k`` may be 0)."""
        y = np.asarray(y, dtype=np.float32)
        if self._fed + y.size > self.n_samples:
            raise ValueError(f"CentredSTFT: {self._fed + y.size} samples pushed, {self.n_samples} announced")
        self._fed += y.size
        skip = min(self._skip, y.size)
        self._skip -= skip
        self._pending = np.concatenate([self._pending, y[skip:]])
        return self._frames()

    def finish(self) -> np.ndarray:
        """The remaining frames (the end zero-padded), float32 ``(k, n_bins)``; after it
        exactly ``n_frames`` have been returned."""
        if self._fed != self.n_samples:
            raise ValueError(f"CentredSTFT: {self._fed} samples pushed, {self.n_samples} announced")
        self._skip = 0  # (what is left to skip lies in the end's zero padding)
        need = (self.n_frames - self.done - 1) * self.hop + self.n_fft
        if self._pending.size < need:
            self._pending = np.concatenate([self._pending, np.zeros(need - self._pending.size, np.float32)])
        return self._frames()

    def _frames(self) -> np.ndarray:
        """Every complete frame of ``_pending`` (at most up to ``n_frames``); drops their hops."""
        n_fft, hop = self.n_fft, self.hop
        k = (self._pending.size - n_fft) // hop + 1 if self._pending.size >= n_fft else 0
        k = min(k, self.n_frames - self.done)
        if k <= 0:
            return np.zeros((0, n_fft // 2 + 1), dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(self._pending, n_fft)[: (k - 1) * hop + 1: hop]
        spec = np.fft.rfft(frames * self._window, axis=-1).astype(np.complex64)
        self._skip = max(0, k * hop - self._pending.size)
        self._pending = self._pending[k * hop:]
        self.done += k
        return np.abs(spec)


def stft_magnitude(y: np.ndarray, params: AnalysisParams, hop: int) -> np.ndarray:
    """Offline magnitude STFT of a whole mono ``y`` (at ``params.sr``): :class:`CentredSTFT`
    in one block.

    Returns float32 ``(n_frames, n_bins)``; frame ``k`` is centred on sample ``k * hop``.
    """
    y = np.asarray(y, dtype=np.float32).ravel()
    stft = CentredSTFT(params, hop, y.size)
    return np.concatenate([stft.push(y), stft.finish()])


def detune_spectrum(mag: np.ndarray, cents: float, params: AnalysisParams,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Magnitude spectra as they would sound ``cents`` higher (frequency axis scaled).

    Args:
        mag: ``(n_frames, n_bins)`` or ``(n_bins,)`` magnitudes on the linear STFT axis.
        cents: detune in cents (positive = sharper).
        out: optional array of ``mag``'s shape (float32 or float64) to write into (the
            live path calls this per block: no allocation).

    Returns:
        ``out`` or a new float32 array of the same shape: ``out[f] = mag[f / 2**(cents/1200)]``
        by linear interpolation, rounded to float32.
    """
    mag = np.asarray(mag)
    if mag.ndim not in (1, 2):
        raise ValueError(f"mag must be (n_bins,) or (n_frames, n_bins), got shape {mag.shape}")
    if mag.dtype != np.float64:  # (float16 spectra from a bundle: their products are float32's)
        mag = mag.astype(np.float32, copy=False)
    if out is None:
        out = np.empty(mag.shape, dtype=np.float32)  # (C order: the features' kernel reads rows as they are)
    _detune_rows(mag.reshape(-1, mag.shape[-1]), float(cents), out.reshape(-1, mag.shape[-1]))
    return out


@kernel("void(float64[:, ::1], float64, float64[:, ::1])")
def _detune_rows(mag, cents, out):  # pragma: no cover (numba)
    """:func:`detune_spectrum` on rows ``(m, n)`` into ``out`` ``(m, n)``. The arithmetic is
    in ``mag``'s own precision (float32 magnitudes stay float32), the fraction in float32."""
    m, n = mag.shape
    if cents == 0.0:
        for r in range(m):
            for i in range(n):
                out[r, i] = np.float32(mag[r, i])
        return
    ratio = 2.0 ** (cents / 1200.0)
    for i in range(n):
        src = i / ratio
        lo = int(math.floor(src))
        frac = np.float32(src - lo)
        hi = min(lo + 1, n - 1)
        lo = min(lo, n - 1)
        keep = np.float32(1.0) - frac
        for r in range(m):
            out[r, i] = np.float32(mag[r, lo] * keep + mag[r, hi] * frac)


def frame_power(mag: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Power of each frame, float64 ``(n,)``: ``sum_f mag[i, f]**2`` of magnitudes
    ``(n, n_bins)`` (float16 from a bundle), computed in float32 ``chunk`` rows at a time
    (a long piece's spectra are never converted whole)."""
    n = mag.shape[0]
    power = np.empty(n)
    for a in range(0, n, chunk):
        block = np.asarray(mag[a:a + chunk], dtype=np.float32)
        power[a:a + chunk] = np.einsum("ij,ij->i", block, block)
    return power


def spectral_subtract(mag: np.ndarray, estimate: np.ndarray, keep: float,
                      out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """Magnitude spectral subtraction: ``max(mag - estimate, keep * mag)`` per bin.

    Args:
        mag: magnitudes ``(n_bins,)``.
        estimate: the magnitude of what to remove (noise, leakage), same shape.
        keep: the least fraction of each bin kept (no bin is zeroed outright).
        out, scratch: optional float32 buffers of the same shape (no allocation: the live
            path calls this per frame); ``out`` is returned.
    """
    if out is None or scratch is None:
        return np.maximum(mag - estimate, keep * mag)
    np.subtract(mag, estimate, out=out)
    np.multiply(mag, np.float32(keep), out=scratch)
    return np.maximum(out, scratch, out=out)


def observation_features(mag: np.ndarray, params: AnalysisParams, out: np.ndarray | None = None) -> np.ndarray:
    """Normalised, compressed observation vectors from magnitude spectra.

    Args:
        mag: ``(..., n_bins)`` magnitudes on the full STFT axis.
        out: optional float32 ``(..., n_obs_bins)`` C-ordered buffer to write into (the
            live path calls this per frame: no allocation); it is returned.

    Returns:
        float32 ``(..., n_obs_bins)``, each vector non-negative and summing to 1
        (an all-zero input frame gives the uniform vector).
    """
    mag = np.asarray(mag)
    band = params.obs_bins
    rows = np.ascontiguousarray(mag, dtype=np.float32).reshape(-1, mag.shape[-1])
    if out is None:
        out = np.empty(mag.shape[:-1] + (band.stop - band.start,), dtype=np.float32)
    _features(rows, band.start, band.stop, np.float32(params.compression_gain), out.reshape(rows.shape[0], -1))
    return out


@kernel("void(float32[:, ::1], int64, int64, float32, float32[:, ::1])")
def _features(mag, lo, hi, gain, out):  # pragma: no cover (numba)
    """:func:`observation_features` of the rows of ``mag`` ``(m, n_bins)`` into ``out``
    ``(m, hi - lo)``, in float32: ``log1p(gain * mag / max)`` over bins ``[lo, hi)``,
    normalised to sum 1 (uniform where it sums to 0)."""
    n = hi - lo
    for r in range(mag.shape[0]):
        peak = mag[r, lo]
        for i in range(lo + 1, hi):
            peak = max(peak, mag[r, i])
        peak = max(peak, np.float32(1e-12))
        total = np.float32(0.0)
        for i in range(n):
            c = np.float32(math.log1p(gain * mag[r, lo + i] / peak))
            out[r, i] = c
            total += c
        if total > 0:
            total = max(total, np.float32(1e-30))
            for i in range(n):
                out[r, i] = out[r, i] / total
        else:
            for i in range(n):
                out[r, i] = np.float32(1.0 / n)


def log_templates(state_mag: np.ndarray, params: AnalysisParams) -> np.ndarray:
    """Log observation templates for every detune variant.

    Args:
        state_mag: ``(n_states, n_bins)`` magnitudes of X at the coarse hop.

    Returns:
        float32 ``(n_detune, n_states, n_obs_bins)``: ``log`` of the floored, renormalised
        features, so a template never gives ``log(0)``.
    """
    n_obs = params.n_obs_bins
    out = np.empty((len(params.detune_cents), state_mag.shape[0], n_obs), dtype=np.float32)
    for d, cents in enumerate(params.detune_cents):
        feats = observation_features(detune_spectrum(state_mag, cents, params), params)
        out[d] = np.log((feats + TEMPLATE_FLOOR) / (1.0 + n_obs * TEMPLATE_FLOOR))
    return out


@dataclass(frozen=True)
class QuantizedTemplates:
    """Log observation templates stored as 8-bit codes: ``log T = offset + step * q``.

    Why 8 bits: the quantisation step (about 0.035 in log units over the floored range)
    changes a frame's log-likelihood by far less than the gap between neighbouring states,
    while it makes templates 4x smaller than float32 (bundle size and the player's memory:
    a 40-minute piece with 5 detune steps keeps 55 MB instead of 220 MB).

    A player may lower whole states' templates (``penalty``, see :meth:`with_penalty`):
    ``log T[d, s] = offset + step * q[d, s] - penalty[s]``. A lowered template is no longer
    a distribution: an observation there is ``exp(-penalty)`` times less likely than its
    shape alone says (X's silences, where nobody plays: their templates are uniform, and a
    uniform template would otherwise explain any playing that fits the right place badly).

    Attributes:
        q: uint8 ``(n_detune, n_states, n_obs_bins)`` codes.
        offset: log value of code 0.
        step: log increment per code.
        penalty: float32 ``(n_states,)`` log units subtracted per state, or None (none).
    """

    q: np.ndarray
    offset: float
    step: float
    penalty: np.ndarray | None = None

    @classmethod
    def from_log(cls, log_t: np.ndarray) -> QuantizedTemplates:
        """Quantise float32 log templates ``(n_detune, n_states, n_obs_bins)`` over their own range."""
        offset, step = cls.scale(float(log_t.min()), float(log_t.max()))
        return cls(q=cls.quantize(log_t, offset, step), offset=offset, step=step)

    @staticmethod
    def scale(lo: float, hi: float) -> tuple[float, float]:
        """``(offset, step)`` of the codes for log templates spanning ``[lo, hi]`` (the
        global minimum and maximum over every detune variant and state)."""
        return lo, max(hi - lo, 1e-6) / 255.0

    @staticmethod
    def quantize(log_t: np.ndarray, offset: float, step: float) -> np.ndarray:
        """uint8 codes (same shape) of float32 log templates, for the given :meth:`scale`;
        any block of states gives the codes the whole array would."""
        return np.clip(np.round((log_t - offset) / step), 0, 255).astype(np.uint8)

    def dequantize(self, detune: slice | int = slice(None), states: slice = slice(None)) -> np.ndarray:
        """float32 log templates for the given detune variant(s) and state range."""
        out = (self.offset + self.step * self.q[detune, states].astype(np.float32)).astype(np.float32)
        if self.penalty is not None:
            out -= self.penalty[states][:, None]
        return out

    def codes_into(self, out: np.ndarray, detune: int, lo: int, hi: int, reverse: bool = False) -> np.ndarray:
        """The codes of states ``[lo, hi)`` of variant ``detune`` into float32 ``out``
        ``(hi - lo, n_obs_bins)`` (in reverse state order if ``reverse``), each state's
        penalty taken off in codes: ``offset + step * out`` is then its log template."""
        codes = self.q[detune, lo:hi]
        np.copyto(out, codes[::-1] if reverse else codes, casting="unsafe")
        if self.penalty is not None and self._penalised[hi] > self._penalised[lo]:  # (most slices: none)
            shift = self.penalty[lo:hi] / np.float32(self.step)
            out -= (shift[::-1] if reverse else shift)[:, None]
        return out

    def with_penalty(self, penalty: np.ndarray) -> QuantizedTemplates:
        """The same codes (not copied) with each state's log template lowered by
        ``penalty`` (float ``(n_states,)``, log units, >= 0)."""
        penalty = np.asarray(penalty, dtype=np.float32)
        if penalty.shape != (self.n_states,) or not np.all(np.isfinite(penalty)) or np.any(penalty < 0):
            raise ValueError(f"penalty must be finite, >= 0 and of shape ({self.n_states},)")
        return QuantizedTemplates(q=self.q, offset=self.offset, step=self.step, penalty=penalty)

    @cached_property
    def _penalised(self) -> np.ndarray:
        """Running count of penalised states, int64 ``(n_states + 1,)``: whether a slice has any."""
        flags = (self.penalty > 0) if self.penalty is not None else np.zeros(self.n_states, dtype=bool)
        return np.concatenate([[0], np.cumsum(flags)])

    @property
    def n_states(self) -> int:
        return int(self.q.shape[1])


class OnlineSpectrum:
    """Streaming magnitude STFT: one frame per ``hop`` new samples, causal.

    ``push(hop_samples)`` takes exactly ``hop`` mono samples at ``params.sr`` and returns the
    magnitude frame ``(n_bins,)`` (float32) of the window ending with them. Buffers are
    preallocated; the returned array is reused on the next call (copy it to keep it).
    """

    def __init__(self, params: AnalysisParams, hop: int | None = None) -> None:
        self.params = params
        self.hop = int(hop or params.fine_hop)
        self._window = analysis_window(params.n_fft)
        self._buffer = np.zeros(params.n_fft, dtype=np.float32)
        self._frame = np.zeros(params.n_fft, dtype=np.float32)
        self._mag = np.zeros(params.n_bins, dtype=np.float32)

    def reset(self) -> None:
        self._buffer[:] = 0.0

    def push(self, hop_samples: np.ndarray) -> np.ndarray:
        hop = self.hop
        if hop_samples.shape[0] != hop:
            raise ValueError(f"OnlineSpectrum.push expects {hop} samples, got {hop_samples.shape[0]}")
        _slide_and_window(self._buffer, np.ascontiguousarray(hop_samples, dtype=np.float32), self._window,
                          self._frame)
        np.abs(np.fft.rfft(self._frame), out=self._mag)
        return self._mag

    def warm_up(self) -> None:
        """Load the compiled kernel now (the state is unchanged)."""
        _slide_and_window(self._buffer.copy(), np.zeros(self.hop, dtype=np.float32), self._window, self._frame.copy())


@kernel("void(float32[::1], float32[::1], float32[::1], float32[::1])")
def _slide_and_window(buf, new, window, frame):  # pragma: no cover (numba)
    """Slide the samples of ``buf`` ``(n_fft,)`` back by ``len(new)``, put ``new`` at its
    end, and ``frame = buf * window``."""
    n, hop = buf.size, new.size
    for i in range(n - hop):
        buf[i] = buf[i + hop]
    for i in range(hop):
        buf[n - hop + i] = new[i]
    for i in range(n):
        frame[i] = buf[i] * window[i]


class OnsetStrength:
    """Streaming onset strength in [0, 1]: how surely a note began in each analysis frame.

    The follower's spectral templates cannot see a note repeated at the same pitch, nor
    where a slowly swelling note (a voice, a choir) begins; a rise in energy shows both.
    The same code runs on X (prep, :func:`onset_strength_curve`) and on U (the player, one
    frame at a time), so the two curves are alike wherever the solo's notes begin.

    Per frame ``(n_bins,)`` of magnitudes: ``onset_bands`` mel bands between ``fmin_hz`` and
    ``fmax_hz``; level ``log1p(compression_gain * band / ref)`` with ``ref`` a running peak
    (decaying over ``onset_ref_s``), so a microphone's gain does not matter; flux = mean
    rise of the level over the frame ``onset_lag`` frames back, that frame first
    max-filtered over neighbouring bands so vibrato and slides do not count (SuperFlux,
    Boeck & Widmer 2013); the running mean flux (``onset_baseline_s``), a dense texture's
    steady change, is subtracted; strength ``1 - exp(-excess / onset_scale)``.

    ``push`` allocates nothing (the live path calls it per frame). ``bank``: the mel
    filterbank (:func:`onset_filterbank`); the player takes X's from the bundle, so it
    needs no librosa (and its scipy) at run time.
    """

    def __init__(self, params: AnalysisParams, bank: np.ndarray | None = None) -> None:
        self.params = params
        self._bank = np.ascontiguousarray(onset_filterbank(params) if bank is None else bank, dtype=np.float32)
        if self._bank.shape != (params.onset_bands, params.n_bins):
            raise ValueError(f"onset filterbank of shape {self._bank.shape}, expected "
                             f"{(params.onset_bands, params.n_bins)}")
        frame_s = params.fine_period_s
        self._ref_decay = float(np.exp(-frame_s / params.onset_ref_s))
        self._base_decay = float(np.exp(-frame_s / params.onset_baseline_s))
        # each band's bins with a weight (a mel band covers a few: the product skips the rest)
        nonzero = self._bank != 0
        self._first = np.argmax(nonzero, axis=1).astype(np.int64)
        self._stop = np.where(nonzero.any(axis=1), self._bank.shape[1] - np.argmax(nonzero[:, ::-1], axis=1),
                              0).astype(np.int64)
        n = params.onset_bands
        self._levels = np.zeros((params.onset_lag, n), dtype=np.float32)  # ring of past levels
        self._band = np.zeros(n, dtype=np.float32)
        self._spread = np.zeros(n, dtype=np.float32)
        self.reset()

    def warm_up(self) -> None:
        """Load the compiled kernel now (the state is unchanged)."""
        _bank_energies(self._bank, self._first, self._stop, np.zeros(self.params.n_bins, np.float32),
                       self._band.copy())
        _onset_flux(self._band.copy(), np.float32(1.0), self._levels.copy(), 0, True, self._spread.copy())

    def reset(self) -> None:
        """Forget the past (a restart: what came before must not look like an onset)."""
        self._frames = 0
        self._ref = 0.0
        self._baseline = 0.0

    def push(self, mag: np.ndarray) -> float:
        """Onset strength of one magnitude frame ``(n_bins,)``, in [0, 1]."""
        p = self.params
        band, spread = self._band, self._spread
        top = _bank_energies(self._bank, self._first, self._stop, mag, band)
        self._ref = max(top, self._ref * self._ref_decay)
        # (digital silence so far, or for minutes, the peak decayed away: no level at all)
        scale = 0.0 if self._ref <= SILENT_REF else p.compression_gain / self._ref
        slot = self._frames % p.onset_lag
        flux = _onset_flux(band, np.float32(scale), self._levels, slot, self._frames >= p.onset_lag, spread)
        self._frames += 1
        excess = max(0.0, flux - self._baseline)
        self._baseline = self._base_decay * self._baseline + (1.0 - self._base_decay) * flux
        return 1.0 - math.exp(-excess / p.onset_scale)


@kernel("float64(float32[:, ::1], int64[::1], int64[::1], float32[::1], float32[::1])")
def _bank_energies(bank, first, stop, mag, out):  # pragma: no cover (numba)
    """``out = bank @ mag`` (float32), each band ``b`` summed over its bins ``first[b] ..
    stop[b]`` only (the others weigh 0); returns the largest."""
    top = -math.inf
    for b in range(bank.shape[0]):
        acc = np.float32(0.0)
        for i in range(first[b], stop[b]):
            acc += bank[b, i] * mag[i]
        out[b] = acc
        top = max(top, float(acc))
    return top


@kernel("float64(float32[::1], float32, float32[:, ::1], int64, boolean, float32[::1])")
def _onset_flux(band, scale, levels, slot, have_past, spread):  # pragma: no cover (numba)
    """One frame of :class:`OnsetStrength`: ``band`` ``(n,)`` (the bands' energies) turned
    into levels ``log1p(scale * band)`` in place (0 everywhere if ``scale`` is 0) and kept as
    ``levels[slot]``; with ``have_past``, returns the flux: the mean rise of the levels over
    the ``levels[slot]`` they replace, that one first max-filtered over the neighbouring
    bands (into ``spread``); else 0."""
    n = band.size
    for i in range(n):
        band[i] = np.float32(math.log1p(scale * band[i])) if scale > 0 else np.float32(0.0)
    flux = np.float32(0.0)
    if have_past:
        for i in range(n):
            wide = levels[slot, i]
            if i > 0:
                wide = max(wide, levels[slot, i - 1])
            if i < n - 1:
                wide = max(wide, levels[slot, i + 1])
            spread[i] = max(band[i] - wide, np.float32(0.0))
            flux += spread[i]
    for i in range(n):
        levels[slot, i] = band[i]
    return flux / n


def onset_filterbank(params: AnalysisParams) -> np.ndarray:
    """The onset strength's mel filterbank, float32 ``(onset_bands, n_bins)`` (HTK mel,
    ``fmin_hz`` to ``fmax_hz``)."""
    import librosa.filters  # offline only (prep, tests): the player reads it from the bundle

    return librosa.filters.mel(sr=params.sr, n_fft=params.n_fft, n_mels=params.onset_bands,
                               fmin=params.fmin_hz, fmax=params.fmax_hz, htk=True).astype(np.float32)


class OnsetCurve:
    """Onset strength of a mono signal (at ``params.sr``) fed block by block, by the live
    code path (:class:`OnlineSpectrum` and :class:`OnsetStrength`), in bounded memory.

    Frame ``k`` is centred on sample ``k * fine_hop``, as in :func:`stft_magnitude`: the
    signal is zero-padded at both ends and the streaming analysis's first frames, centred
    before the start, are dropped. The frames do not depend on how the signal is cut.

    Args:
        params: analysis parameters.
        n_samples: length of the whole signal (samples), known in advance:
            ``n_samples // fine_hop + 1`` frames.
        bank: the mel filterbank, as for :class:`OnsetStrength`.
    """

    def __init__(self, params: AnalysisParams, n_samples: int, bank: np.ndarray | None = None) -> None:
        hop, half = params.fine_hop, params.n_fft // 2
        self.hop, self.n_samples = hop, int(n_samples)
        self.n_frames = self.n_samples // hop + 1
        self._early = -(-(half - hop) // hop) if half > hop else 0  # streaming frames centred before sample 0
        lead = self._early * hop + hop - half  # zeros before the signal so that frame k is centred on k * hop
        self._total = (self.n_frames + self._early) * hop  # padded samples analysed in all
        self._pending = np.zeros(lead, dtype=np.float32)
        self._taken = lead  # padded samples taken so far
        self._fed = 0  # signal samples pushed so far
        self._emitted = 0  # streaming frames computed so far (the early ones included)
        self._spectrum, self._onsets = OnlineSpectrum(params), OnsetStrength(params, bank)

    def push(self, y: np.ndarray) -> np.ndarray:
        """Take the next samples ``(n,)``; return the onset strengths of the frames they
        complete, float32 ``(k,)``."""
        y = np.asarray(y, dtype=np.float32)
        if self._fed + y.size > self.n_samples:
            raise ValueError(f"OnsetCurve: {self._fed + y.size} samples pushed, {self.n_samples} announced")
        self._fed += y.size
        take = min(y.size, self._total - self._taken)  # samples beyond the last frame are not analysed
        self._taken += take
        self._pending = np.concatenate([self._pending, y[:take]])
        return self._frames()

    def finish(self) -> np.ndarray:
        """The remaining frames (the end zero-padded), float32 ``(k,)``; after it exactly
        ``n_frames`` strengths have been returned."""
        if self._fed != self.n_samples:
            raise ValueError(f"OnsetCurve: {self._fed} samples pushed, {self.n_samples} announced")
        self._pending = np.concatenate([self._pending, np.zeros(self._total - self._taken, np.float32)])
        self._taken = self._total
        return self._frames()

    def _frames(self) -> np.ndarray:
        hop = self.hop
        n = self._pending.size // hop
        hops = self._pending[: n * hop].reshape(n, hop)
        curve = np.array([self._onsets.push(self._spectrum.push(h)) for h in hops], dtype=np.float32)
        self._pending = self._pending[n * hop:]
        drop = min(n, max(0, self._early - self._emitted))
        self._emitted += n
        return curve[drop:]


def onset_strength_curve(y: np.ndarray, params: AnalysisParams, bank: np.ndarray | None = None) -> np.ndarray:
    """Onset strength of a whole mono signal ``y`` at ``params.sr``: :class:`OnsetCurve`
    in one block (``bank``: as for :class:`OnsetStrength`).

    Returns:
        float32 ``(len(y) // fine_hop + 1,)``: frame ``k`` is centred on sample
        ``k * fine_hop``, as in :func:`stft_magnitude`.
    """
    y = np.asarray(y, dtype=np.float32).ravel()
    curve = OnsetCurve(params, y.size, bank)
    return np.concatenate([curve.push(y), curve.finish()])


def peak_indices(x: np.ndarray, height: float = -np.inf) -> np.ndarray:
    """Indices (int64, ascending) of the local maxima of ``x`` ``(n,)`` that reach ``height``:
    the samples (or the middle of a flat run, rounded down) higher than both neighbours,
    never the first or the last sample. The same peaks as ``scipy.signal.find_peaks(x,
    height=height)``, whose import (scipy.signal pulls in scipy.stats) would cost the
    player most of a second of start-up."""
    x = np.asarray(x, dtype=np.float64)
    if x.size < 3:
        return np.zeros(0, dtype=np.int64)
    # runs of equal values: a run higher than the runs on both sides is a peak
    starts = np.concatenate([[0], np.flatnonzero(np.diff(x) != 0) + 1])
    ends = np.append(starts[1:] - 1, x.size - 1)
    values = x[starts]
    inner = np.arange(1, starts.size - 1)
    is_peak = (values[inner - 1] < values[inner]) & (values[inner + 1] < values[inner]) & (values[inner] >= height)
    k = inner[is_peak]
    return ((starts[k] + ends[k]) // 2).astype(np.int64)
