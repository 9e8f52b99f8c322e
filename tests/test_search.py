"""The global search: its short-context scores equal a direct computation from the
templates and U's context (its per-state similarity cache is never stale: across sweeps,
a piece longer than one slice, the ring of context columns wrapping round, a change of
template variant, silenced states), and it finds a player who jumped far; a long piece is
screened on bands and its places scored at full resolution."""

from dataclasses import replace

import numpy as np
import pytest

from player.search import GlobalSearch, SearchConfig
from shared.spectral import AnalysisParams, QuantizedTemplates

PARAMS = AnalysisParams()


def random_templates(n_states: int, seed: int = 0) -> tuple[QuantizedTemplates, np.ndarray]:
    """Quantised random log templates ``(n_detune, n_states, n_obs)`` (each variant its own)
    and the normalised spectra ``(n_states, n_obs)`` of variant 0's states."""
    rng = np.random.default_rng(seed)
    n_obs = PARAMS.n_obs_bins
    spectra = rng.gamma(0.3, size=(len(PARAMS.detune_cents), n_states, n_obs)) + 1e-3
    spectra /= spectra.sum(axis=2, keepdims=True)
    centre = PARAMS.detune_cents.index(0.0)
    return QuantizedTemplates.from_log(np.log(spectra).astype(np.float32)), spectra[centre]


def direct_scores(search: GlobalSearch, ends: np.ndarray) -> np.ndarray:
    """The short context's best-over-tempo weighted mean log-likelihood at each end state,
    from the dequantised templates of the search's present variant (no cache)."""
    log_t = search.templates.dequantize(search._detune).astype(np.float64)  # (n_states, n_obs)
    offset = search.templates.offset
    # an observation sums to 1 (the context's unfilled ones are 0: then the lowest code's value)
    sim = offset + (log_t - offset) @ search.u_obs[: search.ctx].astype(np.float64).T  # (n_states, ctx)
    w = search.u_active[: search.ctx].astype(np.float64)
    out = np.empty(ends.size)
    for i, end in enumerate(ends):
        rows = end - search._lags  # (T, ctx)
        lo = max(0, int(ends[0]) - search.max_lag)  # rows before the piece: the worst of the slice
        worst = sim[lo: int(ends[-1]) + 1].min()
        vals = np.where(rows >= 0, sim[np.maximum(rows, 0), np.arange(search.ctx)], worst)
        out[i] = (vals @ w / w.sum()).max()
    return out


@pytest.mark.parametrize("penalised", [False, True])
def test_cached_scores_equal_the_direct_computation(penalised):
    n_states = 900  # longer than one slice: each sweep takes several frames
    templates, spectra = random_templates(n_states)
    if penalised:
        penalty = np.zeros(n_states, dtype=np.float32)
        penalty[300:340] = 2.0  # a silence of X
        templates = templates.with_penalty(penalty)
    search = GlobalSearch(templates, PARAMS, SearchConfig(slice_states=250))
    rng = np.random.default_rng(1)
    checks = 0
    for frame in range(int(12.0 / PARAMS.fine_period_s)):  # the context's ring wraps round many times
        state = 100 + frame // PARAMS.fine_per_coarse
        u = spectra[state] * rng.gamma(4.0, size=spectra.shape[1])
        cents = 0.0 if frame < 300 else 25.0  # the tuning estimate moves: another variant
        search.step((u / u.sum()).astype(np.float32), active=frame % 37 != 0, detune_cents=cents,
                    position_states=float(state))
        if frame % 23 == 0 and search.u_active[: search.ctx].sum() > 0:
            for lo in (0, 10, 420, n_states - 40):  # the piece's start (rows before it) and its end
                ends = np.arange(lo, lo + 40)
                got, _ = search._scores(ends)
                np.testing.assert_allclose(got, direct_scores(search, ends), rtol=0, atol=2e-4)
                checks += 1
    assert checks > 30


def test_the_search_finds_a_player_who_jumped_far():
    """U plays states 100-160 of X, then from state 700 on: within 3 s of the jump the search
    proposes a place within half a second of where the player is."""
    found_after = _seconds_to_find(speed=1.0, told=1.0)
    assert found_after is not None and found_after < 3.0


def _seconds_to_find(speed: float, told: float, config: SearchConfig | None = None) -> float | None:
    """U plays X from state 100 for 6 s and then, after a jump, from state 700 on, both at
    ``speed`` times the recording's tempo; the search is told the player's tempo is
    ``told``. Seconds from the jump until it proposes a place within half a second (of
    X) of the player, None if not within 6 s."""
    templates, spectra = random_templates(900, seed=2)
    search = GlobalSearch(templates, PARAMS, config, tempo=told)
    rng = np.random.default_rng(3)
    per_state, jump = PARAMS.fine_per_coarse, int(6.0 / PARAMS.fine_period_s)
    for frame in range(int(12.0 / PARAMS.fine_period_s)):
        since = frame - jump
        place = 700 + speed * since / per_state if since >= 0 else 100 + speed * frame / per_state
        u = spectra[int(place)] * rng.gamma(4.0, size=spectra.shape[1])
        filter_place = 100.0 + speed * frame / per_state  # the filter carries on where it was
        search.step((u / u.sum()).astype(np.float32), active=True, detune_cents=0.0, position_states=filter_place)
        if since >= 0:
            now = 700 + speed * (since + 1) / per_state
            if any(abs(c.state - now) * PARAMS.coarse_period_s < 0.5 for c in search.candidates(filter_place)):
                return (since + 1) * PARAMS.fine_period_s
    return None


def test_a_search_told_a_slower_tempo_holds_as_much_music_and_finds_the_player():
    """Told the player practises at 55 % of the recording's tempo, the search's tempo
    hypotheses are around it and its short context holds 2 s of the recording's music (3.6
    s of playing; a faster player's is not shortened); it finds a player who jumped far,
    the longer context filling with the new place first (1.4 s here; 0.8 s for the same
    jump at the recording's tempo)."""
    found = _seconds_to_find(speed=0.55, told=0.55)
    assert found is not None and found < 2.5
    search = GlobalSearch(random_templates(100)[0], PARAMS, tempo=0.55)
    assert search.ctx == round(2.0 / 0.55 / PARAMS.coarse_period_s)
    assert np.allclose(search._tempos, np.array(SearchConfig().tempos) * 0.55)
    assert GlobalSearch(random_templates(100)[0], PARAMS, tempo=1.3).ctx == 20  # never shortened


def test_a_long_piece_is_screened_on_bands_and_its_places_scored_at_full_resolution():
    """A piece that takes longer than a state period to sweep is screened on band energies;
    the places a sweep keeps carry full-resolution scores (the direct computation at their
    state), and it still finds a player who jumped far as soon as the full sweep does."""
    assert GlobalSearch(random_templates(900)[0], PARAMS, SearchConfig(slice_states=250))._bands is None
    config = SearchConfig(slice_states=100)  # 900 states: 9 frames a sweep, longer than a state period
    search = GlobalSearch(random_templates(900, seed=2)[0], PARAMS, config)
    assert search._bands is not None and search._bands.n_bands < PARAMS.n_obs_bins / 3
    found_bands = _seconds_to_find(speed=1.0, told=1.0, config=config)
    found_full = _seconds_to_find(speed=1.0, told=1.0, config=replace(config, screen_bands_per_octave=0))
    assert found_bands is not None and found_full is not None and found_bands <= found_full + 0.2

    templates, spectra = random_templates(900, seed=4)
    search = GlobalSearch(templates, PARAMS, config)
    rng = np.random.default_rng(5)
    checked = 0
    for frame in range(int(6.0 / PARAMS.fine_period_s)):
        state = 300 + frame // PARAMS.fine_per_coarse
        u = spectra[state] * rng.gamma(4.0, size=spectra.shape[1])
        search.step((u / u.sum()).astype(np.float32), active=True, detune_cents=0.0, position_states=50.0)
        for score, place, _, at in search._latest_far + search._latest_free:
            if at == search._frame:  # scored in this frame's sweep: on this frame's context
                assert score == pytest.approx(direct_scores(search, np.array([int(round(place))]))[0], abs=2e-3)
                checked += 1
    assert checked > 0
