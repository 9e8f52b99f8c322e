"""Solo removal: the per-block 2-row PG-NMF of the method and the mask it gives.

Per engine block, X's frame at the follower's position and U's latest frame are stacked
as a 2-row magnitude "spectrogram" ``M = [X(s); U(t)]`` ``(2, F)`` and factorised with
the accompaniment bases prep learned (``W`` fixed, ``(K, F)``), warm-started from the
previous block's activations ``H`` ``(2, K)``. Components that U uses are the solo's; the
accompaniment estimate keeps ``H'(i) = max(H(tutti, i) - alpha * H(solo, i), 0)``::

    ratio(f) = sum_i H'(i) W(i, f) / sum_i H(tutti, i) W(i, f)        in [0, 1]
    ratio(f) = 1 - (1 - ratio(f)) * support(f)      (remove only where the solo can be)
    gain(f)  = mean of the last ``smooth_blocks`` ratios, to the power ``power``

``support`` is 1 in bins within ``support_db`` of U's loudest bin (widened by
``support_bins`` bins for vibrato and detune errors). With speakers instead of headphones
U also holds the accompaniment (delayed, quieter): it is taken out of U's row first, as a
multiple of X's row estimated from the bins where U and X meet, or the removal would take
the accompaniment out with the solo. While the soloist is not sounding
(a rest, a breath) nothing is factorised: the last ratio computed from data fades out over
``hold_s`` (the decay of the notes last heard, in X's hall), then X plays unmasked.

docs/DECISIONS.md has the measurements behind these choices.

U's level is unknown (another microphone, another instrument), so U's row is scaled to the
same total as X's row; its spectrum is first shifted by the follower's detune estimate
so that its harmonics fall on X's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from player.stages import Frame
from shared.audio import to_mono
from shared.bundle import NMFBases
from shared.config import check_fields, field_error
from shared.kernels import kernel
from shared.pgnmf import GammaPriors, PGNMFState, init_state, update
from shared.spectral import AnalysisParams, analysis_window, detune_spectrum, spectral_subtract
from shared.stats import linear_quantile


@dataclass(frozen=True)
class SeparationConfig:
    """Tuning of the solo removal.

    Attributes:
        alpha: strength, in [0, 2]; 0 disables removal (the output is X).
        n_iter: VB sweeps per block (warm-started).
        power: exponent of the gain (2: power-domain gain).
        smooth_blocks: causal mean of the ratio over this many blocks (about 20 ms each).
        threshold_db: the soloist counts as sounding while U's level is this far above the
            room's noise floor (lower than the follower's gate: soft notes and the decay of
            notes still carry the solo in X); full strength ``ramp_db`` above that.
        hold_s: after the soloist stops sounding, the last ratio computed from data fades
            out over this long (seconds): the decay of the notes last heard, in X's hall.
        min_counts_per_bin: no removal while X's row holds fewer counts than this per bin
            on average (prep scales X so a mean cell holds 4): with so little data both
            rows' activations stay at the prior, and their difference would mask every bin
            (heard as a hole before the first chord).
        support_db, support_bins: where removal may act (see the module docstring);
            ``support_db`` 0 removes wherever the factorisation says.
        leak_quantile: the accompaniment leaking into the microphone (speakers, not
            headphones) is taken out of U's row first: its level relative to X's row is
            this quantile of the per-bin ratios ``U / X`` over the bins where X sounds
            (most of them hold only the accompaniment, the solo only raises the others).
            0 disables it.
        leak_blocks: the leak's level is the median of the last this many blocks' ratios.
        leak_keep: the least fraction of each bin of U's row kept by that subtraction.
        ratio_every: while the soloist sounds, the ratio is computed from data (X's
            spectrum where U is, the factorisation) once every this many blocks and held
            in between (at the presence of each block): the mask is already the mean of
            ``smooth_blocks`` blocks, and the factorisation is the player's costliest
            stage after the vocoder. The first block after a silence, and a block whose
            observation of U changed by ``change_at`` or more (a new note), are always
            computed: a held ratio there would leave the recording's soloist's attack in.
        change_at: Hellinger distance between consecutive observations of U (the
            follower's ``last_change``) from which a block's ratio is computed at once.
    """

    alpha: float = 2.0
    n_iter: int = 3
    power: float = 4.0
    smooth_blocks: int = 3
    min_counts_per_bin: float = 0.25
    hold_s: float = 1.0
    threshold_db: float = 3.0
    ramp_db: float = 2.0
    support_db: float = 30.0
    support_bins: int = 12
    leak_quantile: float = 0.5
    leak_blocks: int = 100
    leak_keep: float = 0.1
    ratio_every: int = 2
    change_at: float = 0.22

    def __post_init__(self) -> None:
        check_fields(self, positive=("n_iter", "power", "smooth_blocks", "ramp_db", "leak_blocks", "ratio_every"),
                     non_negative=("min_counts_per_bin", "hold_s", "support_db", "support_bins", "change_at"),
                     integers=("n_iter", "smooth_blocks", "support_bins", "leak_blocks", "ratio_every"),
                     unit=("leak_quantile", "leak_keep"))
        if not 0.0 <= self.alpha <= 2.0:
            raise field_error(self, "alpha", self.alpha, "within [0, 2]")


class SoloPresence:
    """How surely the soloist is sounding, for the separation, in [0, 1], frame by frame.

    0 at the activity gate's noise floor + ``threshold_db``, rising to 1 over ``ramp_db``
    above it; a drop decays linearly over ``hold_s`` (the solo's decay in X's hall). A
    :class:`player.stages.FrameStage` reading ``frame.level_db`` and ``frame.floor_db``.

    Attributes:
        value: the presence now, in [0, 1].
        sounding_now: the latest frame is above the threshold (the solo can be located in
            U's spectrum now).
    """

    def __init__(self, config: SeparationConfig, frame_s: float) -> None:
        self.config = config
        self._decay = frame_s / config.hold_s if config.hold_s > 0 else 1.0
        self.reset()

    def reset(self) -> None:
        """Not sounding."""
        self.value = 0.0
        self.sounding_now = False

    def process_frame(self, frame: Frame) -> None:
        cfg = self.config
        now = (frame.level_db - frame.floor_db - cfg.threshold_db) / cfg.ramp_db
        self.sounding_now = now > 0.0
        self.value = float(min(1.0, max(now, self.value - self._decay, 0.0)))


class SoloRemover:
    """Computes, block by block, the gain that removes the solo from X's spectrum.

    Args:
        nmf: the bases learned by prep (q(W) and the data scale).
        params: the bundle's analysis parameters (the bases' frequency axis).
        config: tuning.
    """

    def __init__(self, nmf: NMFBases, params: AnalysisParams, config: SeparationConfig | None = None) -> None:
        self.config = config or SeparationConfig()
        self.params = params
        self.priors = GammaPriors(**{k: float(v) for k, v in nmf.priors.items()})
        self.data_scale = float(nmf.data_scale)
        w_shape = np.asarray(nmf.w_shape, dtype=np.float64)
        w_rate = np.asarray(nmf.w_rate, dtype=np.float64)
        self._fixed = np.ones(w_shape.shape[0], dtype=bool)
        self._initial = init_state(2, w_shape, w_rate, self.priors)
        self._state: PGNMFState = self._initial
        self._W = self._initial.W  # (K, F), fixed: computed once
        n_bins = w_shape.shape[1]
        self._history = np.ones((self.config.smooth_blocks, n_bins))
        self._last = np.ones(n_bins)  # the last ratio computed from data
        self._u_row = np.empty(n_bins)  # U's row of the factorisation (scratch)
        self._rows = np.empty((2, n_bins))  # the factorised block [X; U] (scratch)
        self._weights = np.ones(n_bins)  # where removal may act (scratch; 1: everywhere)
        self._next = 0
        self._held = self.config.ratio_every - 1  # blocks since the ratio was last computed from data
        self._leak_ratios = np.zeros(self.config.leak_blocks)  # recent U/X leak levels (a ring)
        self._leak_next = self._leak_count = 0
        #: U's leak level relative to X's row (the median of the recent blocks'); 0: none
        self.leak_level = 0.0
        self.gain = np.ones(n_bins)  # (F,) the current gain on the analysis axis
        self.freqs_hz = np.arange(n_bins) * params.sr / params.n_fft

    def warm_up(self) -> None:
        """Load the compiled NMF kernels now rather than at the first note (see
        :meth:`player.follower.Follower.warm_up`)."""
        _support_weights(np.ones(4), 1, 30.0, np.empty(4))
        _kept_ratio(np.ones((2, self._W.shape[0])), self._W, 1.0, self._weights, True, np.empty(self._W.shape[1]))
        _smoothed_gain(self._history.copy(), 0, self._last, 1.0, 1.0, self.gain.copy())
        detune_spectrum(np.ones(4), 1.0, self.params, out=np.empty(4))
        update(np.ones((2, self._W.shape[1])), self._initial, self.priors, n_iter=1,
               fixed_components=self._fixed, update_w=False)

    def reset(self) -> None:
        """Forget activations and smoothing (after a jump)."""
        self._state = self._initial
        self._history[:] = 1.0
        self._last[:] = 1.0
        self._held = self.config.ratio_every - 1
        self._leak_next = self._leak_count = 0
        self.leak_level = 0.0
        self.gain = np.ones_like(self.gain)

    def due(self, sounding: bool, change: float | None = None) -> bool:
        """Whether this block's ratio is to be computed from data (``SeparationConfig.
        ratio_every``): call once per block with whether the soloist sounds now and how
        much U's observation changed since the last frame (Hellinger distance; None:
        unknown), and pass :meth:`update` X's and U's spectra only if it says so (computing
        X's is a cost of its own). The first sounding block after a silence, and one that
        changed by ``change_at`` or more, are always due."""
        if not sounding:
            self._held = self.config.ratio_every - 1
            return False
        self._held += 1
        if self._held < self.config.ratio_every and (change is None or change < self.config.change_at):
            return False
        self._held = 0
        return True

    def update(self, x_mag: np.ndarray | None, u_mag: np.ndarray | None, detune_cents: float,
               strength: float = 1.0) -> np.ndarray:
        """One block: returns the gain ``(F,)`` in [0, 1] on the analysis frequency axis.

        Args:
            x_mag: X's magnitude spectrum ``(F,)`` where U's frame lies, or None when the
                soloist is not sounding now (or the block is not :meth:`due`): then the
                last ratio computed from data is applied at ``strength`` (the decay of the
                notes last heard, or the note held), and with ``strength`` 0 X plays
                unmasked.
            u_mag: U's latest magnitude spectrum ``(F,)`` (analysis STFT scale).
            detune_cents: the player's detune relative to X (cents).
            strength: how surely the soloist is (or was just) sounding, in [0, 1].
        """
        cfg = self.config
        if cfg.alpha == 0.0 or strength <= 0.0:
            strength = 0.0  # X unmasked
        elif x_mag is not None and u_mag is not None:  # else the solo's decay: the last notes heard, fading
            self._last[:] = self._ratio(x_mag, u_mag, detune_cents)
        _smoothed_gain(self._history, self._next, self._last, float(strength), float(cfg.power), self.gain)
        self._next = (self._next + 1) % cfg.smooth_blocks
        return self.gain

    def _ratio(self, x_mag: np.ndarray, u_mag: np.ndarray, detune_cents: float) -> np.ndarray:
        M = self._rows
        x_row = np.multiply(x_mag, self.data_scale, out=M[0])
        u_mag = self._without_leak(x_row, np.asarray(u_mag, dtype=np.float64))
        u_row = detune_spectrum(u_mag, -detune_cents, self.params, out=self._u_row)
        x_total, u_total = x_row.sum(), u_row.sum()
        if x_total < self.config.min_counts_per_bin * x_row.size or u_total <= 0.0:
            return np.ones_like(x_row)
        np.multiply(u_row, x_total / u_total, out=M[1])
        self._state = update(M, self._state, self.priors, n_iter=self.config.n_iter,
                             fixed_components=self._fixed, update_w=False)
        use_support = self.config.support_db > 0
        if use_support:
            _support_weights(M[1], self.config.support_bins, self.config.support_db, self._weights)
        ratio = np.empty(x_row.size)
        _kept_ratio(self._state.H, self._W, self.config.alpha, self._weights, use_support, ratio)
        return ratio

    def _without_leak(self, x_row: np.ndarray, u_mag: np.ndarray) -> np.ndarray:
        """U's magnitude ``(F,)`` without the accompaniment it picked up from the speakers:
        ``max(u - level * x, leak_keep * u)``, the level tracked over the last blocks (see
        ``SeparationConfig.leak_quantile``). In U's own tuning (the leak is X's, not
        detuned), before U's row is scaled. Without a leak the level is not zero (U's
        solo and the room's noise next to X's partials): a little of the solo goes too."""
        cfg = self.config
        if cfg.leak_quantile <= 0.0:
            return u_mag
        sounding = x_row > 0.1 * float(x_row.max())  # within 20 dB of X's loudest bin
        if np.count_nonzero(sounding) >= 8:
            self._leak_ratios[self._leak_next] = linear_quantile(u_mag[sounding] / x_row[sounding], cfg.leak_quantile)
            self._leak_next = (self._leak_next + 1) % self._leak_ratios.size
            self._leak_count = min(self._leak_count + 1, self._leak_ratios.size)
            self.leak_level = linear_quantile(self._leak_ratios[: self._leak_count], 0.5)
        return spectral_subtract(u_mag, self.leak_level * x_row, cfg.leak_keep)


@kernel("void(float64[:, ::1], int64, float64[::1], float64, float64, float64[::1])")
def _smoothed_gain(history, row, last, strength, power, gain):  # pragma: no cover (numba)
    """This block's ratio ``1 - strength * (1 - last)`` into ``history[row]`` (``(blocks,
    F)``, a ring), and ``gain`` ``(F,)`` the mean of the ring's rows, to the ``power``."""
    blocks, n = history.shape
    for f in range(n):
        history[row, f] = 1.0 - strength * (1.0 - last[f])
    for f in range(n):
        acc = history[0, f]
        for r in range(1, blocks):
            acc += history[r, f]
        g = acc / blocks
        gain[f] = g if power == 1.0 else g ** power


@kernel("void(float64[:, ::1], float64[:, ::1], float64, float64[::1], boolean, float64[::1])")
def _kept_ratio(h, w, alpha, support, use_support, out):  # pragma: no cover (numba)
    """The accompaniment's share of X's bins: ``ratio = sum_i H'(i) W(i) / sum_i H(0, i)
    W(i)`` with ``H' = max(H(0) - alpha * H(1), 0)`` (``h`` ``(2, K)``, ``w`` ``(K, F)``),
    a tiny share of the loudest added to both (where the model explains almost nothing
    there is nothing to remove), clipped to [0, 1]; with ``use_support``, then ``1 - (1 -
    ratio) * support``."""
    k_n, n = w.shape
    tutti = np.zeros(n)
    out[:] = 0.0  # the kept sum, first
    for k in range(k_n):
        a, b = h[0, k], max(h[0, k] - alpha * h[1, k], 0.0)
        for f in range(n):
            tutti[f] += a * w[k, f]
            out[f] += b * w[k, f]
    top = 0.0
    for f in range(n):
        top = max(top, tutti[f])
    tiny = 1e-6 * top + 1e-12
    for f in range(n):
        ratio = min(max((out[f] + tiny) / (tutti[f] + tiny), 0.0), 1.0)
        out[f] = 1.0 - (1.0 - ratio) * support[f] if use_support else ratio


@kernel("void(float64[::1], int64, float64, float64[::1])")
def _support_weights(u_row, k, support_db, out):  # pragma: no cover (numba)
    """``out[i]``: 1 where the loudest of ``u_row[i-k : i+k+1]`` is within ``support_db`` of
    ``u_row``'s loudest bin, fading to 0 over the next 6 dB down. The sliding maximum by
    van Herk / Gil-Werman (running maxima forward and backward within blocks of the
    window's length): three comparisons per bin whatever ``k``."""
    n = u_row.size
    w = 2 * k + 1
    m = n + 2 * k  # u_row padded with k bins of -inf on each side
    padded = np.full(m, -np.inf)
    padded[k:k + n] = u_row
    top = 1e-12
    for i in range(n):
        top = max(top, u_row[i])
    forward = np.empty(m)  # max from the start of j's block to j
    backward = np.empty(m)  # max from j to the end of j's block
    for j in range(m):
        forward[j] = padded[j] if j % w == 0 else max(forward[j - 1], padded[j])
    for j in range(m - 1, -1, -1):
        backward[j] = padded[j] if (j % w == w - 1 or j == m - 1) else max(backward[j + 1], padded[j])
    # the weight is 1 above the top's -support_db and 0 below its -(support_db + 6): the
    # logarithm is only needed in between (a margin of 1e-6 keeps the rounding as it was)
    full = top * 10.0 ** (-support_db / 20.0) * (1.0 + 1e-6)
    none = top * 10.0 ** (-(support_db + 6.0) / 20.0) * (1.0 - 1e-6)
    for i in range(n):
        wide = max(backward[i], forward[i + w - 1], 1e-12)  # padded[i : i + w]
        if wide >= full:
            out[i] = 1.0
        elif wide <= none:
            out[i] = 0.0
        else:
            level = 20.0 * np.log10(wide / top)
            out[i] = min(max((level + support_db + 6.0) / 6.0, 0.0), 1.0)


class BinMap:
    """Carry a gain ``(F,)`` given at ``gain_freqs_hz`` onto another STFT's bins ``(B,)``:
    linear interpolation (``np.interp``'s values to the bit; above the gain's band its top
    value holds), the bins' places on the gain's axis found once.

    Args:
        gain_freqs_hz: the gain's frequencies ``(F,)``, ascending.
        bin_freqs_hz: the target bins' ``(B,)``.
    """

    def __init__(self, gain_freqs_hz: np.ndarray, bin_freqs_hz: np.ndarray) -> None:
        self.xp = np.ascontiguousarray(gain_freqs_hz, dtype=np.float64)
        self.x = np.ascontiguousarray(bin_freqs_hz, dtype=np.float64)
        # the last gain frequency at or below each bin's (-1: below the first)
        self.below = (np.searchsorted(self.xp, self.x, side="right") - 1).astype(np.int64)

    def __call__(self, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The gain ``(F,)`` float64 on the bins, into ``out`` ``(B,)`` float64."""
        _interp_at(np.ascontiguousarray(gain, dtype=np.float64), self.xp, self.x, self.below, out)
        return out


@kernel("void(float64[::1], float64[::1], float64[::1], int64[::1], float64[::1])")
def _interp_at(fp, xp, x, below, out):  # pragma: no cover (numba)
    """``np.interp(x, xp, fp)`` with ``below[i]`` the last ``xp`` at or below ``x[i]``: the
    same arithmetic as numpy's (its slope, its order of operations, its special cases)."""
    n = xp.size
    for i in range(x.size):
        j = below[i]
        v = x[i]
        if v != v:
            out[i] = v
        elif j < 0:
            out[i] = fp[0]
        elif j >= n - 1:
            out[i] = fp[n - 1]
        elif xp[j] == v:
            out[i] = fp[j]
        else:
            slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j])
            r = slope * (v - xp[j]) + fp[j]
            if r != r:  # a NaN one way: try the other
                r = slope * (v - xp[j + 1]) + fp[j + 1]
                if r != r and fp[j] == fp[j + 1]:
                    r = fp[j]
            out[i] = r


class PositionSpectrum:
    """X's magnitude spectrum at any position, read from the bundle's audio, on the
    analysis axis (``params.n_fft`` bins at ``params.sr``) whatever X's own rate.

    The window spans the analysis window's duration at X's rate (4096 samples at 44.1 kHz
    for 2048 at 22.05 kHz), so the bins fall on the analysis bins; magnitudes are scaled to
    the analysis STFT's level (the bases were learned on it).
    """

    def __init__(self, audio, params: AnalysisParams) -> None:
        self.audio = audio
        self.n_window = int(round(params.n_fft * audio.sr / params.sr))
        self.n_bins = params.n_bins
        self.window = analysis_window(self.n_window) * np.float32(params.sr / audio.sr)
        self._buf = np.zeros((self.n_window, audio.channels), dtype=np.float32)

    def at(self, x_s: float) -> np.ndarray:
        """Magnitude ``(n_bins,)`` of X's mid signal centred on ``x_s`` seconds."""
        centre = int(round(x_s * self.audio.sr))
        frame = self.audio.read(centre - self.n_window // 2, self.n_window, out=self._buf)
        mid = to_mono(frame) * self.window
        spectrum = np.abs(np.fft.rfft(mid))
        if spectrum.size >= self.n_bins:
            return spectrum[: self.n_bins]
        out = np.zeros(self.n_bins)  # X sampled below the analysis rate: nothing above its Nyquist
        out[: spectrum.size] = spectrum
        return out
