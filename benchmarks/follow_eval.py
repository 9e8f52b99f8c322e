"""Accuracy of the follower on evaluation cases (for tuning; the official figures come from
../shared/eval/run_all.py).

A case folder holds X.flac, U.flac and gt.csv (u_time_s,x_time_s at solo onsets), as in
../shared/corpus. Bundles are built once into --work and reused. Alignment is scored the
same way as the official scorer: the causal estimate at an onset is the x of the last path
row with u_time_s <= onset.

    .venv/bin/python -m benchmarks.follow_eval CASES_DIR [CASES_DIR ...] [--set kappa=6 ...]

``--noise-snr DB`` adds pink noise DB below each take's RMS (a noisy room; the same noise
for the same take and DB on every run). ``--retune CENTS`` plays each take CENTS higher
(resampled, so it is also that much faster; the ground truth follows): on top of the take's
own tuning, or, with ``--specs`` (the render specs, whose ``perturb.detune_cents`` is each
take's tuning against X), so that the take ends up CENTS away from X. ``--tempo-scale R``
plays each take R times as fast (Rubber Band's R3 engine, ``rubberband-cli``: the pitch
kept; 0.7 is a player practising at 70 % of the take's tempo; the ground truth follows);
tell the player with ``--set tempo=R``. ``--group REGEX``
also prints the mean of each group of cases whose names share REGEX's first match (e.g.
``'slow|voice|chorale'`` for the conditions of ``specs_conditions_*.json``).
``--variants`` plays each take four times (:data:`VARIANTS`: as it is, with pink noise 25 dB
under it, retuned 15 cents up and 20 cents down) and prints each form's mean and the mean of
all: where a setting moves few false jumps, the four forms tell its effect from chance.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from player.config import EngineConfig
from player.filemode import run_file
from prep.pipeline import BuildOptions, build_bundle
from shared.alignment import causal_positions, heard_times, rate_wobble
from shared.audio import to_mono
from shared.bundle import load_bundle
from shared.config import replace_fields
from shared.errors import BundleError
from shared.spectral import AnalysisParams

#: The forms ``--variants`` plays each take in: (label, cents it is retuned by, SNR in dB of
#: added pink noise). On takes that jump, one false jump more or less moves a set's figures
#: by points; four forms of each take, pooled, tell a setting's effect from that chance.
VARIANTS = (("as_is", None, None), ("noise25", None, 25.0), ("up15", 15.0, None), ("down20", -20.0, None))


def read_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return data[:, 0], data[:, 1]


def score(path_csv: Path, gt_csv: Path) -> dict:
    """:func:`score_path` of the path a run wrote against ``gt_csv`` (and the
    ``gt_dense.csv`` beside it, if any)."""
    path = np.loadtxt(path_csv, delimiter=",", skiprows=1, ndmin=2)
    dense = gt_csv.with_name("gt_dense.csv")
    return score_path(path, np.loadtxt(gt_csv, delimiter=",", skiprows=1, ndmin=2),
                      np.loadtxt(dense, delimiter=",", skiprows=1, ndmin=2) if dense.exists() else None)


def score_path(path: np.ndarray, gt: np.ndarray, gt_dense: np.ndarray | None = None) -> dict:
    """The causal position's error at the solo onsets ``gt`` ``(k, 2)`` (u, x; seconds) of
    the alignment ``path`` ``(n, 2)``: % within 50-1000 ms, median and mean signed error
    (ms); with the dense truth ``gt_dense`` ``(m, 2)``, the seconds more than 1 s off."""
    gu, gx = gt[:, 0], gt[:, 1]
    est = causal_positions(path, gu)
    err = np.abs(est - gx) * 1000
    out = {f"<={t}": float(100 * np.mean(err <= t)) for t in (50, 100, 250, 500, 1000)}
    out["median_ms"] = float(np.median(err))
    out["signed_ms"] = float(np.mean((est - gx) * 1000))
    if gt_dense is not None:
        du, dx = gt_dense[:, 0], gt_dense[:, 1]
        dest = causal_positions(path, du)
        out["lost_s"] = float(np.sum(np.abs(dest - dx) > 1.0) * np.median(np.diff(du)))
    return out


def note_onsets(notes_csv: Path, role: str = "acc") -> tuple[np.ndarray, np.ndarray]:
    """The distinct onsets of one role (``"acc"`` or ``"solo"``) in a case's ``notes.csv``: X
    times and the U times where they belong, float64 ``(m,)`` each, in X order."""
    x_on, u_on = [], []
    with open(notes_csv) as fh:
        header = fh.readline().strip().split(",")
        column, xi, ui = header.index("role"), header.index("x_on_s"), header.index("u_on_s")
        for line in fh:
            cells = line.strip().split(",")
            if len(cells) == len(header) and cells[column] == role:
                x_on.append(float(cells[xi]))
                u_on.append(float(cells[ui]))
    x, u = np.asarray(x_on), np.asarray(u_on)
    keep = np.unique(np.round(x, 3), return_index=True)[1]  # a chord is one onset
    return x[keep], u[keep]


def onsets_inside(notes_csv: Path, u_duration_s: float) -> tuple[np.ndarray, np.ndarray]:
    """The accompaniment's onsets (:func:`note_onsets`) that belong inside a take of
    ``u_duration_s`` seconds."""
    x_on, u_on = note_onsets(notes_csv, "acc")
    inside = (u_on >= 0) & (u_on <= u_duration_s)
    return x_on[inside], u_on[inside]


def heard_errors(rows: np.ndarray, x_on: np.ndarray, u_on: np.ndarray) -> np.ndarray:
    """When each X time ``x_on`` is heard against when it belongs (``u_on``): the error (ms,
    negative = early; NaN: never played), ``(m,)``. ``rows``: ``(n, 2)`` (u_s, x_s) per
    output block (a run's :attr:`RunTrace.heard`, or any schedule: see
    :func:`shared.alignment.heard_times`)."""
    return (heard_times(rows, x_on) - u_on) * 1000.0


def percent_within(err_ms: np.ndarray, limits: tuple[int, ...], prefix: str) -> dict:
    """``{prefix + str(t)}``: % of ``err_ms`` within ``t`` ms for each of ``limits`` (NaN,
    never played, counts as a miss)."""
    hit = np.isfinite(err_ms)
    return {f"{prefix}{t}": float(100 * np.mean(hit & (np.abs(np.where(hit, err_ms, 0)) <= t))) for t in limits}


def signed_median_ms(err_ms: np.ndarray) -> float:
    """The median of ``err_ms`` over the onsets played (NaN if none was)."""
    hit = np.isfinite(err_ms)
    return float(np.median(err_ms[hit])) if hit.any() else float("nan")


def heard_figures(heard: np.ndarray, path: np.ndarray, notes_csv: Path, u_duration_s: float,
                  scheduled: np.ndarray | None = None) -> dict:
    """What the listener hears, exactly (not by DTW, as the scorer must): for each of the
    accompaniment's onsets inside the take, when the output plays it against when it belongs
    (``heard``: the run's :attr:`RunTrace.heard`; ``h30``, ``h50``, ``h100``: % within 30,
    50, 100 ms; ``h_signed_ms``: median, negative = early); never played counts as a miss.
    ``p50``, ``p100``: the same for an output that played exactly along the follower's
    path (``path`` ``(n, 2)``): what the belief allows, the rate controller aside."""
    out = {}
    x_on, u_on = onsets_inside(notes_csv, u_duration_s)
    series = [("h", heard, (30, 50, 100)), ("p", path, (50, 100))]
    if scheduled is not None:
        series.append(("a", scheduled, (50, 100)))
    for prefix, rows, limits in series:
        err = heard_errors(rows, x_on, u_on)
        out.update(percent_within(err, limits, prefix))
        if prefix == "h":
            out["h_signed_ms"] = signed_median_ms(err)
    wobble = rate_wobble(heard)
    out.update(wobble_max=wobble["max_change_pct"], jitter=wobble["jitter_pct"], seeks_min=wobble["seeks_per_min"])
    return out


def add_pink_noise(u: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """``u`` (samples ``(n,)`` or ``(n, channels)``) plus pink noise ``snr_db`` below its RMS."""
    rng = np.random.default_rng(seed)
    n = u.shape[0]
    spectrum = np.fft.rfft(rng.standard_normal(n))
    pink = np.fft.irfft(spectrum / np.sqrt(np.arange(spectrum.size) + 1.0), n=n)
    pink *= np.sqrt(np.mean(u.astype(np.float64) ** 2)) * 10 ** (-snr_db / 20) / np.sqrt(np.mean(pink ** 2))
    noisy = u + (pink[:, None] if u.ndim == 2 else pink)
    return np.clip(noisy, -1.0, 1.0).astype(np.float32)


def case_bundle(case: Path, work: Path, params: dict | None = None) -> Path:
    """The bundle of ``case``'s X.flac in ``work`` (built the first time, and again when
    this version cannot load it; ``params`` are analysis overrides, which get a folder of
    their own)."""
    tag = "_".join(f"{k}{v}" for k, v in sorted((params or {}).items()))
    folder = work / (case.name + (f"__{tag}" if tag else ""))
    folder.mkdir(parents=True, exist_ok=True)
    bundle = folder / "X.h5"
    if bundle.exists():
        try:
            load_bundle(bundle).close()
            return bundle
        except BundleError:  # an older format: rebuild
            pass
    build_bundle(case / "X.flac", bundle, BuildOptions(params=AnalysisParams(**(params or {}))), force=True)
    return bundle


def read_take(case: Path) -> tuple[np.ndarray, int]:
    """``case``'s U.flac, mono float32, and its sample rate (Hz)."""
    u, sr = sf.read(case / "U.flac", dtype="float32")
    return to_mono(u), sr


def engine_config(overrides: list[str], search: bool = True) -> EngineConfig:
    """The engine's settings with ``--set`` overrides (see
    :meth:`player.config.EngineConfig.from_overrides`; ``params.*`` items are the bundle's
    analysis parameters, see :func:`analysis_overrides`, and are left out here)."""
    return EngineConfig.from_overrides([o for o in overrides if not o.startswith("params.")],
                                       base=EngineConfig(global_search=search))


def analysis_overrides(overrides: list[str]) -> dict:
    """The ``params.FIELD=VALUE`` items of ``--set`` as a dict (validated against
    :class:`shared.spectral.AnalysisParams`)."""
    values = dict(o.removeprefix("params.").split("=", 1) for o in overrides if o.startswith("params."))
    fields = replace_fields(AnalysisParams(), values)
    return {k: getattr(fields, k) for k in values}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="+", type=Path)
    ap.add_argument("--work", type=Path, default=Path("/tmp/follow_eval"))
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="STAGE.FIELD=VALUE (follower.kappa=4, relocator.margin_nats=30, ...) or params.FIELD=VALUE")
    ap.add_argument("--no-search", action="store_true")
    ap.add_argument("--output", action="store_true", help="also render out.wav")
    ap.add_argument("--noise-snr", type=float, default=None,
                    help="add pink noise this many dB below each take's RMS")
    ap.add_argument("--retune", type=float, default=None, help="play each take this many cents higher")
    ap.add_argument("--tempo-scale", type=float, default=None,
                    help="play each take this many times as fast (Rubber Band R3; the pitch kept)")
    ap.add_argument("--specs", type=Path, default=None,
                    help="with --retune: render specs giving each take's own tuning against X")
    ap.add_argument("--variants", action="store_true",
                    help="play each take as is and perturbed (VARIANTS: noise, retuned up and down): four runs")
    ap.add_argument("--group", default=None, help="also the mean of each group of cases sharing this regex's match")
    args = ap.parse_args()
    if args.variants and (args.retune is not None or args.noise_snr is not None):
        raise SystemExit("--variants plays its own noise and tunings: leave out --retune and --noise-snr")
    if args.tempo_scale is not None and (args.retune is not None or args.variants):
        # (the stretched take is made from the case's own take: a retuning would be lost)
        raise SystemExit("--tempo-scale plays the take as it is, only slower or faster: not with --retune or --variants")
    if args.tempo_scale is not None and not 0.25 <= args.tempo_scale <= 4.0:
        raise SystemExit("--tempo-scale must be within 0.25..4")
    if args.tempo_scale is not None and shutil.which("rubberband") is None:
        raise SystemExit("--tempo-scale needs Rubber Band: install it with 'apt install rubberband-cli'")
    own_cents = {}
    if args.specs is not None:
        own_cents = {c["name"]: float(c.get("perturb", {}).get("detune_cents", 0.0))
                     for c in json.loads(args.specs.read_text())}
    po = analysis_overrides(args.overrides)
    config = engine_config(args.overrides, search=not args.no_search)
    rows = []
    cases = (c for s in args.sets for c in ([s] if (s / "gt.csv").exists() else s.iterdir()))
    # each variant: (label, cents to retune by, pink noise SNR in dB); one without --variants
    variants = VARIANTS if args.variants else [("", args.retune, args.noise_snr)]
    for case in sorted(c for c in cases if (c / "gt.csv").exists()):
        bundle = case_bundle(case, args.work, po)
        for label, cents, snr in variants:
            wd = bundle.parent / label if label else bundle.parent
            wd.mkdir(exist_ok=True)
            take, gt, notes = case / "U.flac", case / "gt.csv", case / "notes.csv"
            if cents is not None:
                own = 0.0 if args.variants else own_cents.get(case.name, 0.0)
                take, gt, notes = retuned_take(case, wd / f"retune{cents:g}", cents - own)
            if args.tempo_scale is not None:
                take, gt, notes = tempo_scaled_take(case, wd / f"tempo{args.tempo_scale:g}", args.tempo_scale)
            if snr is not None:
                u, sr = sf.read(take, dtype="float32")
                take = wd / f"U_snr{snr:g}.flac"  # (beside the bundle: never into the case's folder)
                sf.write(take, add_pink_noise(u, snr), sr)
            rows.append(run_case(bundle, take, gt, notes, wd, config, args.output,
                                 case.name + (f"@{label}" if label else "")))
            print_row(rows[-1])
    if args.variants:
        for label, _, _ in VARIANTS:
            print_mean([r for r in rows if r["case"].endswith("@" + label)], f"MEAN[{label}]")
    if args.group:
        groups: dict[str, list[dict]] = {}
        for row in rows:
            match = re.search(args.group, row["case"])
            groups.setdefault(match.group(0) if match else "other", []).append(row)
        for name, members in sorted(groups.items()):
            print_mean(members, f"MEAN[{name}]")
    print_mean(rows)


def run_case(bundle: Path, take: Path, gt: Path, notes: Path, wd: Path, config: EngineConfig, output: bool,
             name: str) -> dict:
    """Run the player on ``take`` with ``bundle`` (path.csv, and out.wav with ``output``, into
    ``wd``); its figures against ``gt`` (and what is heard, against ``notes`` if it exists)."""
    scheduled = []
    with load_bundle(bundle, spectra=False) as b:
        res = run_file(b, take, alignment_path=wd / "path.csv", config=config, force=True,
                       output_path=(wd / "out.wav") if output else None,
                       on_block=lambda e, rows=scheduled: rows.append((e.u_time_s, e.anticipator.x_s)))
    row = {"case": name, **score(wd / "path.csv", gt), "rtf": res.rtf, "jumps": res.counters["jumps"]}
    if notes.exists():
        row.update(heard_figures(res.trace.heard, res.trace.path, notes, res.u_duration_s, np.asarray(scheduled)))
    return row


def retuned_take(case: Path, folder: Path, cents: float) -> tuple[Path, Path, Path]:
    """``case``'s take played ``cents`` higher (and as much faster), written into
    ``folder`` with its truths (:func:`faster_truths`); its U.flac, gt.csv and notes.csv."""
    ratio = 2.0 ** (cents / 1200.0)
    u, sr = sf.read(case / "U.flac", dtype="float32")
    folder.mkdir(parents=True, exist_ok=True)
    take = folder / "U.flac"
    sf.write(take, soxr.resample(u, sr * ratio, sr), sr)
    return take, *faster_truths(case, folder, ratio)


def tempo_scaled_take(case: Path, folder: Path, speed: float) -> tuple[Path, Path, Path]:
    """``case``'s take played ``speed`` times as fast at the same pitch (Rubber Band's R3
    engine), written into ``folder`` once, with its truths (:func:`faster_truths`); its
    U.flac, gt.csv and notes.csv."""
    take = folder / "U.flac"
    if not take.exists():
        folder.mkdir(parents=True, exist_ok=True)
        stretched = folder / "U_stretched.wav"
        subprocess.run(["rubberband", "-3", "-q", "-T", f"{speed:.6f}", str(case / "U.flac"), str(stretched)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        u, sr = sf.read(stretched, dtype="float32")
        sf.write(take, u, sr)
        stretched.unlink()
    return take, *faster_truths(case, folder, speed)


def faster_truths(case: Path, folder: Path, speed: float) -> tuple[Path, Path]:
    """``case``'s ground truth for its take played ``speed`` times as fast: gt.csv,
    gt_dense.csv and notes.csv (where the case has them) with their U times divided by
    ``speed``, written into ``folder``; the paths of gt.csv and notes.csv."""
    for name in ("gt.csv", "gt_dense.csv"):
        if (case / name).exists():
            data = np.loadtxt(case / name, delimiter=",", skiprows=1, ndmin=2)
            data[:, 0] /= speed
            np.savetxt(folder / name, data, delimiter=",", header="u_time_s,x_time_s", comments="", fmt="%.5f")
    notes = folder / "notes.csv"
    if (case / "notes.csv").exists():
        with open(case / "notes.csv", newline="") as src, open(notes, "w", newline="") as dst:
            rows = csv.reader(src)
            header = next(rows)
            u_columns = [i for i, name in enumerate(header) if name in ("u_on_s", "u_off_s")]
            out = csv.writer(dst)
            out.writerow(header)
            for row in rows:
                for i in u_columns:
                    row[i] = f"{float(row[i]) / speed:.5f}"
                out.writerow(row)
    return folder / "gt.csv", notes


def print_row(row: dict) -> None:
    print(" ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def print_mean(rows: list[dict], label: str = "MEAN") -> None:
    keys = [k for k in rows[0] if k != "case"]
    print(f"{label} " + " ".join(f"{k}={np.mean([r[k] for r in rows]):.2f}" for k in keys))


if __name__ == "__main__":
    main()
