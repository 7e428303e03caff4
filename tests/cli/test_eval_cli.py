"""`ssl-guard eval`: table, eval.json, its overwrite policy, and the backdoor probe."""

from __future__ import annotations

import json

import pytest

from ssl_guard.attacks import read_truth
from ssl_guard.cli import main


@pytest.fixture(scope="module")
def poisoned(image_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("poisoned")
    assert main(["poison", str(image_folder), "--out", str(root / "shards"), "--truth", str(root / "truth.csv"),
                 "--target-class", "circles", "--rate", "0.125", "--format", "png"]) == 0
    return root


def write_scores(run, truth_path, perfect=True, drop=0):
    run.mkdir(exist_ok=True)
    rows = read_truth(truth_path)[drop:]
    lines = ["source,key,score,flagged"]
    for row in rows:
        score = float(row.poisoned) if perfect else float(not row.poisoned)
        lines.append(f"{row.source},{row.key},{score},{int(score > 0.5)}")
    (run / "scores.csv").write_text("\n".join(lines) + "\n")


def test_eval_scores_a_run_and_keeps_or_refuses_to_replace_eval_json(poisoned, tmp_path, capsys):
    run = tmp_path / "run"
    write_scores(run, poisoned / "truth.csv")
    assert main(["eval", str(run), "--truth", str(poisoned / "truth.csv")]) == 0
    report = json.loads((run / "eval.json").read_text())
    assert report["poisons"] == 6 and report["samples"] == 48
    assert report["auroc"] == 1.0 and report["precision_at_k"]["poisons"] == 1.0 and report["f1"] == 1.0
    assert report["precision_at_k"]["5"] == 1.0 and report["k"]["500"] == 48
    out = capsys.readouterr().out
    assert "precision@6 (#poisons)" in out and "wrote" in out
    assert main(["eval", str(run), "--truth", str(poisoned / "truth.csv")]) == 0
    assert "kept (same inputs)" in capsys.readouterr().out
    write_scores(run, poisoned / "truth.csv", perfect=False)
    assert main(["eval", str(run), "--truth", str(poisoned / "truth.csv")]) == 2
    assert "--force" in capsys.readouterr().err
    assert json.loads((run / "eval.json").read_text())["auroc"] == 1.0
    assert main(["eval", str(run), "--truth", str(poisoned / "truth.csv"), "--force"]) == 0
    assert json.loads((run / "eval.json").read_text())["auroc"] == 0.0


def test_eval_of_an_incomplete_run_exits_2(poisoned, tmp_path, capsys):
    write_scores(tmp_path / "run", poisoned / "truth.csv", drop=1)
    assert main(["eval", str(tmp_path / "run"), "--truth", str(poisoned / "truth.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no score for 1" in err
    assert not (tmp_path / "run" / "eval.json").exists()


def test_eval_with_an_encoder_adds_the_backdoor_effect(poisoned, image_folder, tmp_path, capsys):
    val = tmp_path / "val"
    assert main(["poison", str(image_folder), "--out", str(val), "--truth", str(tmp_path / "val.csv"),
                 "--target-class", "circles", "--split", "val"]) == 0
    run = tmp_path / "run"
    write_scores(run, poisoned / "truth.csv")
    rc = main(["eval", str(run), "--truth", str(poisoned / "truth.csv"), "--encoder", "random:resnet10?width=4&resolution=32",
               "--probe-train", str(image_folder), "--probe-val", str(image_folder), "--triggered", str(val), "--workers", "0", "--device", "cpu", "--knn-k", "1"])
    assert rc == 0
    effect = json.loads((run / "eval.json").read_text())["backdoor"]
    assert effect["target"] == "circles" and effect["non_target"] == 36
    assert 0.0 <= effect["attack_success_rate"] <= 1.0 and effect["target_false_positives"] == round(effect["attack_success_rate"] * 36)
    assert effect["clean_accuracy"] == 1.0  # 1-NN, and the probe's train and clean val are the same images
    assert "attack success rate" in capsys.readouterr().out


def test_eval_encoder_without_probe_data_exits_2(poisoned, tmp_path, capsys):
    write_scores(tmp_path / "run", poisoned / "truth.csv")
    assert main(["eval", str(tmp_path / "run"), "--truth", str(poisoned / "truth.csv"), "--encoder", "random"]) == 2
    assert "--probe-train" in capsys.readouterr().err
