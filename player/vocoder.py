"""A streaming phase vocoder: X time-stretched at a rate that may change every block.

Method (a standard "two-frame" streaming phase vocoder with identity phase locking):

* One synthesis frame every ``hop`` output samples. For each, X is read around the read
  position ``p`` (X samples, rounded to the nearest sample): one analysis frame per channel
  centred on ``p``, plus one frame of the mid signal (mean of the channels) centred on
  ``p - hop``. The phase advance of each bin is therefore measured over exactly one synthesis
  hop, whatever the rate, so no instantaneous-frequency estimate or phase unwrapping is needed:
  the synthesis phase advances by ``angle(mid(p)) - angle(mid(p - hop))`` per hop. Between two
  frames ``p`` moves by ``rate * hop`` (rate = X seconds per output second, clipped to
  [0.25, 4], applied per hop, so a rate change is a glide at hop resolution).
* The phase advance is computed once, on the mid, and applied to every channel as a per-bin
  *rotation* (synthesis phase minus analysis phase, kept as a unit phasor ``U``):
  ``Y_c = X_c(p) * U``. Inter-channel phase and level differences (the stereo image) are
  therefore kept exactly. Recurrence: ``U_k = U_{k-1} * P(p_{k-1}) * conj(P(p_k - hop))`` with
  ``P`` the unit phasor of the mid's spectrum; at rate 1 the two phasors are the same samples,
  ``U`` stays 1 and the output is X itself.
* Identity phase locking (Laroche & Dolson 1999): peaks are the bins of the mid magnitude
  above their 2 neighbours on each side; every bin takes the rotation of its closest peak
  (region boundaries half-way between peaks), which keeps the partials' shapes (vertical phase
  coherence) and removes most of the "phasiness".
* Transients (phase reset). Onsets are detected on X as it is read, ahead of the frames: a
  jump of the high-frequency energy of the mid (energy of its first difference, in blocks of
  ``hop/2`` samples) by more than :attr:`StreamingVocoder.transient_threshold` dB over the
  loudest of the 4 blocks before (vibrato and held notes do not trigger it). The onset is
  located to the sample (change point of that energy) and, on the frame nearest to it (read
  so that the onset lands where the time map puts it), the rotation is reset to 1 (the
  analysis phases) in the bins where the onset brings new energy (> 6 dB over the spectrum
  just before it); held notes keep their phase continuity. While the onset is still inside
  the following frames (``min(rate, 1) * n_fft / 2`` X samples) those bins get a pure delay
  that keeps it where the reset frame put it, instead of the locked phase advance that would
  smear it. The frames before the reset, which already contain the onset ahead of their
  centre, carry only the audio preceding it (faded out just before the onset; the
  overlap-add weight this removes is compensated), which removes the pre-echo a phase
  vocoder otherwise spreads ahead of attacks when slowing down.
* Windows: periodic Hann for analysis and synthesis, overlap-add normalised by the sum of the
  squared windows (1.5 at hop = n_fft/4), so that rate 1 reproduces X.
* ``seek`` resets the rotation at the new position; the overlap-add of the tapered windows
  then crossfades from the old audio (the tails of the frames already added) to the new one
  over ``n_fft - hop`` samples (35 ms at 44.1 kHz): no discontinuity. The start is a seek
  from silence, i.e. a fade-in of the same length.
* Output is produced one hop at a time into a small FIFO, so ``render(n)`` works for any n.
  Frame buffers are preallocated; a call allocates its output block and a few
  spectrum-sized temporaries per hop, does no I/O besides ``audio.read`` and never logs.

Time bookkeeping. Synthesis frame k has its centre at output sample ``c_k`` and carries X at
``p_k`` there; the X time of any output sample is the linear interpolation of ``(c_k, p_k)``
(with an anchor at the output head on a seek). At rate 1 after ``seek(x)``, output sample j
(counted from the seek) is exactly X sample ``x * sr + j``: the vocoder does not shift the X
timeline, and :attr:`StreamingVocoder.position_s` is the exact X time of the next sample
``render`` will return (at a constant rate r, T seconds after ``seek(x)`` it is ``x + r*T``).
What is delayed is the *control*: a frame is synthesised ``n_fft/2`` output samples before
its centre is heard, and ``fifo`` (< hop) samples are already synthesised when a call starts.
So a rate passed to ``render`` governs the X advance of the output from ``n_fft/2 - hop +
fifo`` samples later, i.e. within ``latency_s = (n_fft/2)/sr`` (23 ms at 44.1 kHz); a new
gain or a seek starts its crossfade after ``fifo`` samples, is half-way after ``fifo +
(n_fft - hop)/2`` (about ``latency_s``) and complete after ``fifo + n_fft - hop``. With a
varying rate, ``position_s`` therefore lags the integral of the commanded rates by at most
``latency_s * (rate change)``; an engine closing a loop on ``position_s`` must allow for that
delay, and need not shift X by anything.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from shared.audio import AudioSource, to_mono
from shared.kernels import kernel
from shared.spectral import analysis_window

MIN_RATE = 0.25
MAX_RATE = 4.0
_ONSET_HISTORY = 4      # blocks of hop/2 the HF energy of a new block is compared with
_NEW_BIN_RATIO = 4.0    # energy ratio (6 dB) above which a bin is reset at an onset


def default_n_fft(sr: int) -> int:
    """The power of two nearest to 46 ms: 2048 at 44.1/48 kHz, 1024 at 22.05 kHz, 512 at 16 kHz."""
    target = 0.046 * sr
    low = 2 ** max(6, math.floor(math.log2(max(target, 1.0))))
    return int(low if target - low <= 2 * low - target else 2 * low)


class StreamingVocoder:
    """Time-stretches an audio source block by block (see the module docstring for the method).

    Args:
        audio: X (``.sr``, ``.channels``, ``.n_samples``, ``.read(start, n, out=None)``).
        n_fft: frame length (even); default :func:`default_n_fft`.
        hop: synthesis hop (<= n_fft/2); default ``n_fft // 4``.

    Attributes:
        n_bins: ``n_fft // 2 + 1`` (length of the ``gain`` array accepted by :meth:`render`).
        bin_hz: ``sr / n_fft``, the spacing of those bins.
        latency_s: ``(n_fft / 2) / sr``: the longest delay between a ``render`` call and the
            moment its rate governs the output head (a gain change or a seek is then about
            half-way through its crossfade). The X timeline is not shifted (``position_s``).
        position_s: X time (s) of the next output sample (a property).
        transient_threshold: onset detector threshold, in dB of HF-energy jump (default 3);
            ``math.inf`` disables phase resets.
        rate: the last rate given to :meth:`render` (after clipping).
        resets: phase resets done on onsets so far (a diagnostic counter).
    """

    def __init__(self, audio: AudioSource, n_fft: int | None = None, hop: int | None = None) -> None:
        sr, channels = int(audio.sr), int(audio.channels)
        if sr <= 0 or channels <= 0:
            raise ValueError(f"audio needs a positive sample rate and channel count (got {sr} Hz, {channels} ch)")
        n_fft = default_n_fft(sr) if n_fft is None else int(n_fft)
        if n_fft < 16 or n_fft % 2:
            raise ValueError(f"n_fft must be an even number >= 16 (got {n_fft})")
        hop = n_fft // 4 if hop is None else int(hop)
        if not 2 <= hop <= n_fft // 2:
            raise ValueError(f"hop must be in [2, n_fft/2] (got {hop} for n_fft={n_fft})")
        self.audio = audio
        self.sr, self.channels, self.n_fft, self.hop = sr, channels, n_fft, hop
        self.n_bins = n_fft // 2 + 1
        self.bin_hz = sr / n_fft
        self.latency_s = (n_fft // 2) / sr
        self.transient_threshold = 3.0
        self.rate = 1.0
        self.resets = 0

        self._win = analysis_window(n_fft, np.float64)
        self._win2 = self._win**2
        norm = np.zeros(hop)
        for start in range(0, n_fft, hop):
            seg = self._win2[start:start + hop]
            norm[:seg.size] += seg
        self._norm = norm  # overlap-add weight of every output sample, periodic in hop

        # preallocated buffers
        self._read_buf = np.zeros((n_fft + hop, channels), dtype=np.float32)
        self._ref_buf = np.zeros((n_fft, channels), dtype=np.float32)
        # rows: each channel's frame at the read position, then the mid's one hop earlier
        self._frames = np.zeros((channels + 1, n_fft))
        self._mid_frame = np.zeros(n_fft)
        self._ola = np.zeros((channels, n_fft))
        self._ola_missing = np.zeros(n_fft)  # overlap-add weight removed by pre-onset cuts
        self._fifo = np.zeros((hop, channels), dtype=np.float32)
        self._fifo_pos = 0
        self._fifo_len = 0
        self._gain = np.ones(self.n_bins)
        self._no_gain = np.ones(self.n_bins)
        self._rot = np.ones(self.n_bins, dtype=np.complex128)
        self._unlocked = np.ones(self.n_bins, dtype=np.complex128)  # the rotation before locking

        # phase-vocoder state of the last frame
        self._u = np.ones(self.n_bins, dtype=np.complex128)       # rotation (unit phasors)
        self._phasor = np.ones(self.n_bins, dtype=np.complex128)  # unit phasor of mid(p_last)
        self._mid = np.zeros(self.n_bins, dtype=np.complex128)  # the last frame's mid spectrum
        self._mag = np.zeros(self.n_bins)  # and its magnitude
        self._diff = np.zeros(n_fft + hop)  # the mid's first difference, for the onset detector
        self._last_start = 0
        self._u_is_one = True
        # onsets: detector scan position and history (X samples), pending reset, unlocked bins
        self._block = hop // 2
        self._cut_margin = max(4, hop // 16)  # the onset's first samples can be quiet: cut a little early
        fade_len = max(4, hop // 4)
        self._fade = np.cos(0.5 * np.pi * (np.arange(fade_len) + 0.5) / fade_len) ** 2  # 1 -> 0
        self._scan_pos = 0
        self._history: deque[float] = deque(maxlen=_ONSET_HISTORY)
        self._reset_at: float | None = None
        self._last_onset = -math.inf
        self._unlock_until = -math.inf
        self._unlock_bins = np.zeros(self.n_bins, dtype=bool)
        self._onset_out = 0.0
        self._reset_at_last = 0.0
        self._omega = 2.0 * np.pi * np.arange(self.n_bins) / n_fft

        # time bookkeeping: output samples emitted, output index of the OLA buffer's start,
        # and (output index, X sample) points of frame centres (plus a seek anchor)
        self._head = 0
        self._ola_origin = 0
        self._p_last = 0.0
        self._points: deque[tuple[int, float]] = deque()
        self._seek_pending = False
        self.seek(0.0)

    def warm_up(self) -> None:
        """Load the compiled kernels now, not in the first audio callback that stretches
        (see :meth:`player.follower.Follower.warm_up`); the vocoder's state is unchanged."""
        unlocked = np.ones(self.n_bins, dtype=np.complex128)
        _windowed_frames(self._read_buf, self.hop, self._win, self._frames.copy(), True)
        spec = np.ones((self.channels + 1, self.n_bins), dtype=np.complex128)
        _mid_and_advance(spec, self.channels, self._mid.copy(), self._mag.copy(), unlocked, unlocked, unlocked.copy(), True)
        _lock_to_peaks(unlocked, np.zeros(self.n_bins), unlocked)
        _clip_gain(self._gain.copy())
        _apply_rotation(unlocked, self._no_gain, spec, unlocked, unlocked.copy())
        _overlap_add(np.zeros_like(self._ola), self._win, self._ola.copy(), self._ola_missing.copy(), self._norm, self.hop,
                     self._fifo.copy())
        _diff_energy(self._read_buf[: 1 + self._block], self._block, self._diff.copy(), np.empty(1))

    # ------------------------------------------------------------------ public API
    @property
    def position_s(self) -> float:
        """X time (s) of the next sample :meth:`render` will return (after a seek: on the new timeline)."""
        pts = self._points
        head = self._head
        while len(pts) >= 2 and pts[1][0] <= head:
            pts.popleft()
        c0, p0 = pts[0]
        if len(pts) == 1:
            return (p0 + (head - c0) * self.rate) / self.sr
        c1, p1 = pts[1]
        return (p0 + (head - c0) * (p1 - p0) / (c1 - c0)) / self.sr

    def seek(self, x_s: float) -> None:
        """Continue from X time ``x_s``: the next sample returned is at ``x_s`` on the new
        timeline, and the output crossfades from the old audio to the new over
        ``n_fft - hop`` samples, after the samples already synthesised (< hop)."""
        x = float(x_s)
        if not math.isfinite(x):
            raise ValueError(f"seek position must be finite (got {x_s!r})")
        self._points.clear()
        self._points.append((self._head, x * self.sr))
        self._seek_pending = True

    def render(self, n: int, rate: float, gain: np.ndarray | None = None) -> np.ndarray:
        """The next ``n`` output samples, float32 ``(n, channels)``.

        ``rate`` (X seconds per output second, clipped to [0.25, 4]) applies to every hop
        synthesised during the call; ``gain`` (``(n_bins,)``, clipped to [0, 1], or None)
        multiplies the spectrum of every channel of those frames.
        """
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0 (got {n})")
        rate = float(rate)
        if not math.isfinite(rate):
            raise ValueError(f"rate must be finite (got {rate!r})")
        rate = min(max(rate, MIN_RATE), MAX_RATE)
        self.rate = rate
        g = None
        if gain is not None:
            garr = np.asarray(gain)
            if garr.shape != (self.n_bins,):
                raise ValueError(f"gain must have shape ({self.n_bins},) (got {garr.shape})")
            np.copyto(self._gain, garr, casting="unsafe")
            _clip_gain(self._gain)
            g = self._gain
        out = np.empty((n, self.channels), dtype=np.float32)
        filled = 0
        while filled < n:
            if self._fifo_len == 0:
                self._synthesise(rate, g)
            take = min(self._fifo_len, n - filled)
            out[filled:filled + take] = self._fifo[self._fifo_pos:self._fifo_pos + take]
            self._fifo_pos += take
            self._fifo_len -= take
            filled += take
        self._head += n
        return out

    # ------------------------------------------------------------------ internals
    def _synthesise(self, rate: float, gain: np.ndarray | None) -> None:
        """Synthesise one frame, overlap-add it, and move one finished hop into the FIFO."""
        n_fft, hop, half = self.n_fft, self.hop, self.n_fft // 2
        fade_len = self._fade.size
        centre = self._ola_origin + half  # output index of this frame's centre
        fresh = self._seek_pending
        if fresh:
            c_anchor, p_anchor = self._points[-1]
            p = p_anchor + (centre - c_anchor) * rate
            self._seek_pending = False
        else:
            p = self._p_last + rate * hop
        start = math.floor(p + 0.5) - half  # first X sample of the frame centred on round(p)
        buf, spec, unlocked = self._analyse(start, advance=not fresh)
        mid, mag = self._mid, self._mag
        u = self._u
        cut_weight = None

        if fresh:
            self._set_identity()
            self._reset_at = None
            self._unlock_until = -math.inf
            self._history.clear()
            self._scan_pos = start + half - _ONSET_HISTORY * self._block  # warm-up, then detect from the centre
            self._last_onset = -math.inf
            self._scan(buf, start)
        else:
            self._scan(buf, start)

            if self._reset_at is not None and p >= self._reset_at - 0.5 * rate * hop:
                # phase reset on the frame nearest the onset, read so that the onset sits where
                # the time map puts it in the output ((t0 - p) / rate from the frame's centre)
                t0 = self._reset_at
                moved = math.floor(t0 - (t0 - p) / rate + 0.5) - half
                if moved != start:
                    start = moved
                    buf, spec, unlocked = self._analyse(start, advance=True)
                new = self._new_bins(mag, t0)
                self._lock(unlocked, mag, out=u)
                u[new] = 1.0
                self._u_is_one = bool(np.all(u == 1.0))
                np.copyto(self._unlock_bins, new)
                self._unlock_until = t0 + min(rate, 1.0) * half
                self._onset_out = centre + (t0 - (start + half))  # output index of the onset
                self._reset_at_last = t0
                self._reset_at = None
                self.resets += 1
            elif p < self._unlock_until:
                # the onset is still inside the frame: its bins are shifted in time so that it
                # stays where the reset frame put it (a pure delay, which does not smear it)
                self._lock(unlocked, mag, out=u)
                delay = (self._onset_out - centre) - (self._reset_at_last - (start + half))
                np.exp(-1j * delay * self._omega, out=self._rot)
                np.copyto(u, self._rot, where=self._unlock_bins)
                if delay != 0.0:
                    self._u_is_one = False
            else:
                self._lock(unlocked, mag, out=u)

            if self._reset_at is not None and not (rate == 1.0 and self._u_is_one):
                # the onset ahead of this frame's centre would be heard too early or smeared
                # (pre-echo): this frame carries only what precedes it (at rate 1 with an
                # identity rotation X is reproduced exactly, so nothing is cut)
                cut = math.floor(self._reset_at) - self._cut_margin - start
                if 0 < cut < n_fft:
                    fade = self._fade[max(0, fade_len - cut):]  # a short fade-out ending at the cut
                    frames = self._frames[:self.channels]
                    frames[:, cut - fade.size:cut] *= fade
                    frames[:, cut:] = 0.0
                    spec = np.fft.rfft(frames, axis=-1)
                    cut_weight = cut

        channel_spec = spec[:self.channels]  # (the mid's row, if any, is not synthesised)
        _apply_rotation(u, self._no_gain if gain is None else gain, channel_spec, mid, self._phasor)
        frames = np.fft.irfft(channel_spec, n=n_fft, axis=-1)
        missing = self._ola_missing
        if cut_weight is not None:
            missing[cut_weight:] += self._win2[cut_weight:]
            lo = max(0, cut_weight - self._fade.size)
            missing[lo:cut_weight] += self._win2[lo:cut_weight] * (1.0 - self._fade[self._fade.size - (cut_weight - lo):])
        _overlap_add(frames, self._win, self._ola, missing, self._norm, hop, self._fifo)
        self._fifo_pos, self._fifo_len = 0, hop
        self._ola_origin += hop

        self._last_start = start
        self._p_last = p
        self._points.append((centre, p))
        if len(self._points) > 16:  # only reachable if position_s is never read
            self._points.popleft()

    def _analyse(self, start: int, advance: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read X[start - hop, start + n_fft) and analyse the frame at ``start``: the mid's
        spectrum (mean of the channels') and magnitude into ``_mid`` and ``_mag``.

        Returns the read block ``(n_fft + hop, channels)``, the spectra ``(rows, n_bins)``
        (the channels', then, when advancing, the mid's one hop before the frame) and, with
        ``advance``, the rotation before locking: ``U_{k-1} * P(last frame) * conj(P(mid
        one hop before the frame))`` (else ``_u``, unchanged)."""
        hop, channels = self.hop, self.channels
        buf = self.audio.read(start - hop, self.n_fft + hop, out=self._read_buf)
        # the mid one hop before is the last frame itself when X advanced by one hop (rate 1)
        advance = advance and start - hop != self._last_start
        _windowed_frames(buf, hop, self._win, self._frames, advance)
        spec = np.fft.rfft(self._frames if advance else self._frames[:channels], axis=-1)
        _mid_and_advance(spec, channels, self._mid, self._mag, self._u, self._phasor, self._unlocked, advance)
        if not advance:
            return buf, spec, self._u
        self._u_is_one = False
        return buf, spec, self._unlocked

    def _set_identity(self) -> None:
        self._u.fill(1.0)
        self._u_is_one = True

    def _scan(self, buf: np.ndarray, start: int) -> None:
        """Onset detection on X up to this frame's leading edge (``buf`` holds X from
        ``start - hop``): HF-energy jump of a block over the loudest of the previous ones."""
        b = self._block
        first = start - self.hop + 1  # the first X sample whose first difference is in buf
        if self._scan_pos < first:
            self._scan_pos = first
        count = (start + self.n_fft - self._scan_pos) // b
        if count <= 0:
            return
        lo = self._scan_pos - (start - self.hop)
        d = self._diff[: count * b]
        energy = np.empty(count)
        _diff_energy(buf[lo - 1:lo + count * b], b, d, energy)
        ratio = 10.0 ** (self.transient_threshold / 10.0) if math.isfinite(self.transient_threshold) else math.inf
        floor = 1e-10 * b
        hist = self._history
        for i in range(count):
            e = float(energy[i])
            pos = self._scan_pos + i * b
            if (len(hist) == hist.maxlen and self._reset_at is None and e > floor
                    and e > ratio * max(hist) + floor and pos >= self._last_onset + self.n_fft // 4):
                t0 = self._locate(d, i, b, pos)
                self._reset_at = t0
                self._last_onset = t0
            hist.append(e)
        self._scan_pos += count * b

    @staticmethod
    def _locate(d: np.ndarray, i: int, b: int, pos: int) -> float:
        """Change point (CUSUM minimum) of the difference energy over the block before the
        detecting block and that block: the onset's X sample."""
        lo = max(0, (i - 1) * b)
        e = d[lo:(i + 1) * b] ** 2
        e -= e.mean()
        k = int(np.argmin(np.cumsum(e)))
        return float(pos - i * b + lo + k)

    def _new_bins(self, mag: np.ndarray, t0: float) -> np.ndarray:
        """Bins where the onset brings new energy: this frame's mid over the mid of the frame
        that ends at the onset, by more than 6 dB (held notes are left alone)."""
        n_fft = self.n_fft
        ref = self.audio.read(math.floor(t0) - n_fft, n_fft, out=self._ref_buf)
        to_mono(ref, out=self._mid_frame)
        self._mid_frame *= self._win
        before = np.abs(np.fft.rfft(self._mid_frame))
        return mag * mag > _NEW_BIN_RATIO * before * before + 1e-20

    def _lock(self, unlocked: np.ndarray, mag: np.ndarray, out: np.ndarray) -> None:
        """Identity phase locking: each bin takes the rotation of its closest peak."""
        _lock_to_peaks(unlocked, mag, out)


@kernel("void(float64[::1])")
def _clip_gain(gain):  # pragma: no cover (numba)
    """``gain`` clipped to [0, 1] in place (infinities too), NaN made 0."""
    for k in range(gain.size):
        g = gain[k]
        gain[k] = 0.0 if g != g else min(max(g, 0.0), 1.0)


@kernel("void(float32[:, ::1], int64, float64[::1], float64[:, ::1], boolean)")
def _windowed_frames(buf, hop, window, frames, with_mid):  # pragma: no cover (numba)
    """Window the frames of a read block ``buf`` ``(n_fft + hop, channels)``: row ``c`` of
    ``frames`` ``(channels + 1, n_fft)`` gets channel ``c`` from ``hop`` on; with
    ``with_mid``, the last row the mid (mean of the channels) of the first ``n_fft``."""
    n, channels = window.size, buf.shape[1]
    for c in range(channels):
        for j in range(n):
            frames[c, j] = buf[hop + j, c] * window[j]
    if with_mid:
        for j in range(n):
            frames[channels, j] = _mid_sample(buf, j) * window[j]


@kernel("void(complex128[:, ::1], int64, complex128[::1], float64[::1], complex128[::1], complex128[::1], "
        "complex128[::1], boolean)")
def _mid_and_advance(spec, channels, mid, mag, u, phasor, out, advance):  # pragma: no cover (numba)
    """The mean of the channels' spectra (the first ``channels`` rows of ``spec`` ``(rows,
    n_bins)``) into ``mid`` and its magnitude into ``mag``; with ``advance``, the rotation
    ``out = U * P(last) * conj(P(prev))`` as unit phasors, ``prev`` being the row after
    the channels' (the mid one hop before the frame, normalised on the way)."""
    for k in range(mid.size):
        z = spec[0, k]
        for c in range(1, channels):
            z += spec[c, k]
        if channels > 1:
            z *= 1.0 / channels
        mid[k] = z
        mag[k] = math.sqrt(z.real * z.real + z.imag * z.imag)  # (hypot: 3x slower)
        if advance:
            r = u[k] * phasor[k] * _unit(spec[channels, k]).conjugate()
            out[k] = r * (1.0 / math.sqrt(r.real * r.real + r.imag * r.imag))


@kernel("void(complex128[::1], float64[::1], complex128[::1])")
def _lock_to_peaks(unlocked, mag, out):  # pragma: no cover (numba)
    """Identity phase locking: ``out[b] = unlocked[peak nearest b]`` (a tie half-way goes to
    the lower peak), the peaks being the bins of ``mag`` above their two neighbours on each
    side; no peak: ``out = unlocked``."""
    n = mag.size
    last = -1  # the last peak found
    filled = 0  # bins of out assigned so far
    for b in range(2, n - 2):
        m = mag[b]
        if m > mag[b - 1] and m > mag[b - 2] and m > mag[b + 1] and m > mag[b + 2]:
            if last < 0:
                for j in range(0, b):  # below the first peak: all its
                    out[j] = unlocked[b]
            else:
                half = 0.5 * (last + b)
                for j in range(filled, b):
                    out[j] = unlocked[last] if j <= half else unlocked[b]
            filled = b
            last = b
    if last < 0:
        for j in range(n):
            out[j] = unlocked[j]
        return
    for j in range(filled, n):
        out[j] = unlocked[last]


@kernel()
def _mid_sample(samples, j):  # pragma: no cover (numba)
    """The mean of the channels of ``samples`` ``(n, channels)`` at row ``j`` (summed in
    the samples' type, as ``to_mono(..., out=)`` does into its buffer's)."""
    m = float(samples[j, 0])
    channels = samples.shape[1]
    for c in range(1, channels):
        m += samples[j, c]
    if channels > 1:
        m *= 1.0 / channels
    return m


@kernel()
def _unit(z):  # pragma: no cover (numba)
    """``(z + tiny) / |z + tiny|``: the unit phasor of ``z`` (1 where ``z`` is 0)."""
    re, im = z.real + 1e-30, z.imag
    scale = 1.0 / math.sqrt(re * re + im * im)  # (hypot: three times slower)
    return complex(re * scale, im * scale)


@kernel("void(complex128[::1], float64[::1], complex128[:, ::1], complex128[::1], complex128[::1])")
def _apply_rotation(u, gain, spec, mid, phasor):  # pragma: no cover (numba)
    """The synthesis spectra: every row of ``spec`` ``(channels, n_bins)`` times ``u *
    gain``; and ``phasor``, the unit phasor of this frame's ``mid``, for the next frame."""
    for k in range(u.size):
        r = u[k] * gain[k]
        for c in range(spec.shape[0]):
            spec[c, k] *= r
        phasor[k] = _unit(mid[k])


@kernel("void(float64[:, ::1], float64[::1], float64[:, ::1], float64[::1], float64[::1], int64, float32[:, ::1])")
def _overlap_add(frames, window, ola, missing, norm, hop, fifo):  # pragma: no cover (numba)
    """Add the windowed synthesis ``frames`` ``(channels, n_fft)`` into ``ola`` (the same
    shape); move its first ``hop`` samples, normalised by the overlap-add weight (``norm -
    missing``, at least ``norm / 3``), into ``fifo`` ``(hop, channels)``; shift ``ola`` and
    ``missing`` by ``hop``."""
    channels, n = frames.shape
    for c in range(channels):
        for j in range(n):
            ola[c, j] += frames[c, j] * window[j]
    for j in range(hop):
        weight = max(norm[j] - missing[j], norm[j] / 3.0)  # compensate a cut by at most +9.5 dB
        for c in range(channels):
            fifo[j, c] = ola[c, j] / weight
    for j in range(n - hop):
        missing[j] = missing[j + hop]
    for j in range(n - hop, n):
        missing[j] = 0.0
    for c in range(channels):
        for j in range(n - hop):
            ola[c, j] = ola[c, j + hop]
        for j in range(n - hop, n):
            ola[c, j] = 0.0


@kernel("void(float32[:, ::1], int64, float64[::1], float64[::1])")
def _diff_energy(samples, block, diff, energy):  # pragma: no cover (numba)
    """The first difference of the mono mix of ``samples`` ``(1 + len(energy) * block,
    channels)`` into ``diff``, and its energy per ``block`` samples into ``energy``."""
    prev = 0.0
    for j in range(samples.shape[0]):
        m = _mid_sample(samples, j)
        if j > 0:
            diff[j - 1] = m - prev
        prev = m
    for i in range(energy.size):
        e = 0.0
        for j in range(i * block, (i + 1) * block):
            e += diff[j] * diff[j]
        energy[i] = e
