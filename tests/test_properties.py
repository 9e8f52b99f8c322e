"""Properties that must hold for any input (hypothesis): the live path's ring buffer never
loses, duplicates or reorders samples; the input FIFO turns any split of a stream into the
same hops; the bundle loader answers any corruption with a BundleError and nothing else."""

import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from player.hops import HopStream
from player.live import Ring
from shared.bundle import load_bundle
from shared.errors import BundleError

HOP = 441


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 64), ops=st.lists(st.tuples(st.booleans(), st.integers(0, 80)), max_size=60))
def test_the_ring_is_a_fifo_that_refuses_what_does_not_fit(capacity, ops):
    ring, written, read = Ring(capacity, 2), [], []
    counter = 0
    for is_write, n in ops:
        if is_write:
            data = np.arange(counter, counter + n, dtype=np.float32)[:, None].repeat(2, axis=1)
            ok = ring.write(data)
            assert ok == (n <= capacity - len(written) + len(read))
            if ok:
                written.extend(range(counter, counter + n))
                counter += n
        else:
            out = np.full((n, 2), -1.0, dtype=np.float32)
            ok = ring.read_into(out)
            assert ok == (n <= len(written) - len(read))
            if ok:
                read.extend(out[:, 0].astype(int).tolist())
                assert np.array_equal(out[:, 0], out[:, 1])
        assert ring.available == len(written) - len(read) and 0 <= ring.free <= capacity
    assert read == written[: len(read)]


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 * HOP), min_size=1, max_size=25))
def test_the_hop_stream_gives_the_same_hops_however_the_input_is_split(sizes):
    rng = np.random.default_rng(len(sizes))
    signal = rng.standard_normal(sum(sizes)).astype(np.float32)
    stream, hops, at = HopStream(22050, 22050, HOP), [], 0
    for n in sizes:
        got = stream.push(signal[at:at + n])
        assert got.shape[1:] == (HOP,)
        hops.append(got)
        at += n
    whole = len(signal) // HOP
    assert np.array_equal(np.concatenate(hops), signal[: whole * HOP].reshape(whole, HOP))


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 2000), min_size=1, max_size=12))
def test_a_resampling_hop_stream_is_as_long_as_the_rate_says(sizes):
    stream = HopStream(48000, 22050, HOP)
    total = sum(stream.push(np.zeros(n, dtype=np.float32)).shape[0] for n in sizes)
    expected = sum(sizes) * 22050 / 48000 / HOP
    assert expected - 2 <= total <= expected + 1


DATASETS = ["spectra/coarse", "spectra/power", "spectra/onsets", "spectra/onset_bank", "templates/log_obs",
            "templates/detune_cents", "nmf/w_shape", "nmf/w_rate", "nmf/bound_trace", "audio/data", "audio/offsets"]
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8)  # what HDF5 can hold
VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**40, 2**40), TEXT,
                   st.just(np.zeros(3)), st.just(np.full(2, np.nan)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_corrupted_bundle_is_refused_with_one_bundle_error(bundle_path, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "b.h5"
        shutil.copy(bundle_path, path)
        with h5py.File(path, "r+") as f:
            if data.draw(st.booleans(), label="replace a dataset"):
                name = data.draw(st.sampled_from(DATASETS), label="dataset")
                shape = tuple(data.draw(st.lists(st.integers(0, 5), max_size=3), label="shape"))
                dtype = data.draw(st.sampled_from(["f4", "f8", "i2", "u1", "i8"]), label="dtype")
                del f[name]
                f.create_dataset(name, data=np.full(shape, data.draw(st.integers(0, 3))).astype(dtype))
            else:
                where = data.draw(st.sampled_from(["/", "params", "audio", "nmf", "templates/log_obs"]), label="where")
                key = data.draw(st.sampled_from(sorted(f[where].attrs.keys())), label="attribute")
                f[where].attrs[key] = data.draw(VALUES, label="value")
        try:
            load_bundle(path).close()
        except BundleError as err:
            assert "\n" not in str(err)
