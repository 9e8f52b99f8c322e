"""What a run did, frame by frame and block by block: the path, the report's data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from player.follower import FollowerState
from shared.errors import AudioError

#: Edges (Hz) of the bands the report's mask picture averages the gain over.
MASK_BAND_EDGES_HZ = np.geomspace(60.0, 8000.0, 49)

#: The columns of :attr:`RunTrace.frames`.
FRAME_COLUMNS = ("u_time_s", "x_s", "tempo", "confidence", "detune_cents", "active")
#: The columns of :attr:`RunTrace.heard`.
HEARD_COLUMNS = ("heard_u_s", "x_s", "rate", "seek")


@dataclass
class RunTrace:
    """What a run did over time.

    Attributes:
        frames: float64 ``(n_frames, 6)`` rows of :data:`FRAME_COLUMNS`; the first two are
            the alignment path (where in X the player was believed to be at each moment).
        block_u_s: ``(n_blocks,)`` U time (s) at the end of each block (empty unless masks
            were recorded).
        mask: ``(n_blocks, n_bands)`` float16 gain at the centre of each band of
            ``MASK_BAND_EDGES_HZ`` (interpolated: low bands hold less than one bin).
        heard: float64 ``(n_blocks, 4)`` rows of :data:`HEARD_COLUMNS`: for every output
            block, when its first sample is heard (seconds of U), the X time it plays and
            at what rate (NaN while silent), and 1 where it began with a seek: what the
            listener hears, exactly (:func:`shared.alignment.heard_times` scores it).
    """

    frames: np.ndarray
    block_u_s: np.ndarray
    mask: np.ndarray
    heard: np.ndarray = field(default_factory=lambda: np.zeros((0, len(HEARD_COLUMNS))))

    @property
    def path(self) -> np.ndarray:
        """The alignment path ``(n_frames, 2)``: u_time_s, x_s."""
        return self.frames[:, :2]

    def playing_tempo(self, min_s: float = 5.0) -> float:
        """The player's typical tempo against the recording's (X seconds per U second): the
        median of the follower's tempo over the frames where the soloist played and it was
        sure of the place; NaN if those frames last less than ``min_s`` seconds."""
        if len(self.frames) < 2:
            return float("nan")
        tempo, confidence, active = self.frames[:, 2], self.frames[:, 3], self.frames[:, 5]
        sure = (active > 0.5) & (confidence > 0.5) & np.isfinite(tempo)
        frame_s = float(np.median(np.diff(self.frames[:, 0])))
        return float(np.median(tempo[sure])) if sure.sum() * frame_s >= min_s else float("nan")


class TraceRecorder:
    """Collects a :class:`RunTrace` from the engine's callbacks: pass :meth:`frame` as the
    engine's ``on_frame`` and call :meth:`block` after each block (only needed for masks).

    Args:
        masks: also record the solo-removal gain of every block (for the report).
    """

    def __init__(self, masks: bool = False) -> None:
        self.masks_wanted = masks
        self.frames: list[tuple[float, ...]] = []
        self.blocks: list[float] = []
        self.masks: list[np.ndarray] = []
        self.heard: list[tuple[float, float, float, float]] = []
        self._centres = np.sqrt(MASK_BAND_EDGES_HZ[:-1] * MASK_BAND_EDGES_HZ[1:])

    def frame(self, u_time: float, st: FollowerState) -> None:
        self.frames.append((u_time, st.x_s, st.tempo, st.confidence, st.detune_cents, float(st.active)))

    def block(self, engine) -> None:
        """After each engine block: what it plays and when it is heard; its end time and
        gain by band (with ``masks``)."""
        self.heard.append((engine.heard_u_s, engine.heard_x_s, engine.heard_rate, float(engine.heard_seek)))
        if not self.masks_wanted:
            return
        remover = engine.remover
        self.blocks.append(engine.u_time_s)
        self.masks.append(np.interp(self._centres, remover.freqs_hz, remover.gain).astype(np.float16))

    def result(self) -> RunTrace:
        n_bands = self._centres.size
        masks = np.array(self.masks, dtype=np.float16).reshape(len(self.blocks), n_bands)
        return RunTrace(np.array(self.frames, dtype=np.float64).reshape(-1, len(FRAME_COLUMNS)),
                        np.array(self.blocks), masks, np.array(self.heard, dtype=np.float64).reshape(-1, len(HEARD_COLUMNS)))


def read_trace(folder: Path) -> RunTrace:
    """The trace of a rehearsal kept with ``--record`` (its ``trace.csv``; a rehearsal that
    was killed may end with a partly written row, which is left out)."""
    path = Path(folder) / "trace.csv"
    if not path.is_file():
        raise AudioError(f"{folder} holds no trace.csv: not a folder written by 'player run --record'")
    rows = []
    with open(path) as fh:
        header = fh.readline().strip().split(",")
        if tuple(header) != FRAME_COLUMNS:
            raise AudioError(f"{path} does not start with the header {','.join(FRAME_COLUMNS)}")
        for line in fh:
            values = line.strip().split(",")
            if len(values) != len(FRAME_COLUMNS):
                continue
            try:
                rows.append([float(v) for v in values])
            except ValueError:
                continue
    frames = np.array(rows, dtype=np.float64).reshape(-1, len(FRAME_COLUMNS))
    if frames.shape[0] < 2 or not np.isfinite(frames).all():
        raise AudioError(f"{path} holds too few frames to draw (or values that are not numbers)")
    return RunTrace(frames, np.zeros(0), np.zeros((0, MASK_BAND_EDGES_HZ.size - 1), dtype=np.float16))
