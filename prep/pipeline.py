"""The offline analysis of a recording X into a bundle (``prep build`` without the CLI).

Stages: load -> analyse (coarse STFT, onset strength at the fine hop, detuned templates)
-> learn accompaniment bases (PG-NMF) -> encode audio and write the bundle atomically.
Progress is reported through a callback ``progress(stage, done, total)`` so the CLI can
draw bars and tests can stay quiet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared import __version__
from shared.audio import check_readable_file, file_sha256, load_audio, resample
from shared.bundle import BundleContent, NMFBases, SourceInfo, write_bundle
from shared.config import field_error
from shared.fileio import check_output_path
from shared.pgnmf import GammaPriors, learn
from shared.spectral import (
    AnalysisParams,
    QuantizedTemplates,
    log_templates,
    onset_filterbank,
    onset_strength_curve,
    stft_magnitude,
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


#: Poisson NMF works on counts: magnitudes are scaled so the mean cell holds this many.
NMF_MEAN_COUNT = 4.0


def learn_accompaniment_bases(state_mag: np.ndarray, options: BuildOptions,
                              progress: Progress | None = None) -> NMFBases:
    """Learn PG-NMF bases from X's coarse magnitude spectra ``(n_states, n_bins)``."""
    n = state_mag.shape[0]
    take = np.unique(np.linspace(0, n - 1, min(n, options.nmf_max_frames)).round().astype(np.int64))
    frames = state_mag[take].astype(np.float64)
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


def build_bundle(
    source: str | Path,
    output: str | Path,
    options: BuildOptions | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> BuildSummary:
    """Analyse ``source`` and write its bundle to ``output``.

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
    audio = load_audio(source, min_duration_s=params.window_s, what="recording")
    sha = file_sha256(source)
    report("load", 1, 1)

    report("analyse", 0, 1)
    mono = resample(audio.mono(), audio.sr, params.sr)
    state_mag = stft_magnitude(mono, params, params.coarse_hop)
    onset_bank = onset_filterbank(params)
    onsets = onset_strength_curve(mono, params, onset_bank)
    del mono
    report("analyse", 1, 1)

    report("templates", 0, 1)
    templates = QuantizedTemplates.from_log(log_templates(state_mag, params))
    report("templates", 1, 1)

    nmf = learn_accompaniment_bases(state_mag, options, progress)

    content = BundleContent(
        params=params,
        source=SourceInfo(name=source.name, sha256=sha, duration_s=audio.duration_s),
        state_mag=state_mag,
        onsets=onsets,
        onset_bank=onset_bank,
        templates=templates,
        nmf=nmf,
    )
    write_bundle(output, content, audio.samples, audio.sr, audio.subtype, force=force,
                 tool_version=__version__, progress=lambda i, total: report("write", i, total))
    return BuildSummary(
        output=output,
        duration_s=audio.duration_s,
        sample_rate=audio.sr,
        channels=audio.channels,
        n_states=state_mag.shape[0],
        n_detune=len(params.detune_cents),
        n_components=options.n_components,
        bundle_bytes=output.stat().st_size,
        seconds=time.perf_counter() - started,
    )
