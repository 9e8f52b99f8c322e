"""The room-noise subtraction: learned from noise frames, applied only when the room is loud
relative to the playing, with the likelihood's temper lowered to match; and the follower
on a take drowned in white noise (10 dB SNR), which it loses without the subtraction."""

import numpy as np

from player.denoise import DenoiseConfig, NoiseProfile
from player.engine import EngineConfig
from player.follower import FollowerConfig
from shared.synth import make_case

from .follow_helpers import bundle_for, causal_errors, follow, pct_within

N_BINS = 257
FRAME_S = 0.02


def db(mag: np.ndarray) -> float:
    return float(10 * np.log10(np.dot(mag, mag)))


def room_and_note(snr_db: float, seed: int = 0):
    """A flat noise magnitude spectrum and a harmonic note ``snr_db`` louder (band power)."""
    rng = np.random.default_rng(seed)
    noise = np.abs(rng.normal(1.0, 0.1, N_BINS)).astype(np.float32)
    note = np.zeros(N_BINS, dtype=np.float32)
    note[20::20] = 1.0
    note *= np.sqrt(10 ** ((db(noise) + snr_db) / 10) / np.dot(note, note))
    return noise, note


def listen(profile: NoiseProfile, noise: np.ndarray, note: np.ndarray, seconds: float = 2.0) -> None:
    """A second of room, then ``seconds`` of the note over the room."""
    for _ in range(int(1.0 / FRAME_S)):
        profile.observe(noise, db(noise), active=False, is_noise=True)
    for _ in range(int(seconds / FRAME_S)):
        profile.observe(note + noise, db(note + noise), active=True, is_noise=False)


def test_a_quiet_room_is_left_alone():
    noise, note = room_and_note(snr_db=40.0)
    profile = NoiseProfile(N_BINS, FRAME_S)
    listen(profile, noise, note)
    assert profile.weight == 0.0 and profile.evidence_scale == 1.0
    frame = note + noise
    assert profile.clean(frame) is frame


def test_a_loud_room_is_subtracted_and_the_evidence_tempered():
    cfg = DenoiseConfig()
    noise, note = room_and_note(snr_db=10.0)
    profile = NoiseProfile(N_BINS, FRAME_S, cfg)
    listen(profile, noise, note)
    assert profile.weight == 1.0
    assert np.isclose(profile.evidence_scale, cfg.kappa_ratio)
    cleaned = profile.clean(note + noise)
    partials = note > 0
    # between the partials only a trace of the room is left; the partials stand
    assert np.median(cleaned[~partials]) < 0.2 * np.median(noise)
    assert np.allclose(cleaned[partials], note[partials], rtol=0.05)
    assert np.all(cleaned >= cfg.keep * (note + noise) - 1e-6)


def test_the_subtraction_fades_in_between_the_two_snrs():
    cfg = DenoiseConfig()
    weights = []
    for snr in (cfg.snr_off_db + 5, (cfg.snr_off_db + cfg.snr_full_db) / 2, cfg.snr_full_db - 5):
        noise, note = room_and_note(snr_db=snr)
        profile = NoiseProfile(N_BINS, FRAME_S, cfg)
        listen(profile, noise, note)
        weights.append(profile.weight)
    assert weights[0] == 0.0 and 0.2 < weights[1] < 0.8 and weights[2] == 1.0


def test_nothing_is_subtracted_before_the_player_is_heard():
    """The first note's soft attack is not the playing level: no verdict before min_playing_s."""
    noise, note = room_and_note(snr_db=10.0)
    profile = NoiseProfile(N_BINS, FRAME_S)
    listen(profile, noise, note, seconds=0.2)
    assert profile.weight == 0.0


def test_follows_a_take_drowned_in_white_noise(tmp_path):
    """10 dB SNR white noise lifts every bin of the compressed features near the partials'
    level: the features look alike everywhere, and the recording's silence (a uniform
    template) explains them best. Without the subtraction, and without the penalty on
    playing where the recording is silent, the follower runs into the silence after the
    music and finds almost no onset; with either, most."""
    case = make_case(n_notes=30, seed=5, snr_db=10.0)
    bundle = bundle_for(case, tmp_path)

    def within(denoise: bool, silence_penalty: float) -> tuple[float, float]:
        config = EngineConfig(denoise=DenoiseConfig(enabled=denoise), follower=FollowerConfig(silence_penalty=silence_penalty))
        err = causal_errors(follow(bundle, case.u, case.sr, config), case.onsets_u, case.onsets_x)
        return pct_within(err, 0.10), pct_within(err, 0.25)

    penalty = FollowerConfig().silence_penalty
    for denoise, silence_penalty in ((True, penalty), (True, 0.0), (False, penalty)):
        within_100, within_250 = within(denoise, silence_penalty)
        assert within_100 >= 75 and within_250 >= 90, (denoise, silence_penalty, within_100, within_250)
    assert within(False, 0.0)[1] < 50  # the take is a real test of both
