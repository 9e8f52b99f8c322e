"""The block engine: one code path for live audio and for files.

Each call to :meth:`Engine.process` takes one block of U (any rate, any channels) and
returns the block to play (X's rate and channels). Inside: NaN guard -> mono -> streaming
resampler to the analysis rate -> one :class:`player.stages.Frame` per fine hop through
the per-frame stages (spectrum, leak canceller, activity gate, room-noise subtraction,
observation and onset strength, follower, solo presence, relocator; see
:mod:`player.stages`; then the anticipator, the position the output is scheduled by) ->
once per block: playback rate and seeks at X's onsets (controller), solo-removal gain
(2-row PG-NMF) and the phase vocoder's output, whose spectra go back to the leak
canceller. Nothing here touches files or devices, so the file runner and the live audio
thread drive exactly the same code.

Latency: the block returned is heard ``output_latency_s`` after the end of the input block
it answers (0 in file mode, where the runner writes it one block later; the device and
queue latency in live mode). The vocoder reads X ahead by that much, so the only
algorithmic delay is the one block of buffering.

Timing: every analysis frame is reported through ``on_frame(u_time_s, state)`` where
``u_time_s`` is the time of U consumed so far when the belief became available (the end of
the block), so a path written from it is causal by construction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from player.activity import ActivityDetector
from player.analysis import ObservationStage, SpectrumStage
from player.anticipate import Anticipator
from player.config import EngineConfig
from player.denoise import NoiseProfile
from player.echo import LeakCanceller
from player.follower import Follower, FollowerState, OnsetTerms
from player.hops import HopStream
from player.jump_prior import JumpPrior, section_starts, silent_states
from player.playback import PlaybackController
from player.relocator import Relocator
from player.search import GlobalSearch
from player.separation import BinMap, PositionSpectrum, SoloPresence, SoloRemover
from player.stages import Frame, FrameStage
from player.vocoder import StreamingVocoder
from shared.audio import ResampledAudio, music_start_s, to_mono
from shared.bundle import Bundle
from shared.bundle_schema import MAX_SAMPLE_RATE
from shared.errors import BundleError, ConfigError
from shared.spectral import peak_indices

__all__ = ["Engine", "EngineConfig", "EngineStats", "check_supported"]

FrameCallback = Callable[[float, FollowerState], None]


@dataclass
class EngineStats:
    """Counters and per-stage CPU seconds (perf_counter) since the start."""

    blocks: int = 0
    frames: int = 0
    nan_blocks: int = 0
    jumps: int = 0
    agains: int = 0  # runs ended at the end of the music (see EngineConfig.again_after_s)
    seconds: dict = field(default_factory=lambda: {"analysis": 0.0, "follower": 0.0, "search": 0.0,
                                                   "separation": 0.0, "vocoder": 0.0})


#: Analysis frame periods (seconds) this player runs at: the block is one frame long.
SUPPORTED_FRAME_PERIOD_S = (0.005, 0.05)


def onset_times_s(strength: np.ndarray, params, height: float) -> np.ndarray:
    """X's note onsets (seconds, ascending) from its onset strength ``(n_frames,)`` (frame
    ``k`` centred on ``k * fine_period_s``): the peaks of at least ``height`` (in [0, 1]),
    moved back by the ``onset_lag`` frames the strength compares over (it peaks when the
    window is into the note, that long after the onset)."""
    peaks = peak_indices(strength, height=height)
    return np.maximum(0.0, (peaks - params.onset_lag) * params.fine_period_s)


def check_supported(bundle: Bundle) -> None:
    """Refuse, with one clear line, a bundle analysed with parameters this player cannot run."""
    p = bundle.params
    lo, hi = SUPPORTED_FRAME_PERIOD_S
    if not lo <= p.fine_period_s <= hi:  # (shapes against the parameters: checked by the loader)
        raise BundleError(f"bundle {bundle.path.name} was made with a frame period of {1000 * p.fine_period_s:.0f} ms; "
                          f"this player supports {1000 * lo:.0f}-{1000 * hi:.0f} ms: rebuild it with 'prep build'")


class Engine:
    """Follows U block by block and renders X along.

    Args:
        bundle: the loaded bundle of X.
        input_sr: sample rate of U's blocks (Hz).
        config: tuning.
        on_frame: called once per analysis frame with ``(u_time_s, state)`` (the
            follower's state object, updated in place by every frame).
        output_sr: sample rate of the blocks returned (Hz): X's own by default (files);
            a sound card's otherwise, X then being read through
            :class:`shared.audio.ResampledAudio`.

    Raises:
        ConfigError: ``config.start_s`` lies outside the recording.
    """

    def __init__(self, bundle: Bundle, input_sr: int, config: EngineConfig | None = None,
                 on_frame: FrameCallback | None = None, output_sr: int | None = None) -> None:
        check_supported(bundle)
        self.bundle = bundle
        self.params = p = bundle.params
        self.config = cfg = config or EngineConfig()
        self.input_sr = int(input_sr)
        self.output_sr = int(output_sr or bundle.audio.sr)
        if not 1000 <= self.output_sr <= MAX_SAMPLE_RATE:
            raise ConfigError(f"output rate {self.output_sr} Hz is out of range (1000..{MAX_SAMPLE_RATE})")
        self.output_channels = bundle.audio.channels
        self.on_frame = on_frame
        start = float(cfg.start_s)
        if not 0.0 <= start < bundle.duration_s:
            raise ConfigError(f"start {start:g} s is outside the recording (0..{bundle.duration_s:.1f} s)", field="start_s")
        self._input = HopStream(self.input_sr, p.sr, p.fine_hop)
        # the per-frame stages, in order (see player.stages)
        self.spectrum = SpectrumStage(p)
        self.leak = LeakCanceller(p, cfg.leak, played_sr=self.output_sr)
        self.activity = ActivityDetector(p, cfg.activity)
        self.denoise = NoiseProfile(p.n_bins, p.fine_period_s, cfg.denoise)
        self.observation = ObservationStage(p, bundle.onset_bank)
        onset_terms = OnsetTerms.from_strength(bundle.onsets, p, cfg.follower, bundle.n_states)
        silent = silent_states(bundle.state_power, cfg.jumps.section_db, bundle.templates, cfg.jumps.noise_db,
                               cfg.jumps.noise_flat_nats)
        templates = bundle.templates
        if cfg.follower.silence_penalty > 0 and silent.any():
            templates = templates.with_penalty(np.where(silent, cfg.follower.silence_penalty, 0.0))
        sections = section_starts(silent, p.coarse_period_s, cfg.jumps.section_gap_s)
        #: where X's music ends (seconds): the end of its last state that is not silent (or,
        #: for a recording that stops loud, its last state, the farthest the filter goes)
        loud = np.flatnonzero(~silent)
        last = bundle.n_states - 1
        self.music_end_s = float(min(loud[-1] + 1 if loud.size else last, last)) * p.coarse_period_s
        self._again_after = int(round(cfg.again_after_s / p.fine_period_s))  # frames
        self._again_due = False
        self.follower = Follower(templates, p, cfg.follower, onset_terms, tempo=cfg.tempo)
        self.follower.set_sections(sections)
        self.presence = SoloPresence(cfg.separation, p.fine_period_s)
        self.relocator = None
        if cfg.global_search:
            prior = JumpPrior(sections, p.coarse_period_s, cfg.jumps)
            search = GlobalSearch(templates, p, cfg.search,
                                  room_s=cfg.relocator.trial_s * max(cfg.search.tempos) * cfg.tempo, prior=prior,
                                  tempo=cfg.tempo)
            tracks = [Follower(templates, p, cfg.follower, onset_terms, tempo=cfg.tempo)
                      for _ in range(cfg.search.candidates + 1)]
            for track in tracks:
                track.set_sections(sections)
            self.relocator = Relocator(search, self.follower, tracks, cfg.relocator, p.fine_period_s, prior)
        self._analysis: tuple[FrameStage, ...] = (self.spectrum, self.leak, self.activity, self.denoise,
                                                   self.observation)
        self._frame = Frame()
        self.anticipator = Anticipator(cfg.anticipate, p.fine_period_s, cfg.follower.min_tempo, cfg.follower.max_tempo,
                                       cfg.tempo)
        # once per block
        self.controller = PlaybackController(cfg.playback, onset_times_s(bundle.onsets, p, cfg.playback.onset_strength))
        played = bundle.audio if self.output_sr == bundle.audio.sr else ResampledAudio(bundle.audio, self.output_sr)
        self.vocoder = StreamingVocoder(played)
        self.remover = SoloRemover(bundle.nmf, p, cfg.separation)
        self.x_spectrum = PositionSpectrum(bundle.audio, p)
        self._gain = np.ones(self.vocoder.n_bins)
        self._gain_on_bins = BinMap(self.remover.freqs_hz, np.arange(self.vocoder.n_bins) * self.vocoder.bin_hz)
        self._u_mag = np.zeros(p.n_bins, dtype=np.float32)
        self._playing = False
        #: X time (s) of the first sample of the last block returned (NaN: it held silence);
        #: that sample is heard at ``heard_u_s``. What the listener hears, exactly.
        self.heard_x_s = math.nan
        #: the playback rate of that block (X seconds per output second; NaN: silence), and
        #: whether it started with a seek
        self.heard_rate = math.nan
        self.heard_seek = False
        self.output_latency_s = float(cfg.output_latency_s)
        self.stats = EngineStats()
        self._in_samples = 0
        self._analysis_samples = 0
        self._out_samples = 0
        # nobody starts playing in the recording's leading silence: waiting at the start of
        # the piece means waiting where its music begins
        stored = bundle.music_start_s  # (prep stores it: the opening need not be decoded now)
        self.music_start_s = stored if stored is not None else music_start_s(bundle.audio)
        self.follower.reset(self._waiting_place(start), wait=not cfg.intro)
        self.follower.warm_up()
        self.spectrum.warm_up()
        self.leak.warm_up()
        self.activity.warm_up()
        self.observation.warm_up()
        self.remover.warm_up()
        self._gain_on_bins(self.remover.gain, out=self._gain.copy())
        self.vocoder.warm_up()
        if self.relocator is not None:
            self.relocator.search.warm_up()

    @property
    def started(self) -> bool:
        """Whether the recording is playing: the soloist has been heard since the start or
        the last restart (at once with ``intro``)."""
        return self.follower.started

    def restart(self, x_s: float, wait: bool | None = None) -> None:
        """Start again at ``x_s`` seconds of X, waiting for the soloist's next note (or, with
        ``intro``, playing from there at once: what ``start_s`` does at launch; ``wait``
        True: wait for the soloist whatever ``intro`` says). Call between blocks (the live
        worker does).

        What a restart resets (what was heard before it must not start the new run): the
        follower's belief, the relocator (its frames, screening, trial and the search's
        context), U's spectrum and onset history, the activity gate's hold, the solo
        presence, the separation's activations; the vocoder seeks to the new place at the
        first note. What it keeps, as properties of the player and the room: the detune
        estimate, the gate's and the denoiser's noise floor, the leak canceller's loop,
        the input resampler's stream.
        """
        x_s = float(min(max(x_s, 0.0), max(0.0, self.bundle.duration_s - 1e-3)))
        wait = not self.config.intro if wait is None else wait
        self.follower.reset(self._waiting_place(x_s), keep_detune=True, wait=wait)
        restarted = (self.relocator, self.spectrum, self.observation, self.presence, self.remover, self.anticipator)
        for stage in restarted:
            if stage is not None:
                stage.reset()
        self.activity.release()
        self._playing = False

    def _check_the_end(self, x_s: float) -> None:
        """Once the recording has played to the end of its music (``x_s``: the position,
        seconds of X) and the soloist has been silent for ``again_after_s``, the run ends
        at the end of this block (see :class:`player.config.EngineConfig`)."""
        follower = self.follower
        if (self._again_after > 0 and follower.started and follower.silent_frames >= self._again_after
                and x_s >= self.music_end_s):
            self._again_due = True

    def _waiting_place(self, x_s: float) -> float:
        """Where to wait for the soloist's first note when asked to start at ``x_s``
        (seconds of X): there, or where the music begins if that is later."""
        return max(x_s, self.music_start_s)

    @property
    def state(self) -> FollowerState:
        return self.follower.state

    @property
    def u_time_s(self) -> float:
        """Seconds of U consumed so far."""
        return self._in_samples / self.input_sr

    @property
    def heard_u_s(self) -> float:
        """When (seconds of U) the first sample of the last block returned is heard: the end
        of the input block that produced it, plus the output latency."""
        return self.u_time_s + self.output_latency_s

    def process(self, block: np.ndarray) -> np.ndarray:
        """Consume one block of U ``(n,)`` or ``(n, channels)``; return ``(m, out_channels)``.

        ``m`` keeps the output clock in step with the input clock at the output's rate
        (``m == n`` when both rates are equal, as in a duplex stream).
        """
        stats = self.stats
        stats.blocks += 1
        block = np.asarray(block, dtype=np.float32)
        if not np.isfinite(block).all():  # a broken driver buffer: treat as silence
            stats.nan_blocks += 1
            block = np.zeros_like(block)
        mono = to_mono(block)
        t0 = time.perf_counter()
        hops = self._input.push(mono)
        self._in_samples += block.shape[0]
        u_time = self.u_time_s
        stats.seconds["analysis"] += time.perf_counter() - t0
        for hop_samples in hops:
            self._process_frame(hop_samples, u_time)
        if self._again_due:  # the piece is over: wait where the run began for the next note
            self._again_due = False
            stats.agains += 1
            self.restart(self.config.start_s, wait=True)
        n_out = int(round(self._in_samples * self.output_sr / self.input_sr)) - self._out_samples
        self._out_samples += n_out
        out = self._render(n_out)
        t0 = time.perf_counter()
        self.leak.push_played(out)  # what was played, analysed like the input
        stats.seconds["analysis"] += time.perf_counter() - t0
        return out

    def _render(self, n_out: int) -> np.ndarray:
        """The next ``n_out`` output samples: X at the controller's rate, solo removed."""
        if not self.follower.started:  # nothing to follow yet: wait for the player
            self.heard_x_s = self.heard_rate = math.nan
            self.heard_seek = False
            return np.zeros((n_out, self.output_channels), dtype=np.float32)
        stats = self.stats
        t0 = time.perf_counter()
        st = self.follower.state
        scheduled = self.anticipator.x_s
        target = (scheduled if math.isfinite(scheduled) else st.x_s) + st.tempo * self.output_latency_s
        if not self._playing:
            self.vocoder.seek(target)
            self._playing = True
        position = self.vocoder.position_s
        rate, jump_to = self.controller.step(position, target, st.tempo, n_out / self.output_sr)
        self.heard_seek = jump_to is not None
        if jump_to is not None:
            self.vocoder.seek(jump_to)
            if abs(jump_to - position) > self.controller.config.jump_s:  # elsewhere: what the remover knew is stale
                self.remover.reset()
        gain = None
        if self.remover.config.alpha > 0.0:
            fresh = self.remover.due(self.presence.sounding_now, self.follower.last_change)
            x_mag = self.x_spectrum.at(st.x_frame_s) if fresh else None
            g = self.remover.update(x_mag, self._u_mag, st.detune_cents, strength=self.presence.value)
            gain = self._gain_on_bins(g, out=self._gain)
        t1 = time.perf_counter()
        self.heard_x_s = self.vocoder.position_s
        self.heard_rate = rate
        out = self.vocoder.render(n_out, rate, gain)
        stats.seconds["separation"] += t1 - t0
        stats.seconds["vocoder"] += time.perf_counter() - t1
        return out

    def _process_frame(self, hop_samples: np.ndarray, u_time: float) -> None:
        """One analysis frame through the stages."""
        stats = self.stats
        t0 = time.perf_counter()
        frame = self._frame
        self._analysis_samples += hop_samples.shape[0]
        frame.samples, frame.end_s, frame.now_s = hop_samples, self._analysis_samples / self.params.sr, u_time
        for stage in self._analysis:
            stage.process_frame(frame)
        self._u_mag = frame.mag  # after the leak canceller, before the room's noise is removed
        t1 = time.perf_counter()
        frame.evidence_before, frame.position_before = self.follower.log_evidence, self.follower.position_states
        self.follower.process_frame(frame)
        self.presence.process_frame(frame)
        t2 = time.perf_counter()
        if self.relocator is not None:
            self.relocator.process_frame(frame)
            stats.jumps += self.relocator.moved
            if self.relocator.moved:
                self.anticipator.reset()
        st = self.follower.state
        self.anticipator.process_frame(frame, st.x_s, st.tempo)
        self._check_the_end(st.x_s)
        t3 = time.perf_counter()
        stats.frames += 1
        stats.seconds["analysis"] += t1 - t0
        stats.seconds["follower"] += t2 - t1
        stats.seconds["search"] += t3 - t2
        if self.on_frame is not None:
            self.on_frame(u_time, self.follower.state)
