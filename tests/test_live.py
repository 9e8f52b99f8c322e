"""The live path without a sound device: the ring buffers, and a fake duplex stream that
drives ``LiveSession.callback`` exactly as PortAudio would (preallocated buffers, one block
per call), checked against the file-driven engine."""

import threading
import time

import numpy as np
import pytest

from player.engine import Engine
from player.live import LiveSession, Ring
from shared.synth import make_case

from .fake_sounddevice import FakeDuplexStream
from .follow_helpers import bundle_for, follow


# ----------------------------------------------------------------------------- Ring
def test_ring_round_trip_across_wrap():
    ring = Ring(10, 2)
    rng = np.random.default_rng(0)
    first = rng.standard_normal((7, 2)).astype(np.float32)
    assert ring.write(first)
    out = np.empty((7, 2), np.float32)
    assert ring.read_into(out)
    np.testing.assert_array_equal(out, first)
    assert ring.available == 0 and ring.free == 10

    wrapped = rng.standard_normal((6, 2)).astype(np.float32)  # 3 frames at the end, 3 at the start
    assert ring.write(wrapped)
    assert ring.available == 6 and ring.free == 4
    out = np.empty((6, 2), np.float32)
    assert ring.read_into(out)
    np.testing.assert_array_equal(out, wrapped)


def test_ring_refuses_write_when_full():
    ring = Ring(8, 1)
    data = np.arange(8, dtype=np.float32)[:, None]
    assert ring.write(data)
    assert ring.free == 0
    before = ring.buf.copy()
    assert ring.write(np.full((1, 1), 99.0, np.float32)) is False
    assert ring.available == 8
    np.testing.assert_array_equal(ring.buf, before)
    out = np.empty((3, 1), np.float32)
    assert ring.read_into(out)  # 3 frames free now: 4 do not fit, nothing is written
    assert ring.write(np.full((4, 1), 99.0, np.float32)) is False
    assert ring.available == 5
    rest = np.empty((5, 1), np.float32)
    assert ring.read_into(rest)
    np.testing.assert_array_equal(np.concatenate([out, rest]), data)


def test_ring_refuses_read_when_short():
    ring = Ring(8, 2)
    data = np.array([[1.0, -1.0], [2.0, -2.0], [3.0, -3.0]], np.float32)
    assert ring.write(data)
    out = np.full((4, 2), 7.0, np.float32)
    assert ring.read_into(out) is False
    np.testing.assert_array_equal(out, 7.0)  # untouched
    assert ring.available == 3
    out = np.empty((3, 2), np.float32)
    assert ring.read_into(out)
    np.testing.assert_array_equal(out, data)
    assert ring.read_into(np.empty((1, 2), np.float32)) is False


def test_ring_matches_a_fifo_model():
    """Random writes and reads, many times round the ring: exact values, in order."""
    rng = np.random.default_rng(1)
    ring = Ring(13, 3)
    model = np.zeros((0, 3), np.float32)
    for _ in range(500):
        if rng.random() < 0.5:
            data = rng.standard_normal((int(rng.integers(0, 9)), 3)).astype(np.float32)
            accepted = ring.write(data)
            assert accepted == (len(model) + len(data) <= 13)
            if accepted:
                model = np.concatenate([model, data])
        else:
            out = np.empty((int(rng.integers(0, 9)), 3), np.float32)
            accepted = ring.read_into(out)
            assert accepted == (len(out) <= len(model))
            if accepted:
                np.testing.assert_array_equal(out, model[: len(out)])
                model = model[len(out):]
        assert ring.available == len(model) and ring.free == 13 - len(model)


# ----------------------------------------------------------------------------- fake stream
@pytest.fixture(scope="module")
def live_case(tmp_path_factory):
    """A 12-note duet at 22.05 kHz: the bundle of X and U at the bundle's audio rate."""
    case = make_case(n_notes=12, seed=4, sr=22050)
    bundle = bundle_for(case, tmp_path_factory.mktemp("live"))
    assert bundle.audio.sr == case.sr
    yield case, bundle
    bundle.close()


def blocksize_of(bundle):
    return int(round(bundle.params.fine_period_s * bundle.audio.sr))


def recording_engine(bundle, sr):
    """An engine whose path (via on_frame) and output blocks are recorded."""
    rows, produced = [], []
    engine = Engine(bundle, sr, on_frame=lambda t, st: rows.append((t, st.x_s)))
    process = engine.process

    def recorded(block):
        out = process(block)
        produced.append(out.copy())
        return out

    engine.process = recorded
    return engine, rows, produced


def play_through_session(bundle, sr, u, block, headroom):
    """Feed ``u`` through a LiveSession from a fake device; the session has stopped cleanly."""
    engine, rows, produced = recording_engine(bundle, sr)
    session = LiveSession(engine, block, in_channels=1, headroom_blocks=headroom, ring_blocks=8)
    stream = FakeDuplexStream(session)
    session.start()
    try:
        stream.feed(u)
    finally:
        session.stop()
    assert session.error is None, repr(session.error)
    return engine, rows, produced, session, stream


@pytest.mark.parametrize("headroom", [2, 3])
def test_fake_stream_matches_file_mode(live_case, headroom):
    case, bundle = live_case
    block = blocksize_of(bundle)
    u = case.u[: 8 * case.sr]
    reference = follow(bundle, u, case.sr, blocksize=block)  # also warms up the kernels

    engine, rows, produced, session, stream = play_through_session(bundle, case.sr, u, block, headroom)

    n_blocks = len(u) // block
    c = session.counters
    assert (c.callbacks, c.xruns, c.dropped_blocks, c.late_blocks) == (n_blocks, 0, 0, 0)
    assert engine.stats.blocks == n_blocks

    path = np.array(rows)
    assert len(path) > 100
    np.testing.assert_array_equal(path, reference)

    assert len(stream.played) == n_blocks and len(produced) == n_blocks
    silence = np.zeros((block, engine.output_channels), np.float32)
    expected = [silence] * headroom + produced[: n_blocks - headroom]
    np.testing.assert_array_equal(np.stack(stream.played), np.stack(expected))
    assert np.abs(np.stack(produced)).max() > 0, "the engine never played anything: the test proves little"


def test_xruns_are_counted(live_case):
    case, bundle = live_case
    block = blocksize_of(bundle)
    session = LiveSession(Engine(bundle, case.sr), block, headroom_blocks=2, ring_blocks=8)
    stream = FakeDuplexStream(session)

    class Flags:  # like sounddevice.CallbackFlags: true when any flag is set
        def __init__(self, value):
            self.value = value

        def __bool__(self):
            return bool(self.value)

    session.start()
    try:
        stream.feed(case.u[: 3 * block], status=Flags(1))
        stream.feed(case.u[: 2 * block], status=Flags(0))
        stream.feed(case.u[: 2 * block], status=1)
        stream.feed(case.u[: 1 * block], status=None)
    finally:
        session.stop()
    assert session.counters.xruns == 5
    assert session.counters.callbacks == 8
    assert session.error is None


def test_nan_block_from_the_device(live_case):
    case, bundle = live_case
    block = blocksize_of(bundle)
    u = case.u[: 3 * case.sr].copy()
    bad = (len(u) // block // 2) * block
    u[bad:bad + block] = np.nan
    reference = follow(bundle, u, case.sr, blocksize=block)

    engine, rows, produced, session, stream = play_through_session(bundle, case.sr, u, block, 2)
    assert engine.stats.nan_blocks == 1
    assert engine.stats.blocks == len(u) // block  # the session went on after the bad block
    assert np.isfinite(np.stack(stream.played)).all()
    np.testing.assert_array_equal(np.array(rows), reference)


def test_engine_falling_behind(live_case):
    """The worker does not run: the in-ring fills up, input blocks are dropped, the out-ring
    runs dry after the headroom and silence is played; nothing raises."""
    case, bundle = live_case
    block = blocksize_of(bundle)
    ring_blocks, headroom, calls = 4, 2, 10
    engine = Engine(bundle, case.sr)
    session = LiveSession(engine, block, headroom_blocks=headroom, ring_blocks=ring_blocks, max_callback_frames=block)
    stream = FakeDuplexStream(session)
    stream.feed(case.u[case.sr: case.sr + calls * block], drain=False)  # no worker: no drain
    c = session.counters
    assert c.callbacks == calls
    assert c.dropped_blocks == calls - ring_blocks
    assert c.late_blocks == calls - headroom
    np.testing.assert_array_equal(np.stack(stream.played), 0.0)  # silence, never stale data or NaN
    assert engine.stats.blocks == 0

    session.start()  # the engine catches up with what the ring kept
    try:
        session.drain()
        deadline = time.monotonic() + 10
        while engine.stats.blocks < ring_blocks and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        session.stop()
    assert session.error is None, repr(session.error)
    assert engine.stats.blocks == ring_blocks
    assert session.in_ring.available == 0
    assert (c.dropped_blocks, c.late_blocks) == (calls - ring_blocks, calls - headroom)  # nothing new


def test_stop_joins_the_worker(live_case):
    case, bundle = live_case
    block = blocksize_of(bundle)
    LiveSession(Engine(bundle, case.sr), block).stop()  # never started: nothing to join, no error
    session = LiveSession(Engine(bundle, case.sr), block)
    session.start()
    worker = session._worker
    assert worker is not None and worker.is_alive()
    FakeDuplexStream(session).feed(case.u[case.sr: case.sr + 5 * block])
    started = time.monotonic()
    session.stop()
    assert not worker.is_alive()
    assert time.monotonic() - started < 2.0
    assert session.error is None
    assert worker not in threading.enumerate()
    session.stop()  # twice: still fine


def test_worker_error_is_kept_and_callback_goes_on():
    """An exception in the engine ends the worker; it is kept for the caller, and the audio
    callback keeps playing (silence) without raising."""

    class BrokenEngine:
        output_channels = 2

        def process(self, block):
            raise RuntimeError("boom")

    session = LiveSession(BrokenEngine(), 32, headroom_blocks=1, ring_blocks=4)
    stream = FakeDuplexStream(session)
    session.start()
    try:
        stream.feed(np.ones(32, np.float32))
        session._worker.join(timeout=5)
        stream.feed(np.ones(5 * 32, np.float32), drain=False)
    finally:
        session.stop()
    assert isinstance(session.error, RuntimeError)
    assert not session._worker.is_alive()
    assert session.counters.callbacks == 6
    np.testing.assert_array_equal(np.stack(stream.played), 0.0)


def test_drain_waits_until_blocks_are_processed():
    class SlowEngine:
        output_channels = 1

        def __init__(self):
            self.done = 0

        def process(self, block):
            time.sleep(0.05)
            self.done += 1
            return np.asarray(block, np.float32).copy()

    engine = SlowEngine()
    session = LiveSession(engine, 64, headroom_blocks=1, ring_blocks=4)
    stream = FakeDuplexStream(session)
    session.start()
    try:
        stream.feed(np.ones(3 * 64, np.float32))  # drains after every callback
        done_after_drain = engine.done
    finally:
        session.stop()
    assert done_after_drain == 3
    assert session.counters.late_blocks == 0
