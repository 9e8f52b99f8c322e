"""``player run BUNDLE --record DIR``: keep a rehearsal.

What the microphone heard (``take``), what was played (``played``), the path
(``path.csv``, as file mode writes it), the follower's frame trace (``trace.csv``) and a
timing report (``timing.json``) are written into DIR by a thread of this module's own: the
engine's worker only queues copies, and the audio callback never sees any of it.

While recording, the audio goes to WAV files whose header is brought up to date every half
second, so a rehearsal that is killed (even with ``kill -9``) leaves readable files up to
that moment; a clean stop (Ctrl-C, the end of the input) turns ``played`` into
``played.flac``, and ``take`` into ``take.flac`` when FLAC holds it exactly (a sound card's
samples, at most 24 bits); a take of floating-point samples (an audio server's, JACK's)
stays ``take.wav``, 32-bit float. Either replays exactly (``player run BUNDLE --input
DIR/take.flac``: the same engine on the same blocks; :func:`recorded_take` finds it). A
full disk or any other write error stops the recording with one warning, never the
rehearsal.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from player.follower import FollowerState
from player.trace import FRAME_COLUMNS
from shared.errors import OutputError, first_line

#: The files of a recorded rehearsal (WAV while recording, FLAC once stopped cleanly).
AUDIO_STEMS = ("take", "played")
TEXT_FILES = ("path.csv", "trace.csv", "timing.json")
#: How often (seconds) the files are flushed so that a killed run leaves them readable.
FLUSH_S = 0.5
#: The most audio the writer may fall behind by before blocks are dropped (seconds).
MAX_BACKLOG_S = 30.0


def check_record_folder(folder: Path, force: bool) -> Path:
    """Refuse (before anything starts) a DIR that holds files, unless ``force``; refuse a
    file in its place or a parent that does not exist."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder} exists and is not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not force:
        raise OutputError(f"{folder} already holds files; use --force to record into it")
    if not folder.parent.is_dir():
        raise OutputError(f"the folder {folder.parent} does not exist")
    return folder


class RehearsalRecorder:
    """Writes a rehearsal into ``folder`` from a thread of its own.

    Args:
        folder: the DIR of ``--record`` (created; checked by :func:`check_record_folder`).
        sr: the stream's rate (Hz).
        in_channels, out_channels: channels of the take and of what was played.
        force: replace files left there by an earlier recording.

    Attributes:
        warning: one line when the recording stopped (disk full...), for the user; or None.
    """

    def __init__(self, folder: Path, sr: int, in_channels: int, out_channels: int, force: bool = False) -> None:
        self.folder = check_record_folder(folder, force)
        self.sr = int(sr)
        self.warning: str | None = None
        self.dropped_blocks = 0
        block_guess = max(1, self.sr // 50)
        self._queue: queue.Queue = queue.Queue(maxsize=int(MAX_BACKLOG_S * self.sr / block_guess) * 2)
        try:
            self.folder.mkdir(exist_ok=True)
            for name in (*[f"{s}.{ext}" for s in AUDIO_STEMS for ext in ("flac", "wav")], *TEXT_FILES):
                (self.folder / name).unlink(missing_ok=True)
            self._audio = {
                "take": sf.SoundFile(self.folder / "take.wav", "w", samplerate=self.sr, channels=in_channels,
                                     subtype="FLOAT", format="WAV"),
                "played": sf.SoundFile(self.folder / "played.wav", "w", samplerate=self.sr, channels=out_channels,
                                       subtype="PCM_24", format="WAV"),
            }
            self._path = open(self.folder / "path.csv", "w")  # noqa: SIM115 - closed by the writer thread
            self._trace = open(self.folder / "trace.csv", "w")  # noqa: SIM115
        except OSError as exc:
            raise OutputError(f"cannot record into {self.folder} ({exc.strerror or first_line(exc)})") from None
        self._path.write("u_time_s,x_time_s\n")
        self._trace.write(",".join(FRAME_COLUMNS) + "\n")
        self._failed = False
        self._take_fits_flac = True  # every sample a multiple of 2**-23 in [-1, 1)
        self._thread = threading.Thread(target=self._write_loop, name="recorder", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ from the engine's worker
    def block(self, take: np.ndarray, played: np.ndarray) -> None:
        """Queue one engine block: what came in and what went out (copied: the caller's
        buffers are reused). Never blocks: past ``MAX_BACKLOG_S`` of backlog, it drops."""
        self._put(("audio", take.copy(), played.copy()))

    def frame(self, u_time_s: float, st: FollowerState) -> None:
        """Queue one analysis frame of the path (the engine's ``on_frame``)."""
        self._put(("frame", (u_time_s, st.x_s, st.tempo, st.confidence, st.detune_cents, float(st.active))))

    def _put(self, item) -> None:
        if self._failed:
            return
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped_blocks += 1
            if self.warning is None:
                self.warning = "the recording fell behind (a slow disk?); some audio was not written"

    # ------------------------------------------------------------------ the writer thread
    def _write_loop(self) -> None:
        last_flush = time.monotonic()
        while True:
            item = self._queue.get()
            if item is None:
                break
            if self._failed:
                continue
            try:
                self._write(item)
                if time.monotonic() - last_flush >= FLUSH_S:
                    self._flush()
                    last_flush = time.monotonic()
            except (OSError, RuntimeError, sf.LibsndfileError) as exc:  # a full disk, a removed folder
                self._failed = True
                self.warning = f"recording stopped: cannot write into {self.folder} ({first_line(exc)})"

    def _write(self, item) -> None:
        kind = item[0]
        if kind == "audio":
            if self._take_fits_flac:
                scaled = item[1] * np.float32(2.0**23)
                self._take_fits_flac = bool(np.all(scaled == np.round(scaled)) and np.all(np.abs(item[1]) < 1.0))
            self._audio["take"].write(item[1])
            self._audio["played"].write(item[2])
        else:
            row = item[1]
            self._path.write(f"{row[0]:.6f},{row[1]:.6f}\n")
            self._trace.write(",".join(f"{v:.6f}" for v in row) + "\n")

    def _flush(self) -> None:
        for f in self._audio.values():
            f.flush()
        self._path.flush()
        self._trace.flush()

    # ------------------------------------------------------------------ end
    def close(self, timing: dict | None = None) -> None:
        """Write what is queued, close the files, turn the audio into FLAC and write the
        timing report; errors become :attr:`warning`."""
        self._queue.put(None)
        self._thread.join(timeout=60.0)
        for f in (*self._audio.values(), self._path, self._trace):
            try:
                f.close()
            except (OSError, RuntimeError, sf.LibsndfileError) as exc:
                self._failed = True
                self.warning = self.warning or f"recording stopped: cannot write into {self.folder} ({first_line(exc)})"
        if self._failed:
            return
        try:
            to_flac(self.folder / "played.wav", self.folder / "played.flac")
            if self._take_fits_flac:
                to_flac(self.folder / "take.wav", self.folder / "take.flac")
            report = {**(timing or {}), "dropped_recorder_blocks": self.dropped_blocks}
            (self.folder / "timing.json").write_text(json.dumps(report, indent=2))
        except (OSError, RuntimeError, sf.LibsndfileError) as exc:
            self.warning = f"the recording is kept as WAV: cannot finish it in {self.folder} ({first_line(exc)})"


def to_flac(wav: Path, flac: Path, block: int = 1 << 16) -> None:
    """Transcode ``wav`` into ``flac`` (24 bit), then remove ``wav``; a failure leaves the
    WAV file whole."""
    info = sf.info(str(wav))
    tmp = flac.with_name(f".{flac.name}.part")
    try:
        with sf.SoundFile(tmp, "w", samplerate=info.samplerate, channels=info.channels, subtype="PCM_24",
                          format="FLAC") as out:
            for chunk in sf.blocks(str(wav), blocksize=block, dtype="float32", always_2d=True):
                out.write(np.clip(chunk, -1.0, 1.0 - 2.0**-23))
        tmp.replace(flac)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    wav.unlink()


def recorded_take(folder: Path) -> Path:
    """The take of a recorded rehearsal: ``take.flac``, or ``take.wav`` if the run was
    killed before it could finish."""
    for name in ("take.flac", "take.wav"):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    raise OutputError(f"{folder} holds no recorded take (take.flac or take.wav)")
