"""Whole pieces: follow a soloist through a long recording without false jumps.

Long recordings are assembled from whole movements rendered by
../shared/corpus/render_corpus.py (``benchmarks/specs_long_*.json``), with the hazards of
real long pieces added by a recipe (``benchmarks/long_pieces.json``): literal repeats
(an exposition played twice, a da capo), sequences (a passage again a few semitones
higher or lower), a minute-long tutti where the soloist waits (the accompaniment alone),
gaps between movements. The soloist's take is assembled the same way from the renders'
takes, so the truth is exact; takes are spans of that performance: continuous runs
through several movements, runs with restarts (a few bars back, after a pause) and skips
(to the next movement, over a passage), starts in the middle without ``--start``.

Each take runs in its own process (``player.filemode.run_file``, the player's file mode)
so that its peak memory is its own. Figures per take: % of solo onsets within 100 and
250 ms (the causal position at the onset, as the scorer), seconds lost (more than 1 s
off), *false jumps* (the path more than 3 s off for at least 0.5 s, starting more than
8 s after the take began or restarted: a place the player never went to), the re-lock
time after each restart or skip counted from the soloist's first note after it (seconds
until the error stays under 0.5 s for 1 s), where that time went (from the same note: the
first screening of the right place, and its adoption, from the relocator's history), the
run's CPU per second of take and its peak memory. A literal repeat (the exposition played
twice, a da capo) sounds the same in both places, and no follower can tell them apart
before the music parts: a position in either counts as right. ``--cost`` also runs the
first minute of the first take that begins with the recording's opening (``through``)
against the whole recording's bundle and against a bundle of the recording's first minute:
the ratio of the run loops' CPU says whether the cost per frame is flat in the piece's
length.

    python -m benchmarks.long_eval assemble --piece long_tune --cases /tmp/long/tune --out /tmp/long/pieces
    python -m benchmarks.long_eval run /tmp/long/pieces/long_tune [--take through] [--set relocator.margin_nats=30]
        [--no-search] [--cost]
    python -m benchmarks.long_eval noisy /tmp/long/pieces/long_tune --snr-db 37   # -> long_tune_noisy37

The recipe marks each piece ``tuning`` or ``checking``: tune on the first only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import soxr

from benchmarks.follow_eval import add_pink_noise, case_bundle, read_map, score_path
from benchmarks.jump_eval import relock_time, room_noise
from shared.alignment import causal_positions
from shared.audio import to_mono

RECIPE = Path(__file__).with_name("long_pieces.json")
SR = 44100  # the renders' X rate; takes at another rate are resampled to it
FADE_S = 0.02  # fades at every cut (no clicks)
RIGHT_S = 1.5  # a place the relocator screens or adopts this close to the truth is the right one
FALSE_JUMP_S = 3.0  # the path this far off ...
FALSE_JUMP_MIN_S = 0.5  # ... for this long is a false jump (or a loss) ...
SETTLE_S = 8.0  # ... unless it starts within this long after the take begins or restarts


# ---------------------------------------------------------------------------- assembly
@dataclass
class Movement:
    """A rendered case: X (stereo ``(n, 2)``), its accompaniment stem, the take U (mono,
    at :data:`SR`), the solo onsets ``(u, x)`` and the dense map ``(du, dx)`` (seconds)."""

    x: np.ndarray
    acc: np.ndarray
    u: np.ndarray
    onsets: np.ndarray
    dense: np.ndarray

    @classmethod
    def read(cls, folder: Path) -> Movement:
        x, sr_x = sf.read(folder / "X.flac", dtype="float32", always_2d=True)
        acc, _ = sf.read(folder / "acc_X.flac", dtype="float32", always_2d=True)
        u, sr_u = sf.read(folder / "U.flac", dtype="float32")
        if sr_x != SR:
            raise SystemExit(f"{folder}: X at {sr_x} Hz, the assembly needs {SR}")
        u = to_mono(u)
        if sr_u != SR:
            u = soxr.resample(u, sr_u, SR).astype(np.float32)
        onsets = np.loadtxt(folder / "gt.csv", delimiter=",", skiprows=1, ndmin=2)
        du, dx = read_map(folder / "gt_dense.csv")
        return cls(x, acc, u, onsets, np.column_stack([du, dx]))

    def u_at(self, x_s: float) -> float:
        """The take's time (s) where X is at ``x_s`` (by the dense map, extended at rate 1)."""
        du, dx = self.dense[:, 0], self.dense[:, 1]
        if x_s <= dx[0]:
            return float(du[0] - (dx[0] - x_s))
        if x_s >= dx[-1]:
            return float(du[-1] + (x_s - dx[-1]))
        return float(np.interp(x_s, dx, du))

    def cut(self, fraction: float) -> float:
        """X time (s) of a cut at ``fraction`` of the solo part: 30 ms before the solo
        onset nearest it (0 and 1: the file's start and end)."""
        if fraction <= 0.0:
            return 0.0
        if fraction >= 1.0:
            return self.x.shape[0] / SR
        gx = self.onsets[:, 1]
        target = gx[0] + fraction * (gx[-1] - gx[0])
        return float(max(0.0, gx[np.argmin(np.abs(gx - target))] - 0.03))

    def room(self, seconds: float) -> np.ndarray:
        """``seconds`` of the take's room noise (before its first note), for the soloist's
        waits."""
        return room_noise(self.u, SR, self.onsets[0, 0], seconds)


def faded(y: np.ndarray) -> np.ndarray:
    """``y`` (``(n,)`` or ``(n, c)``) with short fades in and out."""
    n = min(int(FADE_S * SR), y.shape[0] // 2)
    if n == 0:
        return y
    ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
    if y.ndim == 2:
        ramp = ramp[:, None]
    y = y.copy()
    y[:n] *= ramp
    y[-n:] *= ramp[::-1]
    return y


def shifted(y: np.ndarray, cents: float) -> np.ndarray:
    """``y`` (``(n,)`` or ``(n, c)``) ``cents`` higher, same length (librosa's phase vocoder)."""
    if not cents:
        return y
    out = librosa.effects.pitch_shift(np.ascontiguousarray(y.T), sr=SR, n_steps=cents / 100.0)
    return np.ascontiguousarray(out.T).astype(np.float32)


class Assembly:
    """The long recording and the soloist's performance of it, section by section."""

    def __init__(self) -> None:
        self.x: list[np.ndarray] = []
        self.u: list[np.ndarray] = []
        self.x_len = self.u_len = 0  # samples so far
        self.onsets: list[np.ndarray] = []
        self.dense: list[np.ndarray] = []
        self.sections: list[dict] = []

    def add(self, label: str, x: np.ndarray, u: np.ndarray, onsets: np.ndarray, dense: np.ndarray,
            source: dict | None = None) -> None:
        """Append a section: X audio, U audio, its onsets and dense map in section-local
        seconds ``(k, 2)`` (u, x); ``source``: where its X audio comes from (``case``,
        ``stem``, ``x0``: the case's X time of its first sample, ``cents``), None for
        silence. Sections with the same case, stem and cents play the same music where
        their spans of the case overlap (:func:`same_music`)."""
        ou, ox = self.u_len / SR, self.x_len / SR
        self.sections.append({"label": label, "u0": ou, "u1": ou + u.shape[0] / SR,
                              "x0": ox, "x1": ox + x.shape[0] / SR, "source": source})
        self.x.append(x)
        self.u.append(u)
        self.onsets.append(onsets + [ou, ox])
        self.dense.append(dense + [ou, ox])
        self.x_len += x.shape[0]
        self.u_len += u.shape[0]

    def span(self, case: str, m: Movement, label: str, f0: float, f1: float, cents: float = 0.0) -> None:
        """Movement ``m`` (the render ``case``) from fraction ``f0`` to ``f1`` of its solo
        part (``cents`` higher)."""
        x0, x1 = m.cut(f0), m.cut(f1)
        u0 = 0.0 if f0 <= 0 else m.u_at(x0)
        u1 = m.u.shape[0] / SR if f1 >= 1 else m.u_at(x1)
        xs = faded(m.x[int(x0 * SR): int(x1 * SR)])
        us = faded(m.u[int(u0 * SR): int(u1 * SR)])
        sel = (m.onsets[:, 1] >= x0) & (m.onsets[:, 1] < x1)
        dsel = (m.dense[:, 1] >= x0) & (m.dense[:, 1] < x1)
        self.add(label, shifted(xs, cents), shifted(us, cents), m.onsets[sel] - [u0, x0], m.dense[dsel] - [u0, x0],
                 {"case": case, "stem": "mix", "x0": x0, "cents": cents})

    def wait(self, label: str, x: np.ndarray, room: Movement, source: dict | None = None) -> None:
        """A section the soloist does not play in (``x``: what the recording plays; the
        take holds ``room``'s noise for as long): the truth runs at the recording's
        tempo."""
        n = x.shape[0]
        t = np.arange(0.0, n / SR, 0.01)
        self.add(label, faded(x), room.room(n / SR), np.zeros((0, 2)), np.column_stack([t, t]), source)

    def write(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        sf.write(out / "X.flac", np.concatenate(self.x), SR, subtype="PCM_16")
        sf.write(out / "performance.flac", np.concatenate(self.u), SR, subtype="PCM_16")
        np.savetxt(out / "onsets.csv", np.concatenate(self.onsets), delimiter=",", fmt="%.4f",
                   header="u_time_s,x_time_s", comments="")
        np.savetxt(out / "dense.csv", np.concatenate(self.dense), delimiter=",", fmt="%.4f",
                   header="u_time_s,x_time_s", comments="")
        (out / "sections.json").write_text(json.dumps(self.sections, indent=1))


def assemble(recipe: dict, cases: Path, out: Path, only: list[str] | None = None) -> None:
    """Build the piece of ``recipe`` from the renders in ``cases`` into ``out``: X.flac,
    performance.flac (the soloist's whole performance), onsets.csv and dense.csv (its
    truth), sections.json, and one folder per take (U.flac, gt.csv, gt_dense.csv,
    take.json); ``only``: just these takes (the piece is written again only without it)."""
    movements: dict[str, Movement] = {}

    def movement(name: str) -> Movement:
        if name not in movements:
            movements[name] = Movement.read(cases / name)
        return movements[name]

    asm = Assembly()
    room = None  # the take's room while the soloist waits: that of the movement before
    for sec in recipe["sections"]:
        kind = sec["kind"]
        if kind == "span":
            m = room = movement(sec["case"])
            asm.span(sec["case"], m, sec.get("label", sec["case"]), sec.get("from", 0.0), sec.get("to", 1.0),
                     sec.get("cents", 0.0))
        elif kind == "tutti":  # the accompaniment alone: the soloist waits
            m = movement(sec["case"])
            x0 = m.cut(sec.get("from", 0.0))
            x = m.acc[int(x0 * SR): int((x0 + sec["seconds"]) * SR)]
            asm.wait(sec.get("label", "tutti"), x, room or m, {"case": sec["case"], "stem": "acc", "x0": x0, "cents": 0.0})
        elif kind == "gap":  # between movements: the hall's silence
            asm.wait("gap", np.zeros((int(sec["seconds"] * SR), 2), dtype=np.float32), room or movement(sec["case"]))
        else:
            raise SystemExit(f"unknown section kind {kind!r}")
    if not only:
        asm.write(out)
    performance = np.concatenate(asm.u)
    onsets, dense = np.concatenate(asm.onsets), np.concatenate(asm.dense)
    first = next(iter(movements.values()))
    for take in recipe["takes"]:
        if only and take["name"] not in only:
            continue
        write_take(out / take["name"], take, asm.sections, performance, onsets, dense, first)
    print(f"{out}: X {asm.x_len / SR / 60:.1f} min, performance {asm.u_len / SR / 60:.1f} min, "
          f"{len(recipe['takes'])} takes")


def place(sections: list[dict], where: str) -> float:
    """Performance time (s) of ``"K:F"``: section K, fraction F of its U span."""
    k, f = where.split(":")
    sec = sections[int(k)]
    return sec["u0"] + float(f) * (sec["u1"] - sec["u0"])


def write_take(folder: Path, take: dict, sections: list[dict], performance: np.ndarray, onsets: np.ndarray,
               dense: np.ndarray, room: Movement) -> None:
    """A take: spans of the performance played one after the other, with ``pause_s`` of
    room noise between them. Writes U.flac, gt.csv, gt_dense.csv (the truth on the take's
    timeline) and take.json (where each span starts in the take, and ``start_s``: the
    X time given as ``--start``, or 0; ``intro``: the recording plays from there at once, as
    with ``--intro``, because the take starts with the soloist waiting)."""
    folder.mkdir(parents=True, exist_ok=True)
    pause = room.room(take.get("pause_s", 1.0))
    audio, gt, gt_dense, starts = [], [], [], []
    t = 0.0
    for i, (a, b) in enumerate(take["spans"]):
        a_s, b_s = place(sections, a), place(sections, b)
        if i:
            audio.append(pause)
            t += pause.size / SR
        starts.append(t)
        audio.append(faded(performance[int(a_s * SR): int(b_s * SR)]))
        for src, dst in ((onsets, gt), (dense, gt_dense)):
            sel = (src[:, 0] >= a_s) & (src[:, 0] < b_s)
            dst.append(src[sel] - [a_s - t, 0.0])
        t += audio[-1].shape[0] / SR
    sf.write(folder / "U.flac", np.concatenate(audio), SR, subtype="PCM_16")
    for name, rows in (("gt.csv", gt), ("gt_dense.csv", gt_dense)):
        np.savetxt(folder / name, np.concatenate(rows), delimiter=",", fmt="%.4f",
                   header="u_time_s,x_time_s", comments="")
    first = place(sections, take["spans"][0][0])
    start_s = float(np.interp(first, dense[:, 0], dense[:, 1])) if take.get("start_given", True) else 0.0
    info = {"spans": take["spans"], "span_starts_s": starts, "start_s": start_s,
            "start_given": take.get("start_given", True), "intro": take.get("intro", False), "duration_s": t}
    (folder / "take.json").write_text(json.dumps(info, indent=1))


# ---------------------------------------------------------------------------- scoring
def same_music(sections: list[dict]) -> list[tuple[float, float, float]]:
    """Where the recording plays the same music twice (a literal repeat, a da capo):
    ``(x0, x1, shift)`` says that X from ``x0`` to ``x1`` (seconds) sounds as X at ``+ shift``
    does. No follower can tell such places apart from the audio, and what is heard is the
    same: the scoring counts either as right (:func:`equivalent_path`)."""
    out = []
    for a in sections:
        for b in sections:
            sa, sb = a.get("source"), b.get("source")
            if a is b or not sa or not sb or any(sa[k] != sb[k] for k in ("case", "stem", "cents")):
                continue
            # the case's X time t plays at a["x0"] + t - sa["x0"] in a, and likewise in b
            lo = max(sa["x0"], sb["x0"])
            hi = min(sa["x0"] + a["x1"] - a["x0"], sb["x0"] + b["x1"] - b["x0"])
            if hi > lo:
                oa, ob = a["x0"] - sa["x0"], b["x0"] - sb["x0"]
                out.append((lo + oa, hi + oa, ob - oa))
    return out


def equivalent_path(path: np.ndarray, gt_dense: np.ndarray, sections: list[dict]) -> np.ndarray:
    """``path`` ``(n, 2)`` (u, x) with each position replaced by the place playing the same
    music (:func:`same_music`) that is nearest the truth at that moment."""
    out = path.copy()
    if not gt_dense.size:
        return out
    u, x = path[:, 0], path[:, 1]
    truth = np.interp(u, gt_dense[:, 0], gt_dense[:, 1])
    for x0, x1, shift in same_music(sections):
        inside = (x >= x0) & (x < x1)
        better = inside & (np.abs(x + shift - truth) < np.abs(out[:, 1] - truth))
        out[better, 1] = x[better] + shift
    return out


def segments_truth(gt_dense: np.ndarray, starts: list[float], duration: float):
    """Per span ``(t0, t1, du, dx)``: the truth is only interpolated inside a span."""
    bounds = [*starts, duration]
    out = []
    for t0, t1 in zip(bounds[:-1], bounds[1:], strict=True):
        sel = (gt_dense[:, 0] >= t0) & (gt_dense[:, 0] < t1)
        out.append((t0, t1, gt_dense[sel, 0], gt_dense[sel, 1]))
    return out


def false_jumps(path: np.ndarray, gt_dense: np.ndarray, starts: list[float]) -> list[tuple[float, float]]:
    """Episodes ``(u_s, seconds)`` where the path is more than :data:`FALSE_JUMP_S` off the
    truth for at least :data:`FALSE_JUMP_MIN_S`, starting later than :data:`SETTLE_S` after
    the take began or restarted."""
    du = gt_dense[:, 0]
    est = causal_positions(path, du)
    off = np.abs(est - gt_dense[:, 1]) > FALSE_JUMP_S
    step = float(np.median(np.diff(du)))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], off.astype(np.int8), [0]])))
    out = []
    for a, b in zip(edges[::2], edges[1::2], strict=True):
        t0 = du[a]
        since = t0 - max((s for s in starts if s <= t0 + 1e-9), default=0.0)
        if (b - a) * step >= FALSE_JUMP_MIN_S and since > SETTLE_S:
            out.append((float(t0), float((b - a) * step)))
    return out


def score_take(folder: Path, path_csv: Path) -> dict:
    """The take's figures (see the module docstring) from the path the run wrote; a place
    that plays the same music as the truth counts as right (:func:`equivalent_path`)."""
    info = json.loads((folder / "take.json").read_text())
    path = np.loadtxt(path_csv, delimiter=",", skiprows=1, ndmin=2)
    gt = np.loadtxt(folder / "gt.csv", delimiter=",", skiprows=1, ndmin=2)
    gt_dense = np.loadtxt(folder / "gt_dense.csv", delimiter=",", skiprows=1, ndmin=2)
    sections_json = folder.parent / "sections.json"
    sections = json.loads(sections_json.read_text()) if sections_json.exists() else None
    if sections is not None:
        path = equivalent_path(path, gt_dense, sections)
    figures = score_path(path, gt, gt_dense)  # the onsets' errors and the lost seconds, as follow_eval
    out = {k: figures[k] for k in ("<=100", "<=250", "lost_s")}
    out["false_jumps"] = false_jumps(path, gt_dense, info["span_starts_s"])
    relocks = []
    for t0, t1, du, dx, note in measured_jumps(gt, gt_dense, info):
        lost = relock_time(path, t0, lambda t, du=du, dx=dx: np.interp(t, du, dx), t1)
        relocks.append(max(0.0, lost - (note - t0)))
    out["relock_s"] = relocks
    events_json = relocations_path(path_csv)
    if events_json.exists():
        events = np.array(json.loads(events_json.read_text()), dtype=object).reshape(-1, 3)
        out["screened_s"], out["adopted_s"] = relock_steps(events, gt, gt_dense, info, sections)
    return out


def measured_jumps(gt: np.ndarray, gt_dense: np.ndarray, info: dict):
    """The spans of the take that begin with a jump (a restart, a skip, or the take's start
    without ``--start``): ``(t0, t1, du, dx, note)``, the span's truth and the soloist's
    first note in it (U seconds)."""
    measured = info["span_starts_s"][1:] if info["start_given"] else info["span_starts_s"]
    for t0, t1, du, dx in segments_truth(gt_dense, info["span_starts_s"], info["duration_s"]):
        if t0 not in measured or du.size < 2:
            continue
        first_note = gt[(gt[:, 0] >= t0) & (gt[:, 0] < t1), 0]
        yield t0, t1, du, dx, float(first_note[0]) if first_note.size else t0


def relocations_path(path_csv: Path) -> Path:
    """Where the run beside ``path_csv`` keeps the relocator's events."""
    return path_csv.with_name(path_csv.name.removesuffix(".csv") + ".relocations.json")


def relock_steps(events: np.ndarray, gt: np.ndarray, gt_dense: np.ndarray, info: dict,
                 sections: list[dict] | None) -> tuple[list[float], list[float]]:
    """Per measured jump (as ``relock_s``), the seconds from the soloist's first note after
    it to the relocator's first screening of the right place and to its first adoption of it
    (``inf``: never). ``events``: ``(n, 3)`` rows ``(u_s, x_s, kind)`` of the places screened
    (``"screen"``) and adopted (``"won"``, ``"home"``); a place within :data:`RIGHT_S` of the
    truth, or of the same music elsewhere (``sections``, the piece's ``sections.json``; None:
    no repeats), is the right one."""
    if events.size:
        ux = events[:, :2].astype(np.float64)
        if sections is not None:
            ux = equivalent_path(ux, gt_dense, sections)
        kinds = events[:, 2]
    else:
        ux, kinds = np.zeros((0, 2)), np.zeros(0, dtype=object)
    screened, adopted = [], []
    for t0, t1, du, dx, note in measured_jumps(gt, gt_dense, info):
        inside = (ux[:, 0] >= t0) & (ux[:, 0] < t1)
        right = inside & (np.abs(ux[:, 1] - np.interp(ux[:, 0], du, dx)) < RIGHT_S)
        for out, which in ((screened, kinds == "screen"), (adopted, (kinds == "won") | (kinds == "home"))):
            hits = ux[right & which, 0]
            out.append(max(0.0, float(hits.min()) - note) if hits.size else float("inf"))
    return screened, adopted


def run_one(take: Path, bundle: Path, overrides: list[str], no_search: bool, out_csv: Path) -> dict:
    """Run the player's file mode over ``take``/U.flac in a fresh process; its path goes to
    ``out_csv``. Returns the run's CPU seconds per second of take and its peak memory (MB)."""
    cmd = [sys.executable, "-m", "benchmarks.long_eval", "_one", str(take), str(bundle), str(out_csv)]
    cmd += [f"--set={o}" for o in overrides] + (["--no-search"] if no_search else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"{take}: the run failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _one(argv: list[str]) -> None:
    """The child of :func:`run_one`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("take", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("out_csv", type=Path)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-search", action="store_true")
    args = ap.parse_args(argv)
    from benchmarks.follow_eval import engine_config
    from player.config import EngineConfig
    from player.filemode import run_file
    from shared.bundle import load_bundle

    info = json.loads((args.take / "take.json").read_text()) if (args.take / "take.json").exists() else {}
    config = engine_config(args.overrides, search=not args.no_search)
    config = EngineConfig.from_overrides({"start_s": info.get("start_s", 0.0), "intro": info.get("intro", False)},
                                         base=config)
    events: list[tuple[float, float, str]] = []  # the relocator's screenings and adoptions
    last = None  # the last history entry kept

    def keep_events(engine) -> None:
        nonlocal last
        history = engine.relocator.history if engine.relocator is not None else ()
        if not history or history[-1] is last:  # most blocks: nothing new
            return
        # the history is a bounded deque: take the entries after the last one kept
        entries = list(history)
        new = entries
        for i in range(len(entries) - 1, -1, -1):
            if entries[i] is last:
                new = entries[i + 1:]
                break
        last = entries[-1]
        period = engine.bundle.params.coarse_period_s
        events.extend((u_s, to * period, kind) for u_s, _, to, _, kind in new if kind != "lost")

    with load_bundle(args.bundle, spectra=False) as bundle:
        res = run_file(bundle, args.take / "U.flac", alignment_path=args.out_csv, config=config, force=True,
                       on_block=keep_events)
    relocations_path(args.out_csv).write_text(json.dumps(events))
    # the bundle is parsed in a sandboxed child: the peak is the larger of the two
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    print(json.dumps({"rtf": res.rtf, "jumps": res.counters["jumps"], "peak_mb": peak / 1024}))


def make_noisy(piece: Path, snr_db: float, seed: int = 0) -> Path:
    """A copy of ``piece`` beside it whose recording has pink noise ``snr_db`` under its RMS
    (a recording with a noise floor: a noisy room, tape); the takes, sections and truth are
    the piece's own (linked). Returns the copy's folder."""
    out = piece.with_name(f"{piece.name}_noisy{snr_db:g}")
    out.mkdir(exist_ok=True)
    for item in piece.iterdir():
        if item.name != "X.flac" and not (out / item.name).exists():
            (out / item.name).symlink_to(item.resolve())
    x, sr = sf.read(piece / "X.flac", dtype="float32")
    sf.write(out / "X.flac", add_pink_noise(x, snr_db, seed), sr, subtype="PCM_24")
    return out


def first_minute(piece: Path, take: Path, work: Path) -> tuple[Path, Path]:
    """A 1-minute case beside the piece (its X's first minute, and the take's first
    minute) for the cost ratio."""
    case = work / f"{piece.name}_first_minute"
    (case / "take").mkdir(parents=True, exist_ok=True)
    if not (case / "X.flac").exists():
        x, sr = sf.read(piece / "X.flac", dtype="float32", frames=60 * SR)
        sf.write(case / "X.flac", x, sr, subtype="PCM_16")
    u, sr = sf.read(take / "U.flac", dtype="float32", frames=60 * SR)
    sf.write(case / "take" / "U.flac", u, sr, subtype="PCM_16")
    (case / "take" / "take.json").write_text(json.dumps({"start_s": 0.0}))
    return case, case / "take"


def plays_the_opening(take: Path, within_s: float = 5.0) -> bool:
    """Whether the take's first solo note is within ``within_s`` of the recording's start
    (its gt.csv), so that its first minute plays the recording's first minute."""
    gt = np.loadtxt(take / "gt.csv", delimiter=",", skiprows=1, ndmin=2)
    return gt.size > 0 and float(gt[0, 1]) <= within_s


def run(piece: Path, takes: list[str] | None, overrides: list[str], no_search: bool, cost: bool, work: Path) -> None:
    bundle = case_bundle(piece, work)
    rows = []
    for take in sorted(p for p in piece.iterdir() if (p / "take.json").exists()):
        if takes and take.name not in takes:
            continue
        out_csv = work / piece.name / f"{take.name}.path.csv"
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        res = run_one(take, bundle, overrides, no_search, out_csv)
        row = {"take": take.name, **score_take(take, out_csv), **res}
        if cost and not any("cost_ratio" in r for r in rows) and plays_the_opening(take):
            # the first take run that begins with the recording's opening: its first minute
            # on both bundles (a take elsewhere would be lost on the 1-minute bundle, and
            # a lost follower's relocator costs more than a following one)
            case, short = first_minute(piece, take, work)
            on_short = run_one(short, case_bundle(case, work), overrides, no_search, work / "first_minute.csv")
            on_long = run_one(short, bundle, overrides, no_search, work / "first_minute_long.csv")
            row["cost_ratio"] = on_long["rtf"] / max(on_short["rtf"], 1e-9)
            row["rtf_1min"] = on_short["rtf"]
        rows.append(row)
        print_row(row)
    if cost and not any("cost_ratio" in row for row in rows):
        print("(no take run begins with the recording's opening: no cost ratio; run one with --take)")
    relocks = [r for row in rows for r in row["relock_s"]]
    n_false = sum(len(row["false_jumps"]) for row in rows)
    print(f"{'mean':<14} <=100 {np.mean([r['<=100'] for r in rows]):5.1f}  <=250 {np.mean([r['<=250'] for r in rows]):5.1f}"
          f"  lost {sum(r['lost_s'] for r in rows):6.1f} s (total)  false jumps {n_false}"
          f"  relock mean {np.mean(relocks) if relocks else float('nan'):.2f} s (n={len(relocks)})"
          f"{steps_summary(rows)}  peak {max(r['peak_mb'] for r in rows):.0f} MB")


def steps_summary(rows: list[dict]) -> str:
    """The mean seconds to the right place's first screening and adoption over the jumps
    that reached them (and how many did not)."""
    parts = []
    for key, name in (("screened_s", "screened"), ("adopted_s", "adopted")):
        values = np.array([v for row in rows for v in row.get(key, [])])
        if values.size:
            finite = values[np.isfinite(values)]
            never = f" ({values.size - finite.size} never)" if finite.size < values.size else ""
            parts.append(f"{name} {np.mean(finite) if finite.size else float('nan'):.2f} s{never}")
    return f" (right place {', '.join(parts)})" if parts else ""


def print_row(row: dict) -> None:
    relocks = " ".join(f"{r:.1f}" for r in row["relock_s"])
    if row.get("relock_s"):
        relocks += "; right place screened " + " ".join(f"{r:.1f}" for r in row.get("screened_s", []))
        relocks += ", adopted " + " ".join(f"{r:.1f}" for r in row.get("adopted_s", []))
    jumps = " ".join(f"{t:.0f}s/{d:.1f}" for t, d in row["false_jumps"])
    cost = f"  cost x{row['cost_ratio']:.2f} (1 min rtf {row['rtf_1min']:.3f})" if "cost_ratio" in row else ""
    print(f"{row['take']:<14} <=100 {row['<=100']:5.1f}  <=250 {row['<=250']:5.1f}  lost {row['lost_s']:6.1f} s"
          f"  false jumps {len(row['false_jumps'])} [{jumps}]  relock [{relocks}]  jumps {row['jumps']}"
          f"  rtf {row['rtf']:.3f}  peak {row['peak_mb']:.0f} MB{cost}", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_one":
        _one(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("assemble", help="build a long piece and its takes from renders")
    a.add_argument("--piece", required=True, help="a piece of the recipe")
    a.add_argument("--cases", type=Path, required=True, help="folder of the renders (one sub-folder per case)")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--recipe", type=Path, default=RECIPE)
    a.add_argument("--take", nargs="*", default=None, help="write only these takes (the piece is already there)")
    n = sub.add_parser("noisy", help="a copy of an assembled piece whose recording has a noise floor")
    n.add_argument("piece", type=Path)
    n.add_argument("--snr-db", type=float, required=True, help="pink noise this far under the recording's RMS")
    n.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run", help="follow the takes of an assembled piece")
    r.add_argument("piece", type=Path)
    r.add_argument("--take", nargs="*", default=None)
    r.add_argument("--set", dest="overrides", action="append", default=[])
    r.add_argument("--no-search", action="store_true")
    r.add_argument("--cost", action="store_true", help="also the CPU ratio against a 1-minute bundle")
    r.add_argument("--work", type=Path, default=Path("/tmp/long_eval"))
    args = ap.parse_args()
    if args.command == "assemble":
        recipe = json.loads(args.recipe.read_text())[args.piece]
        assemble(recipe, args.cases, args.out / args.piece, args.take)
    elif args.command == "noisy":
        print(make_noisy(args.piece, args.snr_db, args.seed))
    else:
        run(args.piece, args.take, args.overrides, args.no_search, args.cost, args.work)


if __name__ == "__main__":
    main()
