"""The analysis stages at both ends of the per-frame chain (see :mod:`player.stages`):
the spectrum of each hop of U, and the observation the follower compares with X."""

from __future__ import annotations

import numpy as np

from player.stages import Frame
from shared.spectral import AnalysisParams, OnlineSpectrum, OnsetStrength, observation_features


class SpectrumStage:
    """``frame.samples`` (one hop at the analysis rate) -> ``frame.mag`` ``(n_bins,)``, the
    magnitude of the latest ``n_fft`` samples (:class:`shared.spectral.OnlineSpectrum`)."""

    def __init__(self, params: AnalysisParams) -> None:
        self.spectrum = OnlineSpectrum(params)

    def process_frame(self, frame: Frame) -> None:
        frame.mag = self.spectrum.push(frame.samples)

    def warm_up(self) -> None:
        """Load the compiled kernel now, not in the first audio callback."""
        self.spectrum.warm_up()

    def reset(self) -> None:
        self.spectrum.reset()


class ObservationStage:
    """``frame.clean`` (U's magnitude with the leak and the room's noise removed) ->
    ``frame.obs`` (float32 ``(n_obs_bins,)``, compressed, normalised to sum 1) and
    ``frame.onset`` (onset strength in [0, 1], with the same code prep used for X).

    Args:
        params: the bundle's analysis parameters.
        onset_bank: the bundle's onset filterbank ``(onset_bands, n_bins)``.
    """

    def __init__(self, params: AnalysisParams, onset_bank: np.ndarray | None = None) -> None:
        self.params = params
        self.onsets = OnsetStrength(params, onset_bank)
        self._obs = np.zeros(params.n_obs_bins, dtype=np.float32)  # reused: later stages copy what they keep

    def process_frame(self, frame: Frame) -> None:
        frame.obs = observation_features(frame.clean, self.params, out=self._obs)
        frame.onset = self.onsets.push(frame.clean)  # after the leak and noise removal: the soloist's own

    def warm_up(self) -> None:
        """Load the compiled kernels now, not in the first audio callback (see
        :meth:`player.follower.Follower.warm_up`); the stage's state is unchanged."""
        observation_features(np.zeros(self.params.n_bins, dtype=np.float32), self.params, out=self._obs.copy())
        self.onsets.warm_up()

    def reset(self) -> None:
        self.onsets.reset()
