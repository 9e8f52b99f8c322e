"""Tests of shared.pgnmf: Poisson-Gamma NMF by variational Bayes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special as sp
from scipy.optimize import linear_sum_assignment

from shared import pgnmf as P
from shared.pgnmf import GammaPriors, PGNMFState

# ----------------------------------------------------------------------------------------
# synthetic data
# ----------------------------------------------------------------------------------------


def make_bases(K: int, F: int, seed: int, active: int = 10) -> np.ndarray:
    """K sparse nonnegative bases (K, F), ``active`` random bins each, rows sum to 1."""
    rng = np.random.default_rng(seed)
    W = np.zeros((K, F))
    for i in range(K):
        idx = rng.choice(F, size=active, replace=False)
        W[i, idx] = rng.gamma(2.0, 1.0, size=active)
    return W / W.sum(axis=1, keepdims=True)


def make_data(K=6, F=80, N=200, seed=0, level=3.0, active=10):
    """Poisson counts M ~ Poisson(H W); ``level`` ~ mean count of an active bin."""
    W = make_bases(K, F, seed, active)
    rng = np.random.default_rng(seed + 1000)
    H = rng.gamma(0.5, 2.0 * level * active, size=(N, K))
    M = rng.poisson(H @ W).astype(np.float64)
    return W, H, M


def matched_cosines(W_true: np.ndarray, W_est: np.ndarray) -> np.ndarray:
    a = W_true / np.linalg.norm(W_true, axis=1, keepdims=True)
    b = W_est / np.linalg.norm(W_est, axis=1, keepdims=True)
    C = a @ b.T
    rows, cols = linear_sum_assignment(-C)
    return C[rows, cols]


def assert_nondecreasing(trace, rel=1e-9):
    trace = np.asarray(trace)
    drops = trace[:-1] - trace[1:]  # > 0 where the bound decreased
    allowed = rel * np.abs(trace[:-1])
    worst = int(np.argmax(drops - allowed))
    assert np.all(drops <= allowed), f"bound decreased by {drops[worst]:.3g} at step {worst}: {trace[worst:worst + 2]}"


# ----------------------------------------------------------------------------------------
# 1. digamma kernel
# ----------------------------------------------------------------------------------------


def test_digamma_matches_scipy():
    x = np.concatenate([np.logspace(-6, 6, 4001), np.linspace(0.01, 20.0, 2001), [5.9999999999, 6.0, 6.0000000001]])
    ours = P.digamma(x)
    ref = sp.digamma(x)
    # absolute error where |psi| <= 1 (psi has a root at 1.4616...), relative elsewhere
    np.testing.assert_array_less(np.abs(ours - ref) / np.maximum(1.0, np.abs(ref)), 1e-10)
    assert P.digamma(1e-6) == pytest.approx(sp.digamma(1e-6), rel=1e-12)
    assert P.digamma(1e6) == pytest.approx(sp.digamma(1e6), rel=1e-12)
    # shape preserved; special values as scipy
    assert P.digamma(np.ones((3, 4))).shape == (3, 4)
    special = np.array([0.0, -0.0, -1.0, -2.0, np.inf, np.nan])
    np.testing.assert_array_equal(P.digamma(special), sp.digamma(special))
    neg = np.array([-0.5, -1.5, -2.3, -7.25])
    np.testing.assert_allclose(P.digamma(neg), sp.digamma(neg), rtol=1e-10)


def test_exp_digamma_matches_scipy():
    x = np.concatenate([np.logspace(-6, 6, 4001), np.linspace(0.01, 20.0, 2001)])
    ours = P._exp_digamma(x)
    ref = np.exp(sp.digamma(x))
    big = ref > 1e-290
    np.testing.assert_allclose(ours[big], ref[big], rtol=1e-10)
    assert np.all(ours[~big] < 1e-280) and np.all(ours >= 0)


# ----------------------------------------------------------------------------------------
# 2. the bound never decreases
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("priors", [GammaPriors(), GammaPriors(a=0.5, b=0.1, c=0.1, d=2.0)])
def test_bound_monotone_learn(priors):
    _, _, M = make_data(K=4, F=40, N=60, seed=3, level=2.0)
    state, trace = P.learn(M, 5, priors=priors, n_iter=150, bound_every=1, tol=0.0)
    assert trace.shape == (150,)
    assert np.all(np.isfinite(trace))
    assert trace[-1] > trace[0] + 1.0  # it actually learns
    assert_nondecreasing(trace)
    assert trace[-1] == pytest.approx(P.bound(M, state, priors), rel=1e-12)


def test_bound_monotone_update_with_fixed_components():
    W, _, M = make_data(K=4, F=40, N=80, seed=4, level=3.0)
    learned, _ = P.learn(M[:50], 6, n_iter=100)
    fixed = np.array([True, True, True, False, False, False])
    block = M[50:]
    state = P.init_state(block.shape[0], learned.w_shape, learned.w_rate)
    trace = [P.bound(block, state)]
    for _ in range(40):
        state = P.update(block, state, n_iter=1, fixed_components=fixed)
        trace.append(P.bound(block, state))
        np.testing.assert_array_equal(state.w_shape[fixed], learned.w_shape[fixed])
    assert trace[-1] > trace[0]
    assert_nondecreasing(trace)
    # activations only
    state = P.init_state(block.shape[0], learned.w_shape, learned.w_rate)
    trace = [P.bound(block, state)]
    for _ in range(20):
        state = P.update(block, state, n_iter=1, update_w=False)
        trace.append(P.bound(block, state))
    assert_nondecreasing(trace)


def test_converged_state_is_a_local_maximum_of_the_bound():
    """Consistency of updates and bound: perturbing any parameter block of a converged
    state, in either direction, lowers the bound (a wrong bound term would not)."""
    _, _, M = make_data(K=3, F=24, N=30, seed=5, level=4.0, active=6)
    priors = GammaPriors(a=1.5, b=0.5, c=0.7, d=1.5)
    state, trace = P.learn(M, 3, priors=priors, n_iter=3000, tol=1e-13, bound_every=50)
    b0 = P.bound(M, state, priors)
    rng = np.random.default_rng(0)
    for name in ("h_shape", "h_rate", "w_shape", "w_rate"):
        direction = rng.standard_normal(getattr(state, name).shape)
        for sign in (1.0, -1.0):
            arrays = {k: getattr(state, k) for k in ("h_shape", "h_rate", "w_shape", "w_rate")}
            arrays[name] = arrays[name] * np.exp(sign * 1e-3 * direction)
            assert P.bound(M, PGNMFState(**arrays), priors) < b0, (name, sign)


# ----------------------------------------------------------------------------------------
# 3. recovery of known bases
# ----------------------------------------------------------------------------------------


def test_recovers_sparse_bases():
    W_true, H_true, M = make_data(K=6, F=80, N=200, seed=1, level=3.0)
    state, trace = P.learn(M, 6, n_iter=300, seed=0)
    cos = matched_cosines(W_true, state.W)
    # random nonnegative bases score ~0.33 here; a correct learner gets > 0.99
    assert cos.mean() > 0.98, cos
    assert cos.min() > 0.95, cos
    # and the model explains the data: per-frame totals within Poisson noise
    rec = state.H @ state.W
    assert np.abs(rec.sum() / M.sum() - 1.0) < 0.02


# ----------------------------------------------------------------------------------------
# 4. sparsity prior
# ----------------------------------------------------------------------------------------


def test_smaller_c_gives_sparser_bases():
    _, _, M = make_data(K=6, F=80, N=100, seed=0, level=1.0)
    sparse, _ = P.learn(M, 6, priors=GammaPriors(c=0.1), n_iter=200, seed=0)
    dense, _ = P.learn(M, 6, priors=GammaPriors(c=2.0), n_iter=200, seed=0)
    s_sparse, s_dense = P.sparsity(sparse.W), P.sparsity(dense.W)
    assert s_sparse > s_dense + 0.05, (s_sparse, s_dense)


def test_sparsity_helper():
    assert P.sparsity(np.eye(5)) == pytest.approx(1.0)
    assert P.sparsity(np.ones((3, 7))) == pytest.approx(0.0)
    assert P.sparsity(np.zeros((2, 4))) == 0.0
    assert 0.0 < P.sparsity(np.array([1.0, 1.0, 0.0, 0.0])) < 1.0
    with pytest.raises(ValueError):
        P.sparsity(np.ones((2, 1)))


# ----------------------------------------------------------------------------------------
# 5. determinism
# ----------------------------------------------------------------------------------------


def test_deterministic_for_a_seed():
    _, _, M = make_data(K=4, F=30, N=40, seed=2)
    s1, t1 = P.learn(M, 4, n_iter=30, seed=7)
    s2, t2 = P.learn(M, 4, n_iter=30, seed=7)
    s3, _ = P.learn(M, 4, n_iter=30, seed=8)
    for name in ("h_shape", "h_rate", "w_shape", "w_rate"):
        np.testing.assert_array_equal(getattr(s1, name), getattr(s2, name))
    np.testing.assert_array_equal(t1, t2)
    assert not np.array_equal(s1.w_shape, s3.w_shape)


# ----------------------------------------------------------------------------------------
# 6. warm update with fixed bases
# ----------------------------------------------------------------------------------------


def _true_basis_state(N: int, W: np.ndarray) -> PGNMFState:
    """q(W) sharply concentrated on W (mean W, tiny variance)."""
    return P.init_state(N, W * 1e4 + 1e-6, np.full_like(W, 1e4))


def test_warm_update_recovers_activations_with_fixed_bases():
    K, N = 6, 20
    W = make_bases(K, 80, seed=0) * 100.0  # unnormalised scale, as learned offline
    rng = np.random.default_rng(11)
    H = rng.gamma(1.0, 5.0, size=(N, K))
    fixed = np.ones(K, dtype=bool)
    start = _true_basis_state(N, W)
    snapshot = {k: getattr(start, k).copy() for k in ("h_shape", "h_rate", "w_shape", "w_rate")}

    # noiseless data: only the (weak) prior separates the estimate from the truth
    out = P.update(H @ W, start, n_iter=10, fixed_components=fixed)
    assert np.linalg.norm(out.H - H) / np.linalg.norm(H) < 0.02
    # Poisson data: within the noise (about 4% here)
    M = rng.poisson(H @ W).astype(np.float64)
    out = P.update(M, start, n_iter=10, fixed_components=fixed)
    assert np.linalg.norm(out.H - H) / np.linalg.norm(H) < 0.08
    # far from the prior start
    assert np.linalg.norm(start.H - H) / np.linalg.norm(H) > 0.5

    # fixed q(W) bit-identical, input state untouched
    np.testing.assert_array_equal(out.w_shape, start.w_shape)
    np.testing.assert_array_equal(out.w_rate, start.w_rate)
    for k, v in snapshot.items():
        np.testing.assert_array_equal(getattr(start, k), v)


def test_update_fixed_rows_unchanged_free_rows_updated():
    _, _, M = make_data(K=4, F=50, N=60, seed=6)
    learned, _ = P.learn(M[:40], 5, n_iter=60)
    start = P.init_state(2, learned.w_shape, learned.w_rate, H0=learned.H[-1])
    before = {k: getattr(start, k).copy() for k in ("h_shape", "h_rate", "w_shape", "w_rate")}
    fixed = np.array([True, False, True, True, False])
    out = P.update(M[40:42], start, n_iter=5, fixed_components=fixed)
    assert out is not start
    assert out.h_shape.shape == (2, 5) and out.w_shape.shape == (5, 50)
    np.testing.assert_array_equal(out.w_shape[fixed], start.w_shape[fixed])
    np.testing.assert_array_equal(out.w_rate[fixed], start.w_rate[fixed])
    assert not np.array_equal(out.w_shape[~fixed], start.w_shape[~fixed])
    for k, v in before.items():
        np.testing.assert_array_equal(getattr(start, k), v)
    # update_w=False keeps all of q(W); chaining blocks works
    out2 = P.update(M[42:44], out, n_iter=5, update_w=False)
    np.testing.assert_array_equal(out2.w_shape, out.w_shape)
    np.testing.assert_array_equal(out2.w_rate, out.w_rate)
    # n_iter=1 five times == n_iter=5 (an update is a pure function of the state)
    s = start
    for _ in range(5):
        s = P.update(M[40:42], s, n_iter=1, fixed_components=fixed)
    np.testing.assert_allclose(s.h_shape, out.h_shape, rtol=1e-12)
    np.testing.assert_allclose(s.w_shape, out.w_shape, rtol=1e-12)
    with pytest.raises(ValueError):
        P.update(M[40:43], start)  # N mismatch
    with pytest.raises(ValueError):
        P.update(M[40:42], start, fixed_components=np.ones(4, dtype=bool))


# ----------------------------------------------------------------------------------------
# 7. validation and helpers
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["a", "b", "c", "d"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_priors_validation(field, value):
    with pytest.raises(ValueError):
        GammaPriors(**{field: value})


def test_priors_defaults_and_frozen():
    p = GammaPriors()
    assert (p.a, p.b, p.c, p.d) == (1.0, 1.0, 0.5, 1.0)
    with pytest.raises(AttributeError):
        p.a = 2.0  # type: ignore[misc]


def test_input_validation():
    with pytest.raises(ValueError):
        P.learn(-np.ones((4, 5)), 2)
    with pytest.raises(ValueError):
        P.learn(np.full((4, 5), np.nan), 2)
    with pytest.raises(ValueError):
        P.learn(np.ones((4, 5)), 0)
    with pytest.raises(ValueError):
        P.init_state(2, np.ones((3, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError):
        P.init_state(2, np.ones((3, 5)), np.ones((3, 5)), H0=np.ones((3, 3)))
    with pytest.raises(ValueError):
        PGNMFState(np.ones((2, 3)), np.ones((2, 3)), np.ones((4, 5)), np.ones((4, 5)))


def test_normalize_and_trace_semantics():
    _, _, M = make_data(K=3, F=30, N=40, seed=8)
    state, trace = P.learn(M, 3, n_iter=25, bound_every=10, tol=0.0)
    assert trace.shape == (3,)  # after iterations 10, 20 and 25
    norm = P.normalize(state)
    np.testing.assert_allclose(norm.W.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(norm.H @ norm.W, state.H @ state.W, rtol=1e-10)
    np.testing.assert_array_equal(norm.w_shape, state.w_shape)
    # early stopping on the relative improvement
    _, short = P.learn(M, 3, n_iter=1000, bound_every=5, tol=1e-3)
    assert len(short) < 200
    assert (short[-1] - short[-2]) / abs(short[-2]) < 1e-3
    calls = []
    P.learn(M, 3, n_iter=4, callback=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_init_state_from_priors_and_h0():
    W = make_bases(3, 20, seed=0)
    s = P.init_state(4, W + 1.0, np.ones_like(W), GammaPriors(a=2.0, b=4.0))
    np.testing.assert_allclose(s.H, 0.5)
    np.testing.assert_allclose(s.W, W + 1.0)
    h0 = np.array([1.0, 0.0, 3.0])
    s = P.init_state(2, W + 1.0, np.ones_like(W), H0=h0)
    assert s.H.shape == (2, 3)
    np.testing.assert_allclose(s.H, np.broadcast_to(h0, (2, 3)), atol=1e-12)
