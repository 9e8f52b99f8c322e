"""File-driven runs: U is read from a file and fed to the engine block by block, as fast as
the CPU allows, exactly as the live audio thread would feed it (same block size, same
engine). Outputs are streamed to temporary files and renamed into place only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from player.config import EngineConfig
from player.engine import Engine
from player.trace import HEARD_COLUMNS, RunTrace, TraceRecorder
from shared.audio import scan_audio
from shared.bundle import Bundle
from shared.errors import AudioError
from shared.fileio import atomic_output, check_output_path


@dataclass
class RunResult:
    """Figures of a file-driven run.

    Attributes:
        u_duration_s: length of U (seconds).
        cpu_s: process CPU seconds spent in the run loop.
        frames: analysis frames processed.
        stage_s: per-stage seconds (analysis, follower, search, separation, vocoder, io).
        counters: blocks, NaN blocks, jumps.
    """

    u_duration_s: float
    cpu_s: float
    wall_s: float
    frames: int
    stage_s: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    trace: RunTrace | None = None

    @property
    def rtf(self) -> float:
        """Real-time factor: CPU seconds per second of U."""
        return self.cpu_s / max(self.u_duration_s, 1e-9)

    def to_json(self) -> dict:
        return {
            "u_duration_s": round(self.u_duration_s, 3),
            "cpu_s": round(self.cpu_s, 4),
            "wall_s": round(self.wall_s, 4),
            "rtf": round(self.rtf, 5),
            "frames": self.frames,
            "per_frame_ms": {k: round(1000 * v / max(self.frames, 1), 5) for k, v in self.stage_s.items()},
            "stage_s": {k: round(v, 4) for k, v in self.stage_s.items()},
            **self.counters,
        }


#: Blocks read from the input file (and written to the output file) per call: one call per
#: block cost as much as a stage of the engine (soundfile's per-call overhead).
READ_CHUNK_BLOCKS = 32


def read_blocks(path: Path, block: int) -> Iterator[np.ndarray]:
    """The float32 ``(n, channels)`` blocks of ``block`` samples of an audio file, the last
    one shorter (as ``soundfile.blocks``), read ``READ_CHUNK_BLOCKS`` blocks at a time."""
    with sf.SoundFile(str(path)) as f:
        while True:
            chunk = f.read(block * READ_CHUNK_BLOCKS, dtype="float32", always_2d=True)
            for start in range(0, chunk.shape[0], block):
                yield chunk[start:start + block]
            if chunk.shape[0] < block * READ_CHUNK_BLOCKS:
                return


def write_blocks(out_file: sf.SoundFile, blocks: list[np.ndarray]) -> None:
    """Write ``blocks`` in one call, then empty the list."""
    if blocks:
        out_file.write(np.concatenate(blocks))
        blocks.clear()


def timing_path_of(alignment_path: str | Path) -> Path:
    """Where a run's timing report goes: ``<alignment>.timing.json``."""
    return Path(str(alignment_path) + ".timing.json")


def default_blocksize(sr: int, params) -> int:
    """Samples of U per engine block at rate ``sr``: one fine hop (about 20 ms)."""
    return max(16, int(round(params.fine_period_s * sr)))


def run_file(
    bundle: Bundle,
    input_path: str | Path,
    *,
    output_path: str | Path | None = None,
    alignment_path: str | Path | None = None,
    heard_path: str | Path | None = None,
    config: EngineConfig | None = None,
    blocksize: int | None = None,
    force: bool = False,
    on_block: Callable[[Engine], None] | None = None,
    record: bool = False,
    latency_s: float = 0.0,
    output_sr: int | None = None,
) -> RunResult:
    """Run the engine over a file of U; write ``output_path`` (X's rate and channels) and
    ``alignment_path`` (``u_time_s,x_time_s``, one row per analysis frame) and ``heard_path``
    (:data:`player.trace.HEARD_COLUMNS`, one row per output block: what is heard, exactly)
    atomically.
    ``output_sr``: the rate of ``out.wav`` (X's own by default; a device's, to play as
    through it). With ``latency_s``, the run plays as through a device of that latency: the engine
    schedules X that far ahead and ``out.wav`` is that much later (what a listener hears
    on the take's timeline); a live run with that latency plays the same, block for block.
    A timing report goes beside the alignment as ``<alignment>.timing.json``. The result
    carries the run's :class:`player.trace.RunTrace`; with ``record`` it holds the
    solo-removal gain of every block too (for ``--report``).
    """
    input_path = Path(input_path)
    timing_path = timing_path_of(alignment_path) if alignment_path is not None else None
    for path in (output_path, alignment_path, timing_path, heard_path):
        if path is not None:
            check_output_path(path, force)  # before the run, not after minutes of work
    info = scan_audio(input_path, what="input")  # readable, finite, not silent
    block = blocksize or default_blocksize(info.sr, bundle.params)
    if info.n_samples < block:
        raise AudioError(f"input {input_path.name} is shorter than one block ({info.n_samples} < {block} samples)")
    recorder = TraceRecorder(masks=record)
    config = dataclasses.replace(config or EngineConfig(), output_latency_s=float(latency_s))
    engine = Engine(bundle, info.sr, config, on_frame=recorder.frame, output_sr=output_sr)
    out_sr = engine.output_sr
    io_s = 0.0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with ExitStack() as stack:
        out_file = None
        if output_path is not None:
            tmp = stack.enter_context(atomic_output(output_path, force))
            out_file = stack.enter_context(sf.SoundFile(tmp, "w", samplerate=out_sr,
                                                        channels=bundle.audio.channels, subtype="PCM_16",
                                                        format="WAV"))
        # The block answering input block k is heard from the end of block k (plus the
        # latency): it is written one block (and the latency) later, so out.wav is what the
        # speakers would play on U's timeline.
        out_total = int(round(info.n_samples * out_sr / info.sr))
        written = 0
        pending: list[np.ndarray] = []  # clipped output blocks not yet written (written a chunk at a time)
        for u_block in read_blocks(input_path, block):
            out = engine.process(u_block)
            if on_block is not None:
                on_block(engine)
            recorder.block(engine)
            if out_file is not None:
                t = time.perf_counter()
                if written == 0:
                    delay = out.shape[0] + int(round(latency_s * out_sr))
                    lead = np.zeros((delay, out.shape[1]), dtype=np.float32)
                    out_file.write(lead)
                    written += lead.shape[0]
                out = out[: max(0, out_total - written)]
                pending.append(np.clip(out, -1.0, 1.0))  # a new array: the engine may reuse its own
                written += out.shape[0]
                if len(pending) >= READ_CHUNK_BLOCKS:
                    write_blocks(out_file, pending)
                io_s += time.perf_counter() - t
        if out_file is not None:
            write_blocks(out_file, pending)
            out_file.close()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        result = RunResult(u_duration_s=info.n_samples / info.sr, cpu_s=cpu, wall_s=wall,
                           frames=engine.stats.frames, stage_s={**engine.stats.seconds, "io": io_s},
                           counters={"blocks": engine.stats.blocks, "nan_blocks": engine.stats.nan_blocks,
                                     "jumps": engine.stats.jumps, "agains": engine.stats.agains},
                           trace=recorder.result())
        if alignment_path is not None:
            with atomic_output(alignment_path, force) as tmp:
                with open(tmp, "w") as fh:
                    fh.write("u_time_s,x_time_s\n")
                    fh.writelines(f"{u:.6f},{x:.6f}\n" for u, x in result.trace.path)
            with atomic_output(timing_path, force) as tmp:
                Path(tmp).write_text(json.dumps(result.to_json(), indent=2))
        if heard_path is not None:
            with atomic_output(heard_path, force) as tmp:
                with open(tmp, "w") as fh:
                    fh.write(",".join(HEARD_COLUMNS) + "\n")
                    fh.writelines(f"{u:.6f},{x:.6f},{r:.6f},{int(k)}\n" for u, x, r, k in result.trace.heard)
    return result
