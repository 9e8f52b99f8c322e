"""Poisson-Gamma (Bayesian) NMF by variational Bayes (Cemgil 2009).

Model (``N`` frames, ``F`` frequency bins, ``K`` components)::

    M(n, f) ~ Poisson( sum_i H(n, i) W(i, f) )
    H(n, i) ~ Gamma(a, b)          (shape a, rate b)
    W(i, f) ~ Gamma(c, d)          (c < 1 favours sparse bases)

``M`` is a nonnegative ``(N, F)`` array (frames x bins, e.g. magnitude spectra in the
linear amplitude units of the STFT; it need not be integer: the Poisson term is only used
through ``M log(HW) - HW``), ``H`` is ``(N, K)`` and ``W`` is ``(K, F)``.

Inference is mean-field variational Bayes with the auxiliary-variable (Jensen /
minorisation) bound on ``log sum_i H W``. The posterior factors are
``q(H(n,i)) = Gamma(h_shape, h_rate)`` and ``q(W(i,f)) = Gamma(w_shape, w_rate)``;
the updates use ``E[x] = shape / rate`` and ``exp(E[log x]) = exp(digamma(shape)) / rate``.

One iteration is Cemgil's sweep (Algorithm 1 of the paper)::

    R       = M / (Lh Lw + eps)                         # (N, F)
    Sh      = Lh * (R Lw^T);   Sw = Lw * (Lh^T R)       # source statistics, same q(S)
    h_shape = a + Sh,  h_rate = b + sum_f E[W](i, f)    # then refresh E[H], Lh
    w_shape = c + Sw,  w_rate = d + sum_n E[H](n, i)    # then refresh E[W], Lw

i.e. about ``3 N K F`` multiply-adds. Each step is an exact coordinate ascent on the
bound with the auxiliary distribution held fixed, and re-optimising the auxiliary
distribution (implicit in the next ``R``) can only raise it, so the bound returned by
:func:`bound` never decreases from one iteration to the next (tested).

Scale normalisation. Rescaling a component (``W(i,:) / s``, ``H(:,i) * s`` on the
variational parameters) leaves ``HW`` unchanged but *not* the bound: the Gamma priors
and entropies are not scale invariant, and the priors are exactly what removes the
scale ambiguity of the Bayesian model. Normalising inside the iterations would
therefore break the monotonicity of the bound, so the iterations never normalise.
:func:`learn` returns the un-normalised, bound-optimal state (so ``bound(M, state)``
equals the last entry of its trace); :func:`normalize` gives the "each basis sums to 1"
form for reports and comparisons. Do not feed normalised bases into :func:`update`
with the default priors: with ``sum_f E[W(i,f)] = 1`` the rate of ``q(H)`` becomes
``b + 1`` and the activations are shrunk by a factor ``1 / (1 + b)``; with the learned
scale ``sum_f E[W(i,f)]`` is large and the prior's ``b`` is negligible.

Numerics: digamma is computed in float64 by a numba kernel (recurrence up to x >= 6
plus the asymptotic series); shapes are floored at :data:`SHAPE_FLOOR` (never binding
for priors above it, since every shape is ``prior + statistic >= prior``) and
:data:`EPS` is added to the model ``Lh Lw`` before dividing (``exp(digamma(shape))``
underflows to 0 for shapes below ~1e-3).

Arrays inside a :class:`PGNMFState` are treated as immutable: the functions here never
modify them in place (the arrays they create are read-only) and a state caches the
``q(W)`` statistics (``exp(E[log W])`` and the row sums of ``E[W]``) so that repeated
live calls of :func:`update` with fixed bases do not recompute ``K x F`` digammas.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from shared.kernels import kernel

__all__ = [
    "EPS",
    "SHAPE_FLOOR",
    "GammaPriors",
    "PGNMFState",
    "bound",
    "digamma",
    "init_state",
    "learn",
    "normalize",
    "sparsity",
    "update",
]

#: Lower bound applied to every Gamma shape parameter.
SHAPE_FLOOR = 1e-10
#: Added to the model ``exp(E log H) @ exp(E log W)`` before dividing the data by it.
#: Tiny so that it never biases the updates, yet ``M / EPS`` cannot overflow.
EPS = 1e-150

FloatArray = NDArray[np.float64]


# ----------------------------------------------------------------------------------------
# digamma kernels (numba has no digamma)
# ----------------------------------------------------------------------------------------


@kernel()
def _psi_minus_log(y: float) -> float:
    """``psi(y) - log(y)`` by the asymptotic series; error < 2e-12 for ``y >= 6``."""
    r = 1.0 / y
    r2 = r * r
    return -0.5 * r - r2 * (
        1.0 / 12.0
        - r2 * (1.0 / 120.0 - r2 * (1.0 / 252.0 - r2 * (1.0 / 240.0 - r2 * (1.0 / 132.0 - r2 * (691.0 / 32760.0)))))
    )


@kernel()
def _shift(x: float) -> tuple[float, float]:
    """``(y, s)`` with ``y >= 6`` and ``psi(x) = psi(y) - s``, for ``x > 0``.

    Applies the recurrence ``psi(x) = psi(x + 1) - 1/x`` six times when ``x < 6``; the sum
    ``s = sum_{j<6} 1/(x + j)`` is accumulated as one fraction ``q / p`` (one division).
    """
    if x >= 6.0:
        return x, 0.0
    p = x
    q = 1.0
    for j in range(1, 6):
        t = x + j
        q = q * t + p
        p = p * t
    return x + 6.0, q / p


@kernel()
def _digamma_pos(x: float) -> float:
    y, s = _shift(x)
    return math.log(y) + _psi_minus_log(y) - s


@kernel()
def _digamma_scalar(x: float) -> float:
    if x > 0.0:
        return _digamma_pos(x)
    if x != x:
        return np.nan
    if x == 0.0:
        return -math.copysign(math.inf, x)  # psi(+0) = -inf, psi(-0) = +inf (as scipy)
    if x == math.floor(x) or x == -math.inf:
        return np.nan  # poles at the nonpositive integers
    # reflection: psi(1 - x) - psi(x) = pi cot(pi x)
    return _digamma_pos(1.0 - x) - math.pi / math.tan(math.pi * x)


@kernel()
def _exp_digamma_pos(x: float) -> float:
    """``exp(psi(x))`` for ``x > 0``: one exp, no log, two divisions (0 for x below ~1e-3)."""
    y, s = _shift(x)
    return y * math.exp(_psi_minus_log(y) - s)


@kernel("void(float64[::1], float64[::1])")
def _digamma_flat(x, out):
    for j in range(x.size):
        out[j] = _digamma_scalar(x[j])


@kernel("void(float64[::1], float64[::1])")
def _exp_digamma_flat(x, out):
    for j in range(x.size):
        out[j] = _exp_digamma_pos(x[j])


def digamma(x: ArrayLike) -> FloatArray:
    """Digamma function in float64 (numba kernel), elementwise; same shape as ``x``."""
    arr = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(arr)
    _digamma_flat(arr.reshape(-1), out.reshape(-1))
    return out


def _exp_digamma(x: ArrayLike) -> FloatArray:
    """``exp(digamma(x))`` for positive ``x`` (numba kernel); same shape as ``x``."""
    arr = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty_like(arr)
    _exp_digamma_flat(arr.reshape(-1), out.reshape(-1))
    return out


# ----------------------------------------------------------------------------------------
# fused elementwise kernels of the VB sweep
# ----------------------------------------------------------------------------------------


@kernel("void(float64[:, ::1], float64[:, ::1], float64[:, ::1], float64[::1])")
def _h_stats(h_shape, h_rate, Lh, eh_colsum):
    """``Lh = exp(E log H)`` and ``eh_colsum[i] = sum_n E[H(n,i)]`` from q(H) (N, K)."""
    N, K = h_shape.shape
    eh_colsum[:] = 0.0
    for n in range(N):
        for i in range(K):
            s = h_shape[n, i]
            r = h_rate[n, i]
            Lh[n, i] = _exp_digamma_pos(s) / r
            eh_colsum[i] += s / r


@kernel("void(float64[:, ::1], float64[:, ::1], int64[::1], float64[:, ::1], float64[::1])")
def _w_stats_rows(w_shape, w_rate, rows, Lw, ew_rowsum):
    """``Lw[i] = exp(E log W(i,:))`` and ``ew_rowsum[i] = sum_f E[W(i,f)]`` for i in rows."""
    F = w_shape.shape[1]
    for i in rows:
        acc = 0.0
        for f in range(F):
            s = w_shape[i, f]
            r = w_rate[i, f]
            Lw[i, f] = _exp_digamma_pos(s) / r
            acc += s / r
        ew_rowsum[i] = acc


@kernel("void(float64[:, ::1], float64[:, ::1], float64[:, ::1], float64[:, ::1], float64, float64, float64[::1], float64, "
        "float64[::1])")
def _update_h(h_shape, h_rate, Lh, RLw, a, b, ew_rowsum, floor, eh_colsum):
    """q(H) update from the source statistic ``Lh * RLw``; refreshes Lh and eh_colsum."""
    N, K = h_shape.shape
    eh_colsum[:] = 0.0
    for n in range(N):
        for i in range(K):
            s = a + Lh[n, i] * RLw[n, i]
            if s < floor:
                s = floor
            r = b + ew_rowsum[i]
            h_shape[n, i] = s
            h_rate[n, i] = r
            Lh[n, i] = _exp_digamma_pos(s) / r
            eh_colsum[i] += s / r


@kernel("void(float64[:, ::1], float64[:, ::1], float64[:, ::1], float64[:, ::1], int64[::1], float64, float64, float64[::1], "
        "float64, float64[::1])")
def _update_w_rows(w_shape, w_rate, Lw, LhR, rows, c, d, eh_colsum, floor, ew_rowsum):
    """q(W) update of the listed rows; ``LhR[j]`` is ``(Lh^T R)[rows[j]]``. Refreshes Lw, ew_rowsum."""
    F = w_shape.shape[1]
    for j in range(rows.size):
        i = rows[j]
        r = d + eh_colsum[i]
        inv_r = 1.0 / r
        acc = 0.0
        for f in range(F):
            s = c + Lw[i, f] * LhR[j, f]
            if s < floor:
                s = floor
            w_shape[i, f] = s
            w_rate[i, f] = r
            Lw[i, f] = _exp_digamma_pos(s) * inv_r
            acc += s
        ew_rowsum[i] = acc * inv_r


# ----------------------------------------------------------------------------------------
# public types
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GammaPriors:
    """Gamma priors (shape, rate): ``H ~ Gamma(a, b)``, ``W ~ Gamma(c, d)``; all must be > 0.

    The prior mean of ``H`` is ``a / b`` and of ``W`` is ``c / d`` (in the units of ``M``
    once multiplied); ``c < 1`` puts the prior mode of ``W`` at 0 (sparse bases).
    """

    a: float = 1.0
    b: float = 1.0
    c: float = 0.5
    d: float = 1.0

    def __post_init__(self) -> None:
        for name in ("a", "b", "c", "d"):
            value = getattr(self, name)
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"GammaPriors.{name} must be a number, got {value!r}") from None
            if not (math.isfinite(v) and v > 0.0):
                raise ValueError(f"GammaPriors.{name} must be finite and > 0, got {value!r}")


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@dataclass(eq=False)
class PGNMFState:
    """Variational posterior: ``q(H) = Gamma(h_shape, h_rate)``, ``q(W) = Gamma(w_shape, w_rate)``.

    Attributes:
        h_shape, h_rate: float64 ``(N, K)``, shape and rate of each activation.
        w_shape, w_rate: float64 ``(K, F)``, shape and rate of each basis entry.

    Treat the arrays as immutable (replace them instead of writing into them): derived
    statistics of ``q(W)`` are cached on the state, keyed on the array objects.
    """

    h_shape: FloatArray
    h_rate: FloatArray
    w_shape: FloatArray
    w_rate: FloatArray
    _w_cache: tuple | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("h_shape", "h_rate", "w_shape", "w_rate"):
            arr = np.ascontiguousarray(getattr(self, name), dtype=np.float64)
            if arr.ndim != 2:
                raise ValueError(f"PGNMFState.{name} must be 2-D, got shape {arr.shape}")
            object.__setattr__(self, name, arr)
        if self.h_shape.shape != self.h_rate.shape:
            raise ValueError(f"h_shape {self.h_shape.shape} and h_rate {self.h_rate.shape} differ")
        if self.w_shape.shape != self.w_rate.shape:
            raise ValueError(f"w_shape {self.w_shape.shape} and w_rate {self.w_rate.shape} differ")
        if self.h_shape.shape[1] != self.w_shape.shape[0]:
            raise ValueError(f"q(H) has K={self.h_shape.shape[1]} but q(W) has K={self.w_shape.shape[0]}")

    @property
    def N(self) -> int:
        """Number of frames."""
        return int(self.h_shape.shape[0])

    @property
    def K(self) -> int:
        """Number of components."""
        return int(self.w_shape.shape[0])

    @property
    def F(self) -> int:
        """Number of frequency bins."""
        return int(self.w_shape.shape[1])

    @property
    def H(self) -> FloatArray:
        """Posterior mean activations ``E[H]``, ``(N, K)`` (new array)."""
        return self.h_shape / self.h_rate

    @property
    def W(self) -> FloatArray:
        """Posterior mean bases ``E[W]``, ``(K, F)`` (new array)."""
        return self.w_shape / self.w_rate

    def _w_stats(self) -> tuple[FloatArray, FloatArray]:
        """Cached ``(exp(E log W) (K, F), sum_f E[W] (K,))`` (read-only arrays)."""
        cache = self._w_cache
        if cache is not None and cache[0] is self.w_shape and cache[1] is self.w_rate:
            return cache[2], cache[3]
        Lw = np.empty_like(self.w_shape)
        rowsum = np.empty(self.K)
        _w_stats_rows(self.w_shape, self.w_rate, np.arange(self.K), Lw, rowsum)
        self._set_w_cache(Lw, rowsum)
        return Lw, rowsum

    def _set_w_cache(self, Lw: FloatArray, rowsum: FloatArray) -> None:
        self._w_cache = (self.w_shape, self.w_rate, _readonly(Lw), _readonly(rowsum))


# ----------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------


def _as_data(M: ArrayLike) -> FloatArray:
    M = np.ascontiguousarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] < 1 or M.shape[1] < 1:
        raise ValueError(f"M must be a non-empty 2-D (N, F) array, got shape {M.shape}")
    if not (np.isfinite(M).all() and (M >= 0).all()):
        raise ValueError("M must be finite and nonnegative")
    return M


def _sweep(
    M: FloatArray,
    hs: FloatArray,
    hr: FloatArray,
    ws: FloatArray,
    wr: FloatArray,
    Lh: FloatArray,
    Lw: FloatArray,
    eh_colsum: FloatArray,
    ew_rowsum: FloatArray,
    priors: GammaPriors,
    free_rows: np.ndarray | None,
    Z: FloatArray,
    RLw: FloatArray,
) -> None:
    """One VB iteration in place. ``free_rows``: int64 indices of the W rows to update
    (``None``: update no W row). ``Z`` (N, F) and ``RLw`` (N, K) are work buffers."""
    np.matmul(Lh, Lw, out=Z)
    Z += EPS
    np.divide(M, Z, out=Z)  # Z now holds R = M / (Lh Lw)
    np.matmul(Z, Lw.T, out=RLw)
    if free_rows is not None and free_rows.size:
        LhT = Lh.T if free_rows.size == Lh.shape[1] else Lh[:, free_rows].T
        LhR = LhT @ Z  # (K_free, F), from the same q(S) as the H statistic (Cemgil's sweep)
    _update_h(hs, hr, Lh, RLw, float(priors.a), float(priors.b), ew_rowsum, SHAPE_FLOOR, eh_colsum)
    if free_rows is not None and free_rows.size:
        _update_w_rows(ws, wr, Lw, LhR, free_rows, float(priors.c), float(priors.d), eh_colsum, SHAPE_FLOOR, ew_rowsum)


# ----------------------------------------------------------------------------------------
# public functions
# ----------------------------------------------------------------------------------------


def bound(M: ArrayLike, state: PGNMFState, priors: GammaPriors = GammaPriors()) -> float:
    """Variational lower bound on ``log p(M)`` (nats) for the posterior ``state``.

    Includes the Poisson likelihood under the optimal auxiliary (Jensen) distribution,
    ``sum M log(exp(E log H) exp(E log W)) - sum E[H] E[W] - sum log Gamma(M + 1)``,
    the expected Gamma log priors and the Gamma entropies of ``q(H)`` and ``q(W)``.
    Costs ``N K F`` multiply-adds plus ``(N + F) K`` digammas/lgammas; ``M`` is ``(N, F)``.
    """
    from scipy.special import digamma as _sp_digamma  # offline only: light player start-up
    from scipy.special import gammaln

    M = _as_data(M)
    if M.shape != (state.N, state.F):
        raise ValueError(f"M has shape {M.shape}, the state expects {(state.N, state.F)}")
    a, b, c, d = float(priors.a), float(priors.b), float(priors.c), float(priors.d)

    def gamma_terms(shape: FloatArray, rate: FloatArray, p_shape: float, p_rate: float):
        psi = _sp_digamma(shape)
        log_rate = np.log(rate)
        elog = psi - log_rate
        ex = shape / rate
        prior = shape.size * (p_shape * math.log(p_rate) - math.lgamma(p_shape))
        prior += (p_shape - 1.0) * elog.sum() - p_rate * ex.sum()
        entropy = np.sum(shape - log_rate + gammaln(shape) + (1.0 - shape) * psi)
        return elog, ex, prior + entropy

    elog_h, eh, kl_h = gamma_terms(state.h_shape, state.h_rate, a, b)
    elog_w, ew, kl_w = gamma_terms(state.w_shape, state.w_rate, c, d)

    # log sum_i exp(Elog H(n,i) + Elog W(i,f)), shifted by row/column maxima against
    # underflow; in blocks of rows so that the temporaries stay ~8 MB whatever N is.
    mh = elog_h.max(axis=1, keepdims=True)
    mw = elog_w.max(axis=0, keepdims=True)
    exp_w = np.exp(elog_w - mw)
    lik = -float(eh.sum(axis=0) @ ew.sum(axis=1))
    step = max(1, (1 << 20) // state.F)
    for n0 in range(0, state.N, step):
        Mc = M[n0 : n0 + step]
        Z = np.exp(elog_h[n0 : n0 + step] - mh[n0 : n0 + step]) @ exp_w
        with np.errstate(divide="ignore"):
            logZ = np.log(Z)
        logZ += mh[n0 : n0 + step]
        logZ += mw
        pos = Mc > 0
        lik += float(Mc[pos] @ logZ[pos])
        lik -= float(gammaln(Mc + 1.0).sum())
    return float(lik + kl_h + kl_w)


def learn(
    M: ArrayLike,
    n_components: int,
    priors: GammaPriors = GammaPriors(),
    n_iter: int = 200,
    seed: int = 0,
    tol: float = 1e-5,
    bound_every: int = 10,
    callback: Callable[[int, int], None] | None = None,
) -> tuple[PGNMFState, FloatArray]:
    """Batch VB learning of both ``q(H)`` and ``q(W)`` from a random start.

    Args:
        M: nonnegative data ``(N, F)`` (frames x bins, e.g. magnitude spectrogram).
        n_components: ``K``.
        priors: Gamma priors.
        n_iter: maximum number of VB iterations.
        seed: seed of ``np.random.default_rng`` for the initialisation (deterministic).
        tol: stop when the relative bound improvement between two evaluations,
            ``(B_k - B_{k-1}) / |B_{k-1}|``, falls below ``tol`` (``tol <= 0``: never stop early).
        bound_every: evaluate the bound every this many iterations (and after the last one).
        callback: called as ``callback(iteration, n_iter)`` after each iteration (1-based).

    Returns:
        ``(state, trace)``: the final (un-normalised, see the module docstring; use
        :func:`normalize` for unit-sum bases) posterior with ``N`` rows, and the bound
        values (nats) after iterations ``bound_every, 2 bound_every, ...`` and the last one.
        ``trace[-1] == bound(M, state, priors)``.
    """
    M = _as_data(M)
    N, F = M.shape
    K = int(n_components)
    if K < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    n_iter = int(n_iter)
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    bound_every = int(bound_every)
    if bound_every < 1:
        raise ValueError(f"bound_every must be >= 1, got {bound_every}")

    # Initialisation: E[H], E[W] random exponential draws scaled so that E[H] E[W] matches
    # the mean of M; q = Gamma(shape 1, rate 1 / mean).
    rng = np.random.default_rng(seed)
    mean = float(M.mean())
    scale = math.sqrt(mean / K) if mean > 0 else 1.0
    hs = np.ones((N, K))
    ws = np.ones((K, F))
    hr = 1.0 / np.maximum(rng.gamma(1.0, scale, size=(N, K)), 1e-12 * scale)
    wr = 1.0 / np.maximum(rng.gamma(1.0, scale, size=(K, F)), 1e-12 * scale)

    Lh = np.empty((N, K))
    Lw = np.empty((K, F))
    eh_colsum = np.empty(K)
    ew_rowsum = np.empty(K)
    _h_stats(hs, hr, Lh, eh_colsum)
    all_rows = np.arange(K)
    _w_stats_rows(ws, wr, all_rows, Lw, ew_rowsum)
    Z = np.empty((N, F))
    RLw = np.empty((N, K))

    def snapshot() -> PGNMFState:
        return PGNMFState(hs, hr, ws, wr)

    trace: list[float] = []
    last_eval = 0
    for it in range(1, n_iter + 1):
        _sweep(M, hs, hr, ws, wr, Lh, Lw, eh_colsum, ew_rowsum, priors, all_rows, Z, RLw)
        if callback is not None:
            callback(it, n_iter)
        if it % bound_every == 0 or it == n_iter:
            trace.append(bound(M, snapshot(), priors))
            last_eval = it
            if tol > 0 and len(trace) >= 2:
                prev = trace[-2]
                if (trace[-1] - prev) / max(abs(prev), 1e-300) < tol:
                    break
    if last_eval == 0:  # n_iter == 0
        trace.append(bound(M, snapshot(), priors))

    state = PGNMFState(_readonly(hs), _readonly(hr), _readonly(ws), _readonly(wr))
    state._set_w_cache(Lw, ew_rowsum)
    return state, np.asarray(trace, dtype=np.float64)


def update(
    M: ArrayLike,
    state: PGNMFState,
    priors: GammaPriors = GammaPriors(),
    n_iter: int = 5,
    fixed_components: ArrayLike | None = None,
    update_w: bool = True,
) -> PGNMFState:
    """Warm-started VB iterations on a block ``M`` ``(N, F)`` (e.g. N = 1..2 live frames).

    Starts from ``state`` (its ``q(H)`` must have ``N`` rows: build it with
    :func:`init_state`), runs ``n_iter`` sweeps and returns a new state. ``state`` is not
    modified (its cached q(W) statistics may be filled in). Rows of ``q(W)`` flagged in
    ``fixed_components`` (bool ``(K,)``, e.g. accompaniment bases learned offline) are
    kept bit-identical; the other rows are re-estimated from this block (VB on ``M`` alone,
    ``q(W) = Gamma(c + stat, d + sum_n E[H])``) when ``update_w`` is true: their incoming
    ``q(W)`` only seeds the first sweep, it is not carried over as a prior.

    Cost per iteration: ``2 N K F`` multiply-adds plus ``N K`` digammas for ``q(H)``, and
    ``N K_free F`` multiply-adds and ``K_free F`` digammas for the free rows of ``q(W)``.
    If no row of ``q(W)`` changes, the returned state shares the (read-only) ``q(W)`` arrays
    and cache of ``state``; otherwise they are copied once per call.
    """
    M = _as_data(M)
    if M.shape != (state.N, state.F):
        raise ValueError(f"M has shape {M.shape}, the state expects {(state.N, state.F)}")
    n_iter = int(n_iter)
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    K = state.K
    if update_w:
        if fixed_components is None:
            free_rows = np.arange(K)
        else:
            fixed = np.asarray(fixed_components)
            if fixed.shape != (K,) or fixed.dtype != np.bool_:
                raise ValueError(f"fixed_components must be a boolean array of shape ({K},)")
            free_rows = np.flatnonzero(~fixed)
    else:
        free_rows = np.empty(0, dtype=np.intp)
    free_rows = free_rows.astype(np.int64, copy=False)

    Lw0, ew_rowsum0 = state._w_stats()
    if n_iter == 0:
        out = PGNMFState(state.h_shape, state.h_rate, state.w_shape, state.w_rate)
        out._w_cache = state._w_cache
        return out

    N = state.N
    hs = np.empty((N, K))
    hr = np.empty((N, K))
    Lh = np.empty((N, K))
    eh_colsum = np.empty(K)
    _h_stats(state.h_shape, state.h_rate, Lh, eh_colsum)
    if free_rows.size:
        ws, wr = state.w_shape.copy(), state.w_rate.copy()
        Lw, ew_rowsum = Lw0.copy(), ew_rowsum0.copy()
    else:  # read-only sharing: nothing below writes into q(W)
        ws, wr, Lw, ew_rowsum = state.w_shape, state.w_rate, Lw0, ew_rowsum0
    Z = np.empty_like(M)
    RLw = np.empty((N, K))
    for _ in range(n_iter):
        _sweep(M, hs, hr, ws, wr, Lh, Lw, eh_colsum, ew_rowsum, priors, free_rows, Z, RLw)

    if free_rows.size:
        out = PGNMFState(_readonly(hs), _readonly(hr), _readonly(ws), _readonly(wr))
        out._set_w_cache(Lw, ew_rowsum)
    else:
        out = PGNMFState(_readonly(hs), _readonly(hr), ws, wr)
        out._w_cache = state._w_cache
    return out


def init_state(
    N: int,
    W_shape: ArrayLike,
    W_rate: ArrayLike,
    priors: GammaPriors = GammaPriors(),
    H0: ArrayLike | None = None,
) -> PGNMFState:
    """Warm-start state for :func:`update` from stored bases.

    Args:
        N: number of frames of the blocks to be processed.
        W_shape, W_rate: ``q(W)`` parameters ``(K, F)``, positive (copied once).
        priors: ``q(H)`` starts at the prior ``Gamma(a, b)`` when ``H0`` is None.
        H0: initial activations, ``(N, K)`` or ``(K,)`` (broadcast over frames), >= 0:
            ``q(H) = Gamma(1, 1 / H0)`` (mean ``H0``; zeros are floored at 1e-12).
    """
    N = int(N)
    if N < 1:
        raise ValueError(f"N must be >= 1, got {N}")
    ws = np.array(W_shape, dtype=np.float64, order="C", copy=True)
    wr = np.array(W_rate, dtype=np.float64, order="C", copy=True)
    if ws.ndim != 2 or ws.shape != wr.shape:
        raise ValueError(f"W_shape {ws.shape} and W_rate {wr.shape} must be equal (K, F) shapes")
    if not (np.all(ws > 0) and np.all(wr > 0) and np.isfinite(ws).all() and np.isfinite(wr).all()):
        raise ValueError("W_shape and W_rate must be finite and > 0")
    K = ws.shape[0]
    if H0 is None:
        hs = np.full((N, K), float(priors.a))
        hr = np.full((N, K), float(priors.b))
    else:
        h0 = np.asarray(H0, dtype=np.float64)
        if h0.shape not in ((N, K), (K,)):
            raise ValueError(f"H0 must have shape ({N}, {K}) or ({K},), got {h0.shape}")
        if not (np.isfinite(h0).all() and (h0 >= 0).all()):
            raise ValueError("H0 must be finite and >= 0")
        hs = np.ones((N, K))
        hr = np.broadcast_to(1.0 / np.maximum(h0, 1e-12), (N, K)).copy()
    return PGNMFState(_readonly(hs), _readonly(hr), _readonly(ws), _readonly(wr))


def normalize(state: PGNMFState) -> PGNMFState:
    """Rescale each component so that ``sum_f E[W(i, f)] = 1`` (``H(:, i)`` scaled up to match).

    Exact on the variational parameters (``w_rate *= s_i``, ``h_rate /= s_i`` with
    ``s_i = sum_f E[W(i,f)]``), so ``E[H] E[W]`` and ``exp(E log H) exp(E log W)`` are
    unchanged, but the bound is not (priors and entropies are not scale invariant): use it
    for reports and comparisons, not as a start for further VB with the same priors.
    """
    s = state.W.sum(axis=1)
    s = np.where(s > 0, s, 1.0)
    return PGNMFState(
        _readonly(state.h_shape.copy()),
        _readonly(state.h_rate / s[None, :]),
        _readonly(state.w_shape.copy()),
        _readonly(state.w_rate * s[:, None]),
    )


def sparsity(W: ArrayLike) -> float:
    """Mean Hoyer sparsity of the rows of ``W`` ``(K, F)`` (or one row ``(F,)``), F >= 2.

    Per row: ``(sqrt(F) - |w|_1 / |w|_2) / (sqrt(F) - 1)``: 0 for a constant row, 1 for a
    one-hot row. All-zero rows count as 0.
    """
    W = np.asarray(W, dtype=np.float64)
    if W.ndim == 1:
        W = W[None, :]
    if W.ndim != 2 or W.shape[0] < 1 or W.shape[1] < 2:
        raise ValueError(f"W must be (K, F) with K >= 1 and F >= 2, got shape {W.shape}")
    sq = math.sqrt(W.shape[1])
    l1 = np.abs(W).sum(axis=1)
    l2 = np.sqrt(np.square(W).sum(axis=1))
    ok = l2 > 0
    h = np.zeros(W.shape[0])
    h[ok] = (sq - l1[ok] / l2[ok]) / (sq - 1.0)
    return float(np.clip(h, 0.0, 1.0).mean())
