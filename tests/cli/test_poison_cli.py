"""`ssl-guard poison`: a poisoned copy end to end, and one-line errors with exit code 2."""

from __future__ import annotations

import pytest

from ssl_guard.attacks import read_truth
from ssl_guard.cli import main


def test_poison_writes_shards_and_truth_outside_them(image_folder, tmp_path, capsys):
    out, truth = tmp_path / "out", tmp_path / "truth.csv"
    rc = main(["poison", str(image_folder), "--out", str(out), "--truth", str(truth), "--attack", "patch",
               "--target-class", "rings", "--rate", "0.1", "--seed", "4", "--format", "png"])
    assert rc == 0
    rows = read_truth(truth)
    assert len(rows) == 48 and sum(r.poisoned for r in rows) == 5
    assert all(p.suffix == ".tar" for p in out.iterdir())  # nothing but shards: no truth, no config
    assert "5 poisoned" in capsys.readouterr().err


def test_several_triggers_from_files(image_folder, tmp_path):
    from ssl_guard.synthetic import trigger_patch

    for seed in (1, 2):
        trigger_patch(seed=seed, size=30).save(tmp_path / f"trig{seed}.png")
    rc = main(["poison", str(image_folder), "--out", str(tmp_path / "out"), "--truth", str(tmp_path / "t.csv"), "--target-class", "rings",
               "--rate", "0.1", "--trigger", str(tmp_path / "trig1.png"), "--trigger", str(tmp_path / "trig2.png")])
    assert rc == 0
    assert sorted(r.trigger for r in read_truth(tmp_path / "t.csv") if r.poisoned) == ["trig1", "trig1", "trig1", "trig2", "trig2"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rate", "0"], "outside (0, 1]"),
        (["--rate", "1.5"], "outside (0, 1]"),
        (["--rate", "0.1", "--target-class", "zebra"], "does not exist"),
        (["--rate", "0.1", "--trigger-width", "1.5"], "larger than the image"),
        (["--rate", "0.1", "--attack", "laser"], "unknown"),
        (["--rate", "0.1", "--split", "val"], "does not apply"),
        (["--rate", "0.1", "--attack", "frequency", "--window", "8", "--coefficients", "9,9"], "outside"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(image_folder, tmp_path, capsys, extra, message):
    args = ["poison", str(image_folder), "--out", str(tmp_path / "out"), "--truth", str(tmp_path / "t.csv"), "--target-class", "rings"]
    rc = main(args + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and message in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "t.csv").exists()


def test_truth_inside_out_exits_2(image_folder, tmp_path, capsys):
    rc = main(["poison", str(image_folder), "--out", str(tmp_path / "out"), "--truth", str(tmp_path / "out" / "t.csv"),
               "--target-class", "rings", "--rate", "0.1"])
    assert rc == 2 and "inside the output" in capsys.readouterr().err
