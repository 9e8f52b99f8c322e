"""The accuracy benchmark's transformed takes: their truths follow the take onto its new
timeline (U times divided by the speed, X times and every other column unchanged); with
``--variants`` each take is played in four forms, written beside the bundle."""

import sys

import numpy as np
import soundfile as sf

import benchmarks.follow_eval as fe


def test_a_faster_take_s_truths_are_on_its_timeline(tmp_path):
    case, out = tmp_path / "case", tmp_path / "out"
    case.mkdir()
    out.mkdir()
    (case / "gt.csv").write_text("u_time_s,x_time_s\n1.0,0.5\n3.0,2.0\n")
    (case / "gt_dense.csv").write_text("u_time_s,x_time_s\n1.0,0.5\n1.01,0.51\n")
    (case / "notes.csv").write_text("part,role,onset_beat,dur_beat,pitch,x_on_s,x_off_s,u_on_s,u_off_s\n"
                                    "0,solo,0.0,1.0,74,0.3,1.2,1.6,2.6\n1,acc,1.0,1.0,60,1.2,2.1,2.6,3.5\n")
    gt, notes = fe.faster_truths(case, out, 2.0)
    np.testing.assert_allclose(np.loadtxt(gt, delimiter=",", skiprows=1), [[0.5, 0.5], [1.5, 2.0]])
    np.testing.assert_allclose(np.loadtxt(out / "gt_dense.csv", delimiter=",", skiprows=1), [[0.5, 0.5], [0.505, 0.51]])
    rows = [line.split(",") for line in notes.read_text().splitlines()]
    assert rows[0] == ["part", "role", "onset_beat", "dur_beat", "pitch", "x_on_s", "x_off_s", "u_on_s", "u_off_s"]
    assert rows[1][:7] == ["0", "solo", "0.0", "1.0", "74", "0.3", "1.2"]  # X's side untouched
    assert [float(v) for v in rows[1][7:]] == [0.8, 1.3]
    assert [float(v) for v in rows[2][7:]] == [1.3, 1.75]


def test_variants_play_each_take_in_four_forms_without_writing_into_the_case(tmp_path, monkeypatch, capsys):
    case, work = tmp_path / "set" / "c1", tmp_path / "work"
    case.mkdir(parents=True)
    t = np.arange(44100) / 44100.0
    take = (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    sf.write(case / "U.flac", take, 44100)
    (case / "gt.csv").write_text("u_time_s,x_time_s\n0.2,0.1\n0.6,0.5\n")
    before = sorted(p.name for p in case.iterdir())
    bundle = work / "c1" / "X.h5"
    monkeypatch.setattr(fe, "case_bundle", lambda c, w, p: (bundle.parent.mkdir(parents=True, exist_ok=True), bundle)[1])
    seen = []

    def fake_run(b, tk, gt, notes, wd, config, output, name):
        u, sr = sf.read(tk, dtype="float32")
        n = min(u.size, take.size)
        seen.append((name, wd, u.size, float(np.sqrt(np.mean((u[:n] - take[:n]) ** 2)))))
        return {"case": name, "<=100": 50.0 + len(seen), "lost_s": 0.0}

    monkeypatch.setattr(fe, "run_case", fake_run)
    monkeypatch.setattr(sys, "argv", ["follow_eval", str(tmp_path / "set"), "--work", str(work), "--variants"])
    fe.main()
    assert [s[0] for s in seen] == [f"c1@{label}" for label, _, _ in fe.VARIANTS]
    assert all(wd.parent == bundle.parent for _, wd, _, _ in seen)  # each form in a folder beside the bundle
    assert seen[0][3] < 1e-4  # as it is (16-bit FLAC)
    assert seen[1][3] > 1e-3 and seen[1][2] == take.size  # noise added, same length
    assert seen[2][2] < take.size < seen[3][2]  # retuned up is shorter (faster), down longer
    assert sorted(p.name for p in case.iterdir()) == before  # nothing written into the case's folder
    out = capsys.readouterr().out
    assert "MEAN[noise25] <=100=52.00" in out and "MEAN <=100=52.50" in out
