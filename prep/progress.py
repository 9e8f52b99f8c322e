"""What ``prep build`` shows while it works: a bar per build stage, and for a batch one
result line per recording (stdout) with live bars when stderr is a terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from prep.batch import Job, JobResult
from prep.pipeline import STAGES
from shared.text import inert

err_console = Console(stderr=True)

STAGE_LABELS = {
    "load": "Loading audio",
    "analyse": "Spectral analysis",
    "templates": "Detuned templates",
    "nmf": "Learning NMF bases",
    "write": "Writing bundle",
}


class StageBars:
    """One rich progress bar per build stage."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(STAGE_LABELS.get(stage, stage), total=max(total, 1))
        self.progress.update(self.tasks[stage], completed=done, total=max(total, 1))


class BatchDisplay:
    """The whole batch's progress: one result line per recording as it finishes (stdout),
    plus, when stderr is a terminal, live bars (recordings done / total, and each running
    build's stage). Without a terminal (CI logs) there are only the plain lines."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.done = total, quiet, 0
        self.bars: Progress | None = None
        self.overall = None
        self.rows: dict[int, int] = {}

    def __enter__(self) -> BatchDisplay:
        if not self.quiet and err_console.is_terminal:
            columns = (TextColumn("{task.description:<34}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
            self.bars = Progress(*columns, console=err_console, transient=True,
                                 redirect_stdout=False, redirect_stderr=False)
            self.bars.start()
            self.overall = self.bars.add_task(f"{self.total} recordings", total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self.bars is not None:
            self.bars.stop()

    def _emit(self, line: str) -> None:
        if self.bars is not None and sys.stdout.isatty():
            self.bars.console.print(line, markup=False, highlight=False, soft_wrap=True)  # above the bars
        else:
            print(line, flush=True)

    def started(self, job: Job) -> None:
        if self.bars is not None:
            if job.index in self.rows:  # a retry after a worker died
                self.bars.remove_task(self.rows.pop(job.index))
            self.rows[job.index] = self.bars.add_task(f"  {_label(job.source.name, 32)}", total=1.0)

    def progress(self, job: Job, stage: str, done: int, total: int) -> None:
        if self.bars is not None and job.index in self.rows:
            position = STAGES.index(stage) if stage in STAGES else 0
            fraction = (position + min(done, total) / max(total, 1)) / len(STAGES)
            label = STAGE_LABELS.get(stage, stage)
            self.bars.update(self.rows[job.index], completed=fraction,
                             description=f"  {_label(job.source.name, 32 - len(label) - 4)}: {label}")

    def finished(self, result: JobResult) -> None:
        self.done += 1
        if self.bars is not None:
            if result.job.index in self.rows:
                self.bars.remove_task(self.rows.pop(result.job.index))
            self.bars.update(self.overall, completed=self.done)
        if not self.quiet:
            self._emit(f"[{self.done}/{self.total}] {batch_line(result)}")


def _label(name: str, width: int) -> str:
    """A file name for a progress bar's description (rich markup): inert, escaped, short."""
    name = inert(name)
    return escape(name if len(name) <= width else name[: width - 3] + "...")


def normalised_note(gain_db: float) -> str:
    """What a build did to a recording that peaked above full scale (``gain_db`` < 0)."""
    return f"peaks {-gain_db:.1f} dB above full scale: normalised by {gain_db:.1f} dB"


def batch_line(result: JobResult) -> str:
    """One line about one recording of a batch: its figures, or why it failed."""
    job = result.job
    if result.ok:
        return (f"{inert(job.source)} -> {inert(job.output)}: {result.duration_s:.1f} s of audio, "
                f"built in {result.seconds:.1f} s, {result.bundle_bytes / 1e6:.1f} MB"
                + (f", {normalised_note(result.gain_db)}" if result.gain_db < 0 else ""))
    return f"{inert(job.source)} FAILED: {inert(result.message)}"
