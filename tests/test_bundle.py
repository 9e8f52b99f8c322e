"""The bundle: round trip, block-wise audio, atomic writes, determinism, and validation of
untrusted files (each broken bundle gives a specific one-line BundleError)."""

import shutil

import h5py
import numpy as np
import pytest
import soundfile as sf

from player.config import EngineConfig
from player.engine import Engine
from prep.compare import diff_bundles
from prep.pipeline import build_bundle
from shared.audio import music_start_s
from shared.bundle import FORMAT_VERSION, load_bundle
from shared.errors import BundleError, OutputError
from shared.spectral import AnalysisParams, frame_power, onset_filterbank

from .conftest import FAST_BUILD


def test_round_trip(bundle_path, x_wav, case):
    with load_bundle(bundle_path) as b:
        assert b.params == AnalysisParams()
        assert b.source.name == x_wav.name and len(b.source.sha256) == 64
        assert abs(b.source.duration_s - len(case.x) / case.sr) < 1e-6
        assert b.audio.sr == case.sr and b.audio.channels == 2 and b.audio.codec == "flac"
        assert b.templates.q.shape == (5, b.n_states, b.params.n_obs_bins) and b.templates.q.dtype == np.uint8
        assert b.state_mag.shape == (b.n_states, b.params.n_bins)
        assert abs(b.n_states - b.duration_s / b.params.coarse_period_s) <= 2
        assert b.nmf.w_shape.shape == (FAST_BUILD.n_components, b.params.n_bins)
        assert b.nmf.data_scale > 0
        assert b.onsets.shape == (int(round(b.duration_s * b.params.sr)) // b.params.fine_hop + 1,)
        assert b.onsets.dtype == np.float32 and 0.0 <= b.onsets.min() and b.onsets.max() <= 1.0
        # X's onset strength peaks at its solo's notes (within 60 ms; a few are slurred)
        t = np.arange(b.onsets.size) * b.params.fine_period_s
        peaks = [b.onsets[np.abs(t - on) <= 0.06].max() for on in case.onsets_x]
        assert np.mean(np.array(peaks) > 0.5) >= 0.8
        np.testing.assert_array_equal(b.onset_bank, onset_filterbank(b.params))


def test_loading_without_the_spectra_keeps_their_power(bundle_path):
    """The player loads a bundle without X's coarse spectra (``spectra=False``): the power
    per state it uses is the same, to the bit, as the spectra's own."""
    with load_bundle(bundle_path) as full, load_bundle(bundle_path, spectra=False) as lean:
        assert lean.state_mag is None and full.state_mag is not None
        np.testing.assert_array_equal(lean.state_power, full.state_power)
        np.testing.assert_array_equal(full.state_power, frame_power(full.state_mag))
        power = (full.state_mag.astype(np.float64) ** 2).sum(axis=1)
        np.testing.assert_allclose(full.state_power, power, rtol=1e-5)
        np.testing.assert_array_equal(lean.templates.q, full.templates.q)


def test_a_bundle_without_the_stored_power_loads_the_same(bundle_path, tmp_path):
    """The player reads each state's power from /spectra/power and never the spectra; a
    bundle of an older prep, without it, has its power computed from the spectra: the
    same bits."""
    older = broken(bundle_path, tmp_path, lambda f: f.__delitem__("spectra/power"))
    with load_bundle(bundle_path, spectra=False) as stored, load_bundle(older, spectra=False) as computed:
        np.testing.assert_array_equal(stored.state_power, computed.state_power)
    # the stored power is what the player uses: the spectra are not read without them
    unread = broken(bundle_path, tmp_path, lambda f: f["spectra/coarse"].__setitem__((0, 0), np.nan))
    with load_bundle(unread, spectra=False) as lean:
        np.testing.assert_array_equal(lean.state_power, stored.state_power)
    with pytest.raises(BundleError, match="NaN"):
        load_bundle(unread)


def test_the_music_start_is_stored_as_the_player_would_find_it(bundle_path, tmp_path, case):
    """prep stores where the music starts, computed from the audio as stored and decoded:
    the value the player would compute from the bundle itself (so it need not decode the
    opening at start-up); a bundle of an older prep, without it, has it computed: the same.
    The synthetic duet's music starts at its first note."""
    with load_bundle(bundle_path) as b:
        assert b.music_start_s is not None
        assert b.music_start_s == music_start_s(b.audio)
        assert abs(b.music_start_s - case.onsets_x[0]) <= 0.02
        stored = b.music_start_s
    older = broken(bundle_path, tmp_path, lambda f: f["audio"].attrs.__delitem__("music_start_s"))
    with load_bundle(older) as b:
        assert b.music_start_s is None
        engine = Engine(b, case.sr, EngineConfig())
        assert engine.music_start_s == stored


def test_audio_is_lossless_and_blockwise(bundle_path, x_wav):
    original, sr = sf.read(x_wav, dtype="float32", always_2d=True)
    with load_bundle(bundle_path) as b:
        np.testing.assert_array_equal(b.audio.read_all(), original)  # 16-bit PCM kept bit-exact
        start = b.audio.chunk_samples - 100  # a block straddling two chunks
        np.testing.assert_array_equal(b.audio.read(start, 300), original[start:start + 300])
        block = b.audio.read(len(original) - 10, 50)  # past the end: zero-padded
        np.testing.assert_array_equal(block[:10], original[-10:])
        assert not block[10:].any()
        assert len(b.audio._cache) <= b.audio._cache_chunks


def test_smaller_than_wav(bundle_path, x_wav):
    assert bundle_path.stat().st_size < x_wav.stat().st_size


def test_deterministic_build(x_wav, bundle_path, tmp_path):
    again = tmp_path / "again.h5"
    build_bundle(x_wav, again, FAST_BUILD)
    result = diff_bundles(bundle_path, again)
    assert result.identical, result.differences


def test_diff_reports_a_change(bundle_path, tmp_path):
    changed = tmp_path / "changed.h5"
    shutil.copy(bundle_path, changed)
    with h5py.File(changed, "a") as f:
        f["spectra/coarse"][3, 10] += 1.0
        f.attrs["created_utc"] = "1999-01-01T00:00:00+00:00"
    result = diff_bundles(bundle_path, changed)
    assert not result.identical
    assert any("spectra/coarse" in line and "1 of" in line for line in result.differences)
    assert any("created_utc" in line for line in result.volatile)


def test_no_overwrite_without_force(x_wav, bundle_path, tmp_path):
    out = tmp_path / "exists.h5"
    out.write_bytes(b"precious")
    with pytest.raises(OutputError, match="--force"):
        build_bundle(x_wav, out, FAST_BUILD)
    assert out.read_bytes() == b"precious"


def test_interrupted_build_leaves_nothing(x_wav, tmp_path):
    out = tmp_path / "interrupted.h5"
    out.write_bytes(b"old bundle")

    def interrupt(stage, done, total):
        if stage == "write" and done >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_bundle(x_wav, out, FAST_BUILD, force=True, progress=interrupt)
    assert out.read_bytes() == b"old bundle"  # the existing file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["interrupted.h5"]  # no temporary left


# --------------------------------------------------------------------------- validation
def broken(bundle_path, tmp_path, edit):
    path = tmp_path / "broken.h5"
    shutil.copy(bundle_path, path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _replace(f, name, data):
    del f[name]
    f.create_dataset(name, data=data)


CASES = {
    "wrong version": (lambda f: f.attrs.__setitem__("format_version", FORMAT_VERSION + 1), "newer"),
    "old version": (lambda f: f.attrs.__setitem__("format_version", 0), "older"),
    "not ours": (lambda f: f.attrs.__setitem__("format", "something-else"), "not a follow-me"),
    "missing dataset": (lambda f: f.__delitem__("templates/log_obs"), "missing dataset /templates/log_obs"),
    "wrong shape": (lambda f: _replace(f, "templates/log_obs", np.zeros((5, 7, 3), np.uint8)), "shape"),
    "positive log-probs": (lambda f: f["templates/log_obs"].attrs.__setitem__("offset", 0.5), "positive"),
    "wrong dtype": (lambda f: _replace(f, "spectra/coarse", np.zeros(f["spectra/coarse"].shape, np.int32)), "dtype"),
    "string dataset": (lambda f: f.create_dataset("extra", data=np.array([b"x"], dtype=h5py.string_dtype())), "dtype"),
    "external link": (lambda f: f.__setitem__("evil", h5py.ExternalLink("/etc/passwd", "/x")), "external link"),
    "soft link": (lambda f: f.__setitem__("alias", h5py.SoftLink("/spectra/coarse")), "soft link"),
    "NaN values": (lambda f: f["spectra/coarse"].__setitem__((0, 0), np.nan), "NaN"),
    "bad params": (lambda f: f["params"].attrs.__setitem__("coarse_hop", 1000), "invalid analysis parameters"),
    "huge channels": (lambda f: f["audio"].attrs.__setitem__("channels", 10_000), "channels"),
    "power NaN": (lambda f: f["spectra/power"].__setitem__(2, np.nan), "power contains NaN"),
    "power negative": (lambda f: f["spectra/power"].__setitem__(2, -1.0), "power has negative"),
    "power shape": (lambda f: _replace(f, "spectra/power", np.ones(7)), "power has shape"),
    "onsets NaN": (lambda f: f["spectra/onsets"].__setitem__(3, np.nan), "NaN"),
    "onsets out of range": (lambda f: f["spectra/onsets"].__setitem__(3, 1.5), "outside"),
    "onset bank shape": (lambda f: _replace(f, "spectra/onset_bank", np.zeros((3, 4), np.float32)), "shape"),
    "onset bank negative": (lambda f: f["spectra/onset_bank"].__setitem__((0, 0), -1.0), "outside"),
    "onsets too short": (lambda f: _replace(f, "spectra/onsets", np.zeros(10, np.float32)), "onsets has 10 frames"),
    "bad offsets": (lambda f: _replace(f, "audio/offsets", np.zeros(f["audio/offsets"].shape, np.int64)), "offsets"),
    "music start NaN": (lambda f: f["audio"].attrs.__setitem__("music_start_s", np.nan), "music_start_s"),
    "music start negative": (lambda f: f["audio"].attrs.__setitem__("music_start_s", -1.0), "music_start_s"),
    "music start after the end": (lambda f: f["audio"].attrs.__setitem__("music_start_s", 1e6), "music_start_s"),
    "music start text": (lambda f: f["audio"].attrs.__setitem__("music_start_s", "soon"), "music_start_s"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_refuses_broken_bundle(bundle_path, tmp_path, name):
    edit, message = CASES[name]
    path = broken(bundle_path, tmp_path, edit)
    with pytest.raises(BundleError, match=message) as err:
        load_bundle(path)
    assert "\n" not in str(err.value)


def test_refuses_virtual_dataset(bundle_path, tmp_path):
    def edit(f):
        layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
        layout[:] = h5py.VirtualSource(str(bundle_path), "nmf/bound_trace", shape=(4,))[:4]
        f.create_virtual_dataset("virtual", layout)

    with pytest.raises(BundleError, match="virtual"):
        load_bundle(broken(bundle_path, tmp_path, edit))


def test_refuses_truncated_and_garbage(bundle_path, tmp_path):
    data = bundle_path.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError):
        load_bundle(truncated)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(BundleError, match="not an HDF5"):
        load_bundle(garbage)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "missing.h5")
