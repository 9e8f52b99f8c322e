"""The block engine: one code path for live audio and for files.

Each call to :meth:`Engine.process` takes one block of U (any rate, any channels) and
returns the block to play (X's rate and channels). Inside: NaN guard -> mono -> streaming
resampler to the analysis rate -> one analysis frame per fine hop (spectrum, activity,
room-noise subtraction, follower, global search) -> once per block: playback rate
(controller), solo-removal gain (2-row PG-NMF) and the phase vocoder's output. Nothing
here touches files or devices, so the file runner and the live audio thread drive exactly
the same code.

Latency: the block returned is heard ``output_latency_s`` after the end of the input block
it answers (0 in file mode, where the runner writes it one block later; the device and
queue latency in live mode). The vocoder reads X ahead by that much, so the only
algorithmic delay is the one block of buffering.

Timing: every analysis frame is reported through ``on_frame(u_time_s, state)`` where
``u_time_s`` is the time of U consumed so far when the belief became available (the end of
the block), so a path written from it is causal by construction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import soxr

from player.activity import ActivityConfig, ActivityDetector
from player.denoise import DenoiseConfig, NoiseProfile
from player.echo import LeakCanceller, LeakConfig
from player.follower import Follower, FollowerConfig, FollowerState, OnsetTerms
from player.playback import PlaybackConfig, PlaybackController
from player.search import GlobalSearch, Relocator, SearchConfig
from player.separation import PositionSpectrum, SeparationConfig, SoloRemover, gain_on_bins
from player.vocoder import StreamingVocoder
from shared.audio import first_sound_s, to_mono
from shared.bundle import Bundle
from shared.errors import BundleError
from shared.spectral import OnlineSpectrum, OnsetStrength, observation_features

FrameCallback = Callable[[float, FollowerState], None]


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine can be tuned with.

    Attributes:
        start_s: where in X the player starts (seconds); the search still finds them elsewhere.
        search: enable the global search (re-lock after jumps, start anywhere).
        output_latency_s: seconds from the end of an input block until the first sample of
            the block returned for it is heard (device and queue latency; 0 for files).
        intro: play X at once from the start (and from every restart) at its own tempo
            instead of waiting for the soloist's first note: a concerto's opening tutti,
            after which the soloist comes in (found like a re-entry after a rest).
    """

    follower: FollowerConfig = field(default_factory=FollowerConfig)
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    search_config: SearchConfig = field(default_factory=SearchConfig)
    separation: SeparationConfig = field(default_factory=SeparationConfig)
    playback: PlaybackConfig = field(default_factory=PlaybackConfig)
    leak: LeakConfig = field(default_factory=LeakConfig)
    denoise: DenoiseConfig = field(default_factory=DenoiseConfig)
    start_s: float = 0.0
    search: bool = True
    output_latency_s: float = 0.0
    intro: bool = False


@dataclass
class EngineStats:
    """Counters and per-stage CPU seconds (perf_counter) since the start."""

    blocks: int = 0
    frames: int = 0
    nan_blocks: int = 0
    jumps: int = 0
    seconds: dict = field(default_factory=lambda: {"analysis": 0.0, "follower": 0.0, "search": 0.0,
                                                           "separation": 0.0, "vocoder": 0.0})


#: Seconds at the head of X searched for where its music begins (and whose loudest moment
#: sets the level that counts as music).
MUSIC_START_SEARCH_S = 30.0

#: Analysis frame periods (seconds) this player runs at: the block is one frame long.
SUPPORTED_FRAME_PERIOD_S = (0.005, 0.05)


def check_supported(bundle: Bundle) -> None:
    """Refuse, with one clear line, a bundle analysed with parameters this player cannot run."""
    p = bundle.params
    lo, hi = SUPPORTED_FRAME_PERIOD_S
    if not lo <= p.fine_period_s <= hi:  # (shapes against the parameters: checked by the loader)
        raise BundleError(f"bundle {bundle.path.name} was made with a frame period of {1000 * p.fine_period_s:.0f} ms; "
                          f"this player supports {1000 * lo:.0f}-{1000 * hi:.0f} ms: rebuild it with 'prep build'")


class HopStream:
    """Mono blocks at any rate in, whole analysis hops out: a streaming resampler to the
    analysis rate and a FIFO that keeps the remainder for the next block."""

    def __init__(self, sr_in: int, sr: int, hop: int) -> None:
        self.hop = hop
        self._resampler = (None if sr_in == sr else
                           soxr.ResampleStream(sr_in, sr, 1, dtype="float32", quality="LQ"))
        self._fifo = np.zeros(0, dtype=np.float32)

    def push(self, mono: np.ndarray) -> np.ndarray:
        """Take ``(n,)`` samples at ``sr_in``; return the completed hops ``(k, hop)`` at ``sr``."""
        if self._resampler is not None:
            mono = self._resampler.resample_chunk(mono)
        fifo = np.concatenate([self._fifo, mono]) if self._fifo.size else mono
        k = fifo.size // self.hop
        self._fifo = fifo[k * self.hop:].copy()
        return fifo[: k * self.hop].reshape(k, self.hop)


class Engine:
    """Follows U block by block and renders X along.

    Args:
        bundle: the loaded bundle of X.
        input_sr: sample rate of U's blocks (Hz).
        config: tuning.
        on_frame: called once per analysis frame with ``(u_time_s, state)``.
    """

    def __init__(self, bundle: Bundle, input_sr: int, config: EngineConfig | None = None,
                 on_frame: FrameCallback | None = None) -> None:
        check_supported(bundle)
        self.bundle = bundle
        self.params = bundle.params
        self.config = config or EngineConfig()
        self.input_sr = int(input_sr)
        self.output_sr = bundle.audio.sr
        self.output_channels = bundle.audio.channels
        self.on_frame = on_frame
        p = self.params
        self._input = HopStream(self.input_sr, p.sr, p.fine_hop)
        self.spectrum = OnlineSpectrum(p)
        self.onsets = OnsetStrength(p, bundle.onset_bank)
        self.activity = ActivityDetector(p, self.config.activity)
        onset_terms = OnsetTerms.from_strength(bundle.onsets, p, self.config.follower, bundle.n_states)
        self.follower = Follower(bundle.templates, p, self.config.follower, onset_terms)
        self.relocator = None
        if self.config.search:
            self.relocator = Relocator(GlobalSearch(bundle.templates, p, self.config.search_config),
                                       [Follower(bundle.templates, p, self.config.follower, onset_terms)
                                        for _ in range(self.config.search_config.candidates + 1)],
                                       self.config.search_config, p.fine_period_s)
        self.controller = PlaybackController(self.config.playback)
        self.vocoder = StreamingVocoder(bundle.audio)
        self.remover = SoloRemover(bundle.nmf, p, self.config.separation)
        self.x_spectrum = PositionSpectrum(bundle.audio, p)
        self._gain = np.ones(self.vocoder.n_bins)
        self._vocoder_freqs = np.arange(self.vocoder.n_bins) * self.vocoder.bin_hz
        self._u_mag = np.zeros(p.n_fft // 2 + 1, dtype=np.float32)
        self._playing = False
        self._presence = 0.0  # how surely the soloist is sounding, in [0, 1], held over hold_s
        self._sounding_now = False  # U's latest frame is above the sounding threshold
        # what the engine played, analysed like the input, for the leak canceller
        self.leak = LeakCanceller(p, self.config.leak)
        self.denoise = NoiseProfile(p.n_bins, p.fine_period_s, self.config.denoise)
        self._played = HopStream(self.output_sr, p.sr, p.fine_hop)
        self._out_spectrum = OnlineSpectrum(p)
        self._out_frames = np.zeros((8, p.n_fft // 2 + 1), dtype=np.float32)  # ring of output spectra
        self._out_written = self._out_read = 0
        self._silence = np.zeros(p.n_fft // 2 + 1, dtype=np.float32)
        self.output_latency_s = float(self.config.output_latency_s)
        self.stats = EngineStats()
        self._in_samples = 0
        self._analysis_samples = 0
        self._out_samples = 0
        start = float(self.config.start_s)
        if not 0.0 <= start < bundle.duration_s:
            raise ValueError(f"start {start:.2f} s is outside the recording (0..{bundle.duration_s:.2f} s)")
        # nobody starts playing in the recording's leading silence: waiting at the start of
        # the piece means waiting where its music begins
        head = bundle.audio.read(0, int(min(bundle.duration_s, MUSIC_START_SEARCH_S) * self.output_sr))
        self.music_start_s = first_sound_s(head, self.output_sr)
        self.follower.reset(self._waiting_place(start), wait=not self.config.intro)
        self.follower.warm_up()
        self.remover.warm_up()

    @property
    def started(self) -> bool:
        """Whether the recording is playing: the soloist has been heard since the start or
        the last restart (at once with ``intro``)."""
        return self.follower.started

    def restart(self, x_s: float) -> None:
        """Start again at ``x_s`` seconds of X, waiting for the soloist's next note (or, with
        ``intro``, playing from there at once: what ``start_s`` does at launch); the detune
        estimate and the room's noise floor stay. Call between blocks (the live worker does)."""
        x_s = float(min(max(x_s, 0.0), max(0.0, self.bundle.duration_s - 1e-3)))
        self.follower.reset(self._waiting_place(x_s), keep_detune=True, wait=not self.config.intro)
        if self.relocator is not None:
            self.relocator.cancel()
        # what was heard before the restart must not start the new run
        self.spectrum.reset()
        self.onsets.reset()
        self.activity.release()
        self._presence = 0.0
        self._playing = False  # the vocoder seeks to the new place at the first note
        self.remover.reset()

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
            self._frame(hop_samples, u_time)
        n_out = int(round(self._in_samples * self.output_sr / self.input_sr)) - self._out_samples
        self._out_samples += n_out
        out = self._render(n_out)
        if self.config.leak.enabled:
            self._analyse_output(out)
        return out

    def _analyse_output(self, out: np.ndarray) -> None:
        """Queue the spectra of what was just played, one per analysis hop (leak canceller)."""
        t0 = time.perf_counter()
        ring = self._out_frames
        for hop_samples in self._played.push(to_mono(out)):
            if self._out_written - self._out_read >= ring.shape[0]:  # the input stalled: drop the oldest
                self._out_read += 1
            ring[self._out_written % ring.shape[0]] = self._out_spectrum.push(hop_samples)
            self._out_written += 1
        self.stats.seconds["analysis"] += time.perf_counter() - t0

    def _next_output_frame(self) -> np.ndarray | None:
        if self._out_read >= self._out_written:
            return None
        frame = self._out_frames[self._out_read % self._out_frames.shape[0]]
        self._out_read += 1
        return frame

    def _render(self, n_out: int) -> np.ndarray:
        """The next ``n_out`` output samples: X at the controller's rate, solo removed."""
        if not self.follower.started:  # nothing to follow yet: wait for the player
            return np.zeros((n_out, self.output_channels), dtype=np.float32)
        stats = self.stats
        t0 = time.perf_counter()
        st = self.follower.state
        target = st.x_s + st.tempo * self.output_latency_s
        if not self._playing:
            self.vocoder.seek(target)
            self._playing = True
        rate, jump_to = self.controller.step(self.vocoder.position_s, target, st.tempo, n_out / self.output_sr)
        if jump_to is not None:
            self.vocoder.seek(jump_to)
            self.remover.reset()
        gain = None
        sep = self.remover.config
        if sep.alpha > 0.0:
            x_mag = self.x_spectrum.at(st.x_frame_s) if self._sounding_now else None
            g = self.remover.update(x_mag, self._u_mag, st.detune_cents, strength=self._presence)
            gain = gain_on_bins(g, self.remover.freqs_hz, self._vocoder_freqs, out=self._gain)
        t1 = time.perf_counter()
        out = self.vocoder.render(n_out, rate, gain)
        stats.seconds["separation"] += t1 - t0
        stats.seconds["vocoder"] += time.perf_counter() - t1
        return out

    def _sounding(self, held: float) -> float:
        """Presence of the soloist for the separation: 0 at the noise floor + threshold, 1 a
        ramp above it; a drop decays linearly over ``hold_s`` (the solo's decay in X)."""
        sep, act = self.remover.config, self.activity
        now = (act.level_db - act.floor_db - sep.threshold_db) / sep.ramp_db
        self._sounding_now = now > 0.0
        decay = self.params.fine_period_s / sep.hold_s if sep.hold_s > 0 else 1.0
        return float(min(1.0, max(now, held - decay, 0.0)))

    def _frame(self, hop_samples: np.ndarray, u_time: float) -> None:
        stats = self.stats
        t0 = time.perf_counter()
        self._analysis_samples += hop_samples.shape[0]
        frame_end = self._analysis_samples / self.params.sr
        mag = self.spectrum.push(hop_samples)
        if self.config.leak.enabled:
            played = self._next_output_frame()
            self.leak.push_output(played if played is not None else self._silence)
            mag = self.leak.cancel(mag)
        self._u_mag = mag
        active = self.activity.update(mag)
        self.denoise.observe(mag, self.activity.level_db, active, self.activity.room_noise)
        clean = self.denoise.clean(mag)
        u = observation_features(clean, self.params)
        onset = self.onsets.push(clean)  # after the leak and noise removal: the soloist's own onsets
        t1 = time.perf_counter()
        evidence_before, position_before = self.follower.log_evidence, self.follower.position_states
        scale = self.denoise.evidence_scale
        state = self.follower.process(u, active, frame_end, now_s=u_time, evidence_scale=scale, onset=onset)
        self._presence = self._sounding(self._presence)
        t2 = time.perf_counter()
        if self.relocator is not None and self.relocator.step(u, active, frame_end, u_time, self.follower,
                                                              evidence_before, position_before, scale, onset):
            stats.jumps += 1
        t3 = time.perf_counter()
        stats.frames += 1
        stats.seconds["analysis"] += t1 - t0
        stats.seconds["follower"] += t2 - t1
        stats.seconds["search"] += t3 - t2
        if self.on_frame is not None:
            self.on_frame(u_time, state)
