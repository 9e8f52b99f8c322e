"""Deterministic synthetic music with known ground truth, for tests and the demo.

A *case* is a little duet rendered twice: once as the "recording" X (solo + accompaniment,
stereo, tempo A) and once as the "live take" U (solo only, mono, tempo curve B, optionally
detuned, with vibrato, another timbre and noise). Because both come from the same note list
in beats, the true alignment between U and X is known exactly at every beat.

Units: times in seconds, pitches in MIDI note numbers (float: 69.0 = A4 = 440 Hz), detune
in cents, levels in dB. Audio arrays are float32, ``(n_samples,)`` mono or
``(n_samples, channels)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Note:
    """One note in score time: onset and duration in beats, pitch in MIDI numbers."""

    beat: float
    dur: float
    pitch: float


@dataclass(frozen=True)
class Timbre:
    """A harmonic instrument: relative partial amplitudes and an envelope.

    Attributes:
        partials: amplitude of harmonics 1..n (linear).
        attack_s: linear attack time (seconds).
        release_s: release time at the note's end (seconds).
        decay_per_s: exponential decay rate during the note (1/s); 0 = sustained.
    """

    partials: tuple[float, ...]
    attack_s: float = 0.02
    release_s: float = 0.05
    decay_per_s: float = 0.0


#: A bright bowed-string-like solo, a mellow organ-like accompaniment, and a reed-like solo.
VIOLIN = Timbre(partials=(1.0, 0.7, 0.55, 0.4, 0.3, 0.22, 0.15, 0.1, 0.07, 0.05), attack_s=0.03)
FLUTE = Timbre(partials=(1.0, 0.35, 0.12, 0.05), attack_s=0.04)
OBOE = Timbre(partials=(0.5, 0.9, 1.0, 0.6, 0.5, 0.3, 0.2, 0.12), attack_s=0.02)
ORGAN = Timbre(partials=(1.0, 0.5, 0.25, 0.12, 0.06), attack_s=0.05, release_s=0.08)
PIANO = Timbre(partials=(1.0, 0.6, 0.3, 0.2, 0.1, 0.05), attack_s=0.005, decay_per_s=1.5, release_s=0.1)


@dataclass(frozen=True)
class TimeMap:
    """A monotone map from beats to seconds, piecewise linear between knots."""

    beats: np.ndarray
    seconds: np.ndarray

    @classmethod
    def constant(cls, bpm: float, offset_s: float = 0.0, total_beats: float = 1e4) -> TimeMap:
        return cls(np.array([0.0, total_beats]), np.array([offset_s, offset_s + total_beats * 60.0 / bpm]))

    @classmethod
    def from_tempo(cls, bpm_of_beat, total_beats: float, offset_s: float = 0.0,
                   pauses: dict[float, float] | None = None, step: float = 0.05) -> TimeMap:
        """Integrate a tempo curve ``bpm_of_beat(beat)``; ``pauses`` maps beat -> extra seconds."""
        beats = np.arange(0.0, total_beats + step, step)
        dt = 60.0 / np.asarray([bpm_of_beat(b) for b in beats[:-1]], dtype=np.float64) * step
        seconds = offset_s + np.concatenate([[0.0], np.cumsum(dt)])
        if pauses:
            for beat, extra in pauses.items():
                seconds = seconds + np.where(beats >= beat, extra, 0.0)
            # a pause holds the position: duplicate knot so the map stays piecewise linear
            for beat, extra in sorted(pauses.items()):
                i = int(np.searchsorted(beats, beat))
                beats = np.insert(beats, i, beat - 1e-9)
                seconds = np.insert(seconds, i, seconds[i] - extra)
        return cls(beats, seconds)

    def __call__(self, beat) -> np.ndarray:
        return np.interp(beat, self.beats, self.seconds)

    def inverse(self, seconds) -> np.ndarray:
        return np.interp(seconds, self.seconds, self.beats)


def midi_to_hz(pitch) -> np.ndarray:
    return 440.0 * 2.0 ** ((np.asarray(pitch, dtype=np.float64) - 69.0) / 12.0)


def render_notes(notes: list[Note], timemap: TimeMap, sr: int, timbre: Timbre, *, detune_cents: float = 0.0,
                 vibrato_cents: float = 0.0, vibrato_hz: float = 5.5, gain: float = 0.2,
                 length_s: float | None = None, seed: int = 0) -> np.ndarray:
    """Render notes additively. Returns float32 mono ``(n_samples,)``."""
    rng = np.random.default_rng(seed)
    end = max((timemap(n.beat + n.dur) for n in notes), default=0.0)
    total = int(np.ceil(((length_s if length_s is not None else end + 0.5)) * sr))
    out = np.zeros(total, dtype=np.float64)
    for note in notes:
        t0, t1 = float(timemap(note.beat)), float(timemap(note.beat + note.dur))
        i0 = int(round(t0 * sr))
        n = int(round((t1 - t0 + timbre.release_s) * sr))
        if i0 >= total or n <= 0:
            continue
        n = min(n, total - i0)
        t = np.arange(n) / sr
        cents = detune_cents + vibrato_cents * np.sin(2 * np.pi * vibrato_hz * t + rng.uniform(0, 2 * np.pi))
        f0 = midi_to_hz(note.pitch) * 2.0 ** (cents / 1200.0)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        env = np.minimum(1.0, t / max(timbre.attack_s, 1e-4)) * np.exp(-timbre.decay_per_s * t)
        held = t1 - t0
        env *= np.clip((held + timbre.release_s - t) / timbre.release_s, 0.0, 1.0)
        tone = np.zeros(n)
        for h, amp in enumerate(timbre.partials, start=1):
            if midi_to_hz(note.pitch) * h < sr / 2 * 0.9:
                tone += amp * np.sin(h * phase + rng.uniform(0, 2 * np.pi))
        out[i0:i0 + n] += gain * env * tone
    return out.astype(np.float32)


def melody(n_notes: int, seed: int = 0, low: int = 67, high: int = 84) -> list[Note]:
    """A random but singable melody: steps and small leaps, durations of 1/2, 1 or 2 beats."""
    rng = np.random.default_rng(seed)
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    degrees = [d + 12 * o for o in range(-1, 4) for d in scale]
    pitches = np.array([60 + d for d in degrees])
    pitches = pitches[(pitches >= low) & (pitches <= high)]
    idx = len(pitches) // 2
    notes, beat = [], 0.0
    for _ in range(n_notes):
        idx += int(rng.choice([-2, -1, -1, 1, 1, 2, 3, -3]))
        top = len(pitches) - 1
        idx = abs(idx) if idx < 0 else (2 * top - idx if idx > top else idx)  # bounce off the range
        dur = float(rng.choice([0.5, 1.0, 1.0, 1.0, 2.0]))
        notes.append(Note(beat, dur, float(pitches[idx])))
        beat += dur
    return notes


def accompaniment(solo: list[Note], seed: int = 0) -> list[Note]:
    """Sustained chords under the melody, one per bar of 4 beats, root position (I-IV-V-vi)."""
    rng = np.random.default_rng(seed + 1)
    end = max(n.beat + n.dur for n in solo)
    roots = [48, 53, 55, 57]
    notes = []
    for bar in range(int(np.ceil(end / 4))):
        root = roots[int(rng.integers(len(roots)))]
        third = 4 if root in (48, 53, 55) else 3
        for p in (root, root + third + 12, root + 19):
            notes.append(Note(4.0 * bar, 4.0, float(p)))
        notes.append(Note(4.0 * bar + 2.0, 2.0, float(root - 12)))
    return notes


@dataclass
class Case:
    """A rendered test case with its ground truth.

    Attributes:
        sr: sample rate of every signal (Hz).
        x: float32 ``(n, 2)`` the recording (solo + accompaniment), stereo.
        x_solo, x_acc: float32 ``(n, 2)`` its stems (``x == x_solo + x_acc``).
        u: float32 ``(m,)`` the live take (solo only).
        u_acc: float32 ``(m,)`` the accompaniment rendered on U's timeline (ideal output).
        onsets_u, onsets_x: solo onset times in U and in X (seconds), aligned.
        map_x, map_u: beat -> seconds maps of X and U.
    """

    sr: int
    x: np.ndarray
    x_solo: np.ndarray
    x_acc: np.ndarray
    u: np.ndarray
    u_acc: np.ndarray
    onsets_u: np.ndarray
    onsets_x: np.ndarray
    map_x: TimeMap
    map_u: TimeMap
    solo: list[Note] = field(default_factory=list)

    def x_of_u(self, u_seconds) -> np.ndarray:
        """True position in X (seconds) at U time ``u_seconds`` (via score time)."""
        return self.map_x(self.map_u.inverse(u_seconds))


def make_case(
    n_notes: int = 24,
    seed: int = 0,
    sr: int = 22050,
    bpm_x: float = 100.0,
    tempo_u=None,
    u_offset_s: float = 1.0,
    pauses: dict[float, float] | None = None,
    detune_cents: float = 0.0,
    vibrato_cents: float = 15.0,
    solo_x: Timbre = VIOLIN,
    solo_u: Timbre = VIOLIN,
    acc: Timbre = ORGAN,
    acc_db: float = 0.0,
    snr_db: float = 40.0,
    solo_rests: tuple[tuple[float, float], ...] = (),
    notes: list[Note] | None = None,
) -> Case:
    """Render a case. ``tempo_u`` is a bpm curve ``f(beat)`` (default: 0.85x..1.15x of bpm_x).

    ``solo_rests`` removes solo notes in the given beat ranges (tutti passages); ``notes``
    replaces the random melody (``n_notes``, ``seed``) with given solo notes.
    """
    tune = list(notes) if notes is not None else melody(n_notes, seed)
    solo = [n for n in tune if not any(lo <= n.beat < hi for lo, hi in solo_rests)]
    total_beats = max(n.beat + n.dur for n in tune)
    accomp = accompaniment(tune, seed)
    map_x = TimeMap.constant(bpm_x, offset_s=0.3)
    if tempo_u is None:
        tempo_u = lambda b: bpm_x * (1.0 + 0.15 * np.sin(2 * np.pi * b / max(total_beats, 1)))  # noqa: E731
    map_u = TimeMap.from_tempo(tempo_u, total_beats + 4, offset_s=u_offset_s, pauses=pauses)
    len_x = float(map_x(total_beats)) + 1.0
    len_u = float(map_u(total_beats)) + 1.0
    x_solo = render_notes(solo, map_x, sr, solo_x, vibrato_cents=vibrato_cents * 0.5, length_s=len_x, seed=seed + 10)
    x_acc = render_notes(accomp, map_x, sr, acc, gain=0.12 * 10 ** (acc_db / 20), length_s=len_x, seed=seed + 11)
    u = render_notes(solo, map_u, sr, solo_u, detune_cents=detune_cents, vibrato_cents=vibrato_cents,
                     length_s=len_u, seed=seed + 12)
    u_acc = render_notes(accomp, map_u, sr, acc, gain=0.12 * 10 ** (acc_db / 20), length_s=len_u, seed=seed + 11)
    rng = np.random.default_rng(seed + 13)
    rms = float(np.sqrt(np.mean(u**2))) + 1e-9
    u = (u + rng.normal(0, rms * 10 ** (-snr_db / 20), u.shape)).astype(np.float32)
    pan = np.array([[0.9, 1.1]], dtype=np.float32)
    stereo_solo = x_solo[:, None] * pan
    stereo_acc = x_acc[:, None] * pan[:, ::-1]
    beats = np.array([n.beat for n in solo])
    return Case(sr=sr, x=stereo_solo + stereo_acc, x_solo=stereo_solo, x_acc=stereo_acc, u=u, u_acc=u_acc,
                onsets_u=map_u(beats), onsets_x=map_x(beats), map_x=map_x, map_u=map_u, solo=solo)
