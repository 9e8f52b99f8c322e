"""The offline analysis of a recording X into a bundle (``prep build`` without the CLI).

Streamed, in bounded memory: the recording is never decoded whole, and the bundle's large
arrays are written block by block into pre-sized datasets. Passes over the file, each a
stage reported through ``progress(stage, done, total)`` (so the CLI can draw bars and
tests can stay quiet):

1. ``load``: one pass checks the file (header, length, NaN/Inf, peak, silence) and keeps
   nothing, so a silent or broken recording is refused before any analysis.
2. ``analyse``: decode, mix to mono, resample (soxr, streamed), coarse STFT: its states
   are written (float16) as they come, their log templates' global range is kept (the
   8-bit codes need it) and the evenly spaced frames the NMF learns from are kept; the
   onset strength at the fine hop is written too.
3. ``templates``: decode again, the same states, their log templates quantised with that
   range and written.
4. ``nmf``: learn the accompaniment bases (PG-NMF) from the kept frames.
5. ``write``: decode again, the audio encoded chunk by chunk; the bundle appears only now
   (atomically).

A recording peaking above full scale (a floating-point file) is scaled down to full scale,
for the analysis and the stored audio alike (``BuildSummary.gain_db``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared import __version__
from shared.audio import (
    AudioScan,
    StreamResampler,
    block_frames,
    check_readable_file,
    file_sha256,
    read_blocks,
    resampled_length,
    scan_audio,
    to_mono,
)
from shared.bundle import BundleWriter, NMFBases, SourceInfo, write_bundle
from shared.config import field_error
from shared.fileio import check_output_path
from shared.pgnmf import GammaPriors, learn
from shared.spectral import (
    AnalysisParams,
    CentredSTFT,
    OnsetCurve,
    QuantizedTemplates,
    centred_frame_count,
    log_templates,
    onset_filterbank,
)

Progress = Callable[[str, int, int], None]

#: Stage names, in order, as reported to ``progress``.
STAGES = ("load", "analyse", "templates", "nmf", "write")


@dataclass(frozen=True)
class BuildOptions:
    """Parameters of ``prep build`` beyond the spectral analysis.

    Attributes:
        params: spectral analysis parameters (stored in the bundle).
        n_components: number of accompaniment NMF bases.
        nmf_iter: maximum VB iterations of the batch learning.
        nmf_max_frames: at most this many (evenly spaced) coarse frames feed the NMF, which
            bounds its cost for long recordings.
        priors: Gamma priors of the PG-NMF (c < 1: sparse bases).
        seed: seed of the NMF initialisation (builds are deterministic).
    """

    params: AnalysisParams = field(default_factory=AnalysisParams)
    n_components: int = 32
    nmf_iter: int = 100
    nmf_max_frames: int = 1500
    priors: GammaPriors = field(default_factory=GammaPriors)
    seed: int = 0

    def __post_init__(self) -> None:
        for name, lo, hi in (("n_components", 1, 512), ("nmf_iter", 1, 10000), ("nmf_max_frames", 16, 100000)):
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise field_error(self, name, value, f"within {lo}..{hi}")


@dataclass(frozen=True)
class BuildSummary:
    """What a build produced (for the CLI's summary line and for scripts)."""

    output: Path
    duration_s: float
    sample_rate: int
    channels: int
    n_states: int
    n_detune: int
    n_components: int
    bundle_bytes: int
    seconds: float
    #: The source's largest absolute sample (1.0 = full scale).
    source_peak: float = 1.0
    #: Gain applied to the source (dB): negative when it peaked above full scale and was
    #: scaled down to it (analysis and stored audio alike), else 0.
    gain_db: float = 0.0


#: Poisson NMF works on counts: magnitudes are scaled so the mean cell holds this many.
NMF_MEAN_COUNT = 4.0


def nmf_frame_indices(n_states: int, max_frames: int) -> np.ndarray:
    """The coarse states the NMF learns from: at most ``max_frames``, evenly spaced over
    ``n_states``, int64 ``(n,)`` ascending."""
    return np.unique(np.linspace(0, n_states - 1, min(n_states, max_frames)).round().astype(np.int64))


def learn_accompaniment_bases(frames: np.ndarray, options: BuildOptions,
                              progress: Progress | None = None) -> NMFBases:
    """Learn PG-NMF bases from X's coarse magnitude spectra ``(n_frames, n_bins)`` (the
    states :func:`nmf_frame_indices` picks)."""
    frames = np.asarray(frames, dtype=np.float64)
    mean = float(frames.mean())
    scale = NMF_MEAN_COUNT / mean if mean > 0 else 1.0
    callback = (lambda i, total: progress("nmf", i, total)) if progress else None
    state, trace = learn(frames * scale, options.n_components, priors=options.priors,
                         n_iter=options.nmf_iter, seed=options.seed, callback=callback)
    p = options.priors
    return NMFBases(
        w_shape=state.w_shape.astype(np.float32),
        w_rate=state.w_rate.astype(np.float32),
        priors={"a": p.a, "b": p.b, "c": p.c, "d": p.d},
        n_iter=options.nmf_iter,
        bound_trace=np.asarray(trace, dtype=np.float64),
        data_scale=scale,
    )


def min_duration_s(params: AnalysisParams) -> float:
    """Shortest recording analysed (seconds): one analysis window, and two states (a
    bundle holds at least two)."""
    return max(params.window_s, params.coarse_period_s)


def full_scale_gain(peak: float) -> float:
    """Linear gain for a recording whose largest absolute sample is ``peak``: ``1 / peak``
    when it exceeds full scale (1.0, only floating-point files can), else 1."""
    return 1.0 / peak if peak > 1.0 else 1.0


@dataclass(frozen=True)
class AnalysisSizes:
    """How long X's analysis is, known from the file's frame count before any analysis.

    Attributes:
        n_samples: samples of the mono mix at ``params.sr``.
        n_states: coarse states (frames at ``coarse_hop``).
        n_onset_frames: onset-strength frames (at ``fine_hop``).
    """

    n_samples: int
    n_states: int
    n_onset_frames: int

    @classmethod
    def of(cls, scan: AudioScan, params: AnalysisParams) -> AnalysisSizes:
        n = resampled_length(scan.n_samples, scan.sr, params.sr) if scan.sr != params.sr else scan.n_samples
        return cls(n, centred_frame_count(n, params.n_fft, params.coarse_hop), n // params.fine_hop + 1)


def mono_blocks(source: Path, scan: AudioScan, gain: float, sr: int,
                progress: Callable[[int, int], None] | None = None) -> Iterator[np.ndarray]:
    """X's mono mix (times ``gain``) at ``sr`` Hz, block by block: float32 ``(n,)``,
    :class:`AnalysisSizes` ``n_samples`` in all; ``progress(done_blocks, total_blocks)``."""
    resampler = StreamResampler(scan.sr, sr, scan.n_samples)
    total = max(1, -(-scan.n_samples // block_frames(scan.channels)))
    for i, block in enumerate(read_blocks(source, scan, gain=gain, what="recording")):
        yield resampler.push(to_mono(block))
        if progress:
            progress(i + 1, total)
    yield resampler.finish()


def coarse_states(mono: Iterable[np.ndarray], stft: CentredSTFT,
                  each_block: Callable[[np.ndarray], None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The coarse STFT of a mono stream, as ``(first_state, magnitudes (k, n_bins))`` for
    each block that completes states; ``each_block(y)`` sees every mono block first."""
    for y in mono:
        if each_block:
            each_block(y)
        mag = stft.push(y)
        if mag.shape[0]:
            yield stft.done - mag.shape[0], mag
    mag = stft.finish()
    if mag.shape[0]:
        yield stft.done - mag.shape[0], mag


def analyse(source: Path, scan: AudioScan, gain: float, options: BuildOptions, bank: np.ndarray,
            bundle: BundleWriter, report: Progress) -> tuple[tuple[float, float], np.ndarray]:
    """Stage ``analyse``: write X's coarse states and onset strength to ``bundle``.

    Returns:
        ``(lo, hi)``: the range of all the states' log templates (every detune variant);
        float32 ``(n, n_bins)``: the states :func:`nmf_frame_indices` picks for the NMF.
    """
    params = options.params
    sizes = AnalysisSizes.of(scan, params)
    stft = CentredSTFT(params, params.coarse_hop, sizes.n_samples)
    onsets = OnsetCurve(params, sizes.n_samples, bank)
    take = nmf_frame_indices(sizes.n_states, options.nmf_max_frames)
    frames = np.empty((take.size, params.n_bins), dtype=np.float32)
    lo, hi = math.inf, -math.inf
    mono = mono_blocks(source, scan, gain, params.sr, lambda i, n: report("analyse", i, n))
    for first, mag in coarse_states(mono, stft, lambda y: bundle.add_onsets(onsets.push(y))):
        bundle.add_coarse(mag)
        log_t = log_templates(mag, params)
        lo, hi = min(lo, float(log_t.min())), max(hi, float(log_t.max()))
        a, b = np.searchsorted(take, [first, first + mag.shape[0]])
        frames[a:b] = mag[take[a:b] - first]
    bundle.add_onsets(onsets.finish())
    return (lo, hi), frames


def quantise_templates(source: Path, scan: AudioScan, gain: float, params: AnalysisParams,
                       log_range: tuple[float, float], bundle: BundleWriter, report: Progress) -> None:
    """Stage ``templates``: the states again, their log templates quantised to 8 bits over
    ``log_range`` (the global range :func:`analyse` found, as
    :meth:`QuantizedTemplates.from_log` takes it) and written to ``bundle``."""
    offset, step = QuantizedTemplates.scale(*log_range)
    bundle.set_template_scale(offset, step)
    stft = CentredSTFT(params, params.coarse_hop, AnalysisSizes.of(scan, params).n_samples)
    mono = mono_blocks(source, scan, gain, params.sr, lambda i, n: report("templates", i, n))
    for _, mag in coarse_states(mono, stft):
        bundle.add_templates(QuantizedTemplates.quantize(log_templates(mag, params), offset, step))


def build_bundle(
    source: str | Path,
    output: str | Path,
    options: BuildOptions | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> BuildSummary:
    """Analyse ``source`` and write its bundle to ``output``, streamed (see the module
    docstring): memory holds a block of audio, never the recording.

    Raises:
        AudioError: the source is unusable (missing, corrupt, silent, too short, NaN...).
        OutputError: ``output`` cannot be written, or exists and ``force`` is False.
    """
    started = time.perf_counter()
    options = options or BuildOptions()
    params = options.params
    report = progress or (lambda stage, done, total: None)
    source, output = Path(source), Path(output)
    check_readable_file(source, "recording")
    check_output_path(output, force)  # fail before minutes of work, not after

    report("load", 0, 1)
    scan = scan_audio(source, min_duration_s=min_duration_s(params), what="recording",
                      progress=lambda done, total: report("load", done, total))
    gain = full_scale_gain(scan.peak)
    sha = file_sha256(source)
    sizes = AnalysisSizes.of(scan, params)
    info = SourceInfo(name=source.name, sha256=sha, duration_s=scan.duration_s)
    with write_bundle(output, params, info, n_states=sizes.n_states, n_onset_frames=sizes.n_onset_frames,
                      force=force, tool_version=__version__) as bundle:
        report("analyse", 0, 1)
        bank = onset_filterbank(params)
        bundle.write_onset_bank(bank)
        log_range, frames = analyse(source, scan, gain, options, bank, bundle, report)
        report("templates", 0, 1)
        quantise_templates(source, scan, gain, params, log_range, bundle, report)
        bundle.write_nmf(learn_accompaniment_bases(frames, options, progress))
        del frames
        report("write", 0, 1)
        bundle.write_audio(read_blocks(source, scan, gain=gain, what="recording"), scan.n_samples, scan.channels,
                           scan.sr, scan.subtype, progress=lambda i, total: report("write", i, total))
    return BuildSummary(
        output=output,
        duration_s=scan.duration_s,
        sample_rate=scan.sr,
        channels=scan.channels,
        n_states=sizes.n_states,
        n_detune=len(params.detune_cents),
        n_components=options.n_components,
        bundle_bytes=output.stat().st_size,
        seconds=time.perf_counter() - started,
        source_peak=scan.peak,
        gain_db=20.0 * math.log10(gain),
    )
