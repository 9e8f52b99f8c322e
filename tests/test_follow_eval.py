"""The accuracy benchmark's transformed takes: their truths follow the take onto its new
timeline (U times divided by the speed, X times and every other column unchanged)."""

import numpy as np

from benchmarks.follow_eval import faster_truths


def test_a_faster_take_s_truths_are_on_its_timeline(tmp_path):
    case, out = tmp_path / "case", tmp_path / "out"
    case.mkdir()
    out.mkdir()
    (case / "gt.csv").write_text("u_time_s,x_time_s\n1.0,0.5\n3.0,2.0\n")
    (case / "gt_dense.csv").write_text("u_time_s,x_time_s\n1.0,0.5\n1.01,0.51\n")
    (case / "notes.csv").write_text("part,role,onset_beat,dur_beat,pitch,x_on_s,x_off_s,u_on_s,u_off_s\n"
                                    "0,solo,0.0,1.0,74,0.3,1.2,1.6,2.6\n1,acc,1.0,1.0,60,1.2,2.1,2.6,3.5\n")
    gt, notes = faster_truths(case, out, 2.0)
    np.testing.assert_allclose(np.loadtxt(gt, delimiter=",", skiprows=1), [[0.5, 0.5], [1.5, 2.0]])
    np.testing.assert_allclose(np.loadtxt(out / "gt_dense.csv", delimiter=",", skiprows=1), [[0.5, 0.5], [0.505, 0.51]])
    rows = [line.split(",") for line in notes.read_text().splitlines()]
    assert rows[0] == ["part", "role", "onset_beat", "dur_beat", "pitch", "x_on_s", "x_off_s", "u_on_s", "u_off_s"]
    assert rows[1][:7] == ["0", "solo", "0.0", "1.0", "74", "0.3", "1.2"]  # X's side untouched
    assert [float(v) for v in rows[1][7:]] == [0.8, 1.3]
    assert [float(v) for v in rows[2][7:]] == [1.3, 1.75]
