"""The bundle's schema: its layout, the bounds a bundle may declare, and the objects it
holds once loaded.

Layout (schema version 2)::

    /                    attrs: format, format_version, source_name, source_sha256,
                                source_duration_s, created_utc*, tool_version*
    /params              attrs: the AnalysisParams (sr, n_fft, hops, band, gain, detune_cents,
                                onset_*)
    /audio/data          FLAC:  uint8 (n_bytes,)    concatenated FLAC streams, one per chunk
                         PCM:   int16|int32 (n_samples, channels), shuffle+gzip (> 8 channels)
    /audio/offsets       int64 (n_chunks + 1,)      byte offsets of the FLAC chunks
    /audio               attrs: codec, sr, channels, n_samples, chunk_samples, subtype,
                                music_start_s (where the music starts, seconds: see
                                shared.audio.music_start_s; optional, older bundles lack it)
    /spectra/coarse      float16 (n_states, n_bins) magnitude of X at the coarse hop
    /spectra/power       float64 (n_states,)        each state's power: the sum of its stored
                         magnitudes squared (in float32); optional (older bundles lack it)
    /spectra/onsets      float32 (n_frames,)        onset strength of X at the fine hop, in [0, 1]
                         (frame k centred on sample k * fine_hop at params.sr)
    /spectra/onset_bank  float32 (onset_bands, n_bins) the mel filterbank of the onset strength
    /templates/log_obs   uint8 (n_detune, n_states, n_obs_bins) log observation templates,
                         attrs offset, step: log T = offset + step * code
    /templates/detune_cents float64 (n_detune,)
    /nmf/w_shape, /nmf/w_rate float32 (n_components, n_bins) q(W) of the accompaniment bases
    /nmf/bound_trace     float64 (n,)               learning curve of the VB bound
    /nmf                 attrs: a, b, c, d, n_iter, data_scale

(* volatile: reported by ``prep diff`` but not counted as a difference.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared import audio
from shared.audio_store import BundleAudio
from shared.spectral import AnalysisParams, QuantizedTemplates

FORMAT_NAME = "followme-karaoke-bundle"
FORMAT_VERSION = 2  # 2: /spectra/onsets and /spectra/onset_bank
#: Root attributes that change from build to build and are not content.
VOLATILE_ATTRS = ("created_utc", "tool_version")

#: Bounds on what a bundle may declare (protects the player from hostile files).
MAX_STATES = 4 * 3600 * 50
MAX_BINS = 8193
MAX_DETUNE = 31
MAX_COMPONENTS = 1024
MAX_CHANNELS = audio.MAX_CHANNELS  # what prep accepts is what a bundle may hold
MAX_SAMPLE_RATE = 384000
MAX_AUDIO_SAMPLES = 4 * 3600 * MAX_SAMPLE_RATE
MAX_CHUNK_SAMPLES = 1 << 20
#: Bytes of the arrays a loaded bundle holds in memory (everything but /audio, which is read
#: a chunk at a time): 4 hours with 5 detune steps need about 650 MB.
MAX_LOADED_BYTES = 768 << 20
#: Bytes of one storage chunk of any dataset (what one read decompresses at once; prep
#: writes at most 4 MB).
MAX_STORAGE_CHUNK_BYTES = 16 << 20
#: Longest text attribute (characters): names, hashes, dates, versions.
MAX_TEXT = 1024
MAX_NMF_ITER = 10000
ALLOWED_FILTERS = {None, "gzip", "lzf"}


@dataclass(frozen=True)
class SourceInfo:
    """What the bundle was made from."""

    name: str
    sha256: str
    duration_s: float


@dataclass(frozen=True)
class NMFBases:
    """Posterior q(W) of the accompaniment bases learned by prep, with their priors.

    Attributes:
        w_shape, w_rate: float32 ``(n_components, n_bins)`` Gamma shape and rate of W.
        priors: ``{"a", "b", "c", "d"}`` Gamma hyperparameters used in learning.
        n_iter: VB iterations run.
        bound_trace: float64 ``(n,)`` the bound along learning.
        data_scale: factor applied to magnitudes before the NMF (Poisson needs a count scale).
    """

    w_shape: np.ndarray
    w_rate: np.ndarray
    priors: dict
    n_iter: int
    bound_trace: np.ndarray = field(default_factory=lambda: np.zeros(0))
    data_scale: float = 1.0

    @property
    def W(self) -> np.ndarray:
        """Posterior mean E[W], float32 ``(n_components, n_bins)``."""
        return (self.w_shape / self.w_rate).astype(np.float32)


@dataclass
class Bundle:
    """A validated bundle, with the arrays the player keeps in memory (templates as 8-bit codes).

    ``state_mag`` (X's magnitude spectra at the coarse hop, float16 ``(n_states, n_bins)``)
    is None when the bundle was loaded without its spectra (``load_bundle(spectra=False)``:
    the player, which needs only their power, ``state_power``, float64 ``(n_states,)``).
    """

    path: Path
    params: AnalysisParams
    source: SourceInfo
    attrs: dict
    state_mag: np.ndarray | None
    state_power: np.ndarray
    onsets: np.ndarray
    onset_bank: np.ndarray
    templates: QuantizedTemplates
    nmf: NMFBases
    audio: BundleAudio
    #: where the music starts (seconds; :func:`shared.audio.music_start_s` of the stored
    #: audio), None for a bundle of an older prep
    music_start_s: float | None = None

    @property
    def n_states(self) -> int:
        return self.templates.n_states

    @property
    def duration_s(self) -> float:
        return self.audio.duration_s

    def close(self) -> None:
        self.audio.close()

    def __enter__(self) -> Bundle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
