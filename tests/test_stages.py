"""The stages' interfaces: every per-frame stage of the engine is a FrameStage whose
reset() returns it to its state at construction (what it gives after a reset is what a
new one gives), the tracks are Tracks, and the player never imports the analysis side."""

import ast
from pathlib import Path

import numpy as np
import pytest

from player.activity import ActivityDetector
from player.analysis import ObservationStage, SpectrumStage
from player.denoise import NoiseProfile
from player.echo import LeakCanceller, LeakConfig
from player.follower import Follower
from player.hops import HopStream
from player.playback import PlaybackController
from player.separation import SeparationConfig, SoloPresence
from player.stages import Frame, FrameStage, Track
from shared.spectral import AnalysisParams, QuantizedTemplates, observation_features

P = AnalysisParams()
REPO = Path(__file__).resolve().parents[1]


def hops(seed: int, n: int = 120) -> np.ndarray:
    """``n`` hops of a harmonic tone with vibrato, noise and a level curve."""
    rng = np.random.default_rng(seed)
    t = np.arange(n * P.fine_hop) / P.sr
    f0 = 220.0 * 2 ** (rng.integers(0, 12) / 12) * (1 + 0.01 * np.sin(2 * np.pi * 5.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / P.sr
    tone = sum(np.sin(k * phase) / k for k in range(1, 6)) * (0.3 + 0.2 * np.sin(2 * np.pi * 0.7 * t))
    y = tone + 0.01 * rng.standard_normal(t.size)
    return y.astype(np.float32).reshape(n, P.fine_hop)


def analysed(seed: int) -> list[Frame]:
    """Frames with everything the stages read filled in, from a fresh analysis chain."""
    spectrum, activity, denoise = SpectrumStage(P), ActivityDetector(P), NoiseProfile(P.n_bins, P.fine_period_s)
    frames = []
    for k, h in enumerate(hops(seed)):
        f = Frame(samples=h, end_s=(k + 1) * P.fine_period_s, now_s=(k + 1) * P.fine_period_s)
        for stage in (spectrum, activity, denoise):
            stage.process_frame(f)
        f.mag, f.clean = f.mag.copy(), f.clean.copy()
        f.obs = observation_features(f.clean, P)
        frames.append(f)
    return frames


def follower() -> Follower:
    rng = np.random.default_rng(3)
    t = rng.gamma(0.5, size=(40, P.n_obs_bins)) + 1e-3
    t /= t.sum(axis=1, keepdims=True)
    log_t = np.log(np.repeat(t[None], len(P.detune_cents), axis=0)).astype(np.float32)
    return Follower(QuantizedTemplates.from_log(log_t), P)


def leak_canceller() -> LeakCanceller:
    return LeakCanceller(P, LeakConfig(window_s=0.6, every_s=0.1), played_sr=P.sr)


def outputs(stage, frames: list[Frame]) -> list:
    """Run ``stage`` over copies of ``frames``; what it wrote and what it holds, per frame."""
    out = []
    for i, f in enumerate(frames):
        g = Frame(**vars(f))
        if isinstance(stage, LeakCanceller):  # it also hears what the engine played: the input, 2 hops early
            stage.push_played(frames[min(i + 2, len(frames) - 1)].samples.reshape(-1, 1))
        stage.process_frame(g)
        state = getattr(stage, "state", None)
        out.append((g.mag.tolist(), g.active, g.level_db, g.clean.tolist(), g.evidence_scale, g.obs.tolist(), g.onset,
                    getattr(stage, "value", None), None if state is None else (state.x_s, state.tempo, state.confidence)))
    return out


STAGES = {
    "spectrum": lambda: SpectrumStage(P),
    "leak": leak_canceller,
    "activity": lambda: ActivityDetector(P),
    "denoise": lambda: NoiseProfile(P.n_bins, P.fine_period_s),
    "observation": lambda: ObservationStage(P),
    "presence": lambda: SoloPresence(SeparationConfig(), P.fine_period_s),
    "follower": follower,
}


@pytest.mark.parametrize("name", STAGES)
def test_a_reset_stage_behaves_as_a_new_one(name):
    make = STAGES[name]
    first, then = analysed(1), analysed(2)
    stage = make()
    assert isinstance(stage, FrameStage)
    outputs(stage, first)
    stage.reset()
    assert outputs(stage, then) == outputs(make(), then)
    if name == "leak":  # the leak was found (so its estimate was something to forget)
        assert stage.lag == 2 and stage.gain > 0
    if name == "follower":
        assert stage.started


def test_the_follower_is_a_track():
    assert isinstance(follower(), Track)


def test_a_reset_hop_stream_and_controller_behave_as_new_ones():
    rng = np.random.default_rng(0)
    stream, fresh = HopStream(44100, P.sr, P.fine_hop), HopStream(44100, P.sr, P.fine_hop)
    stream.push(rng.standard_normal(3001).astype(np.float32))
    stream.reset()
    block = rng.standard_normal(5000).astype(np.float32)
    assert np.array_equal(stream.push(block), fresh.push(block))
    controller = PlaybackController()
    controller.step(0.0, 0.5, 1.2, 0.02)
    controller.reset()
    assert controller.step(0.0, 0.3, 1.1, 0.02) == PlaybackController().step(0.0, 0.3, 1.1, 0.02)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_player_never_imports_the_analysis_side_and_shared_imports_neither_tool():
    for path in sorted((REPO / "player").glob("*.py")):
        assert "prep" not in _imports(path), f"{path.name} imports prep"
    for path in sorted((REPO / "shared").glob("*.py")):
        assert not {"prep", "player"} & _imports(path), f"{path.name} imports a tool"
