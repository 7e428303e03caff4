"""`scan` end to end on generated shards: the run contract, resuming, and the edge cases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ssl_guard.detect.pipeline import scan
from ssl_guard.errors import ConfigError, DataNotFoundError, EmptyDatasetError, RunDirError
from tests.detect.planted import write_planted_shards


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    shards, truth = write_planted_shards(root, n=240, poisons=30)
    run = root / "run"
    result = scan([str(shards)], run, workers=0, progress=False)
    return shards, truth, run, result


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_scan_writes_the_run_contract_and_flags_exactly_the_poisons(planted):
    shards, truth, run, result = planted
    rows = _rows(run / "scores.csv")
    assert len(rows) == 240 == result.n_samples
    assert {(r["source"], r["key"]) for r in rows} == set(truth)
    flagged = {(r["source"], r["key"]) for r in rows if r["flagged"] == "1"}
    assert flagged == {k for k, poisoned in truth.items() if poisoned}
    manifest = json.loads((run / "quarantine.json").read_text())
    assert {(e["source"], e["key"]) for e in manifest["entries"]} == flagged
    assert all(e["box"] and e["detector"] == "mine" for e in manifest["entries"])
    assert manifest["provenance"]["units"] and manifest["schema_version"] == 1
    report = json.loads((run / "report.json").read_text())
    assert report["verdict"] == "poison found" and report["n_flagged"] == 30
    assert report["bank"] and (run / report["bank"][0]["image"]).is_file()
    assert (run / "report.html").stat().st_size > 10_000
    assert not result.incomplete


def test_rerun_without_resume_refuses_to_overwrite(planted):
    shards, _, run, _ = planted
    before = (run / "scores.csv").read_bytes()
    with pytest.raises(RunDirError):
        scan([str(shards)], run, workers=0, progress=False)
    assert (run / "scores.csv").read_bytes() == before


def test_resume_skips_finished_stages_and_gives_the_same_answer(planted, tmp_path):
    shards, _, run, first = planted
    state = json.loads((run / "run.json").read_text())
    again = scan([str(shards)], run, workers=0, progress=False, resume=True)
    assert json.loads((run / "run.json").read_text())["stages"] == state["stages"]  # nothing re-ran
    assert np.array_equal(again.detection.flagged, first.detection.flagged)


def test_a_changed_detector_setting_reruns_only_the_detector(planted, tmp_path):
    shards, _, run, _ = planted
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(run, copy)
    embed_before = json.loads((copy / "run.json").read_text())["stages"]["embed"]
    scan([str(shards)], copy, workers=0, progress=False, resume=True, mine={"max_candidates": 4})
    stages = json.loads((copy / "run.json").read_text())["stages"]
    assert stages["embed"] == embed_before
    assert stages["detect-mine"]["key"] != json.loads((run / "run.json").read_text())["stages"]["detect-mine"]["key"]


def test_no_poison_and_a_single_class_quarantine_nothing(tmp_path):
    shards, _ = write_planted_shards(tmp_path / "clean", n=120, poisons=0)
    result = scan([str(shards)], tmp_path / "run", workers=0, progress=False)
    assert result.n_flagged == 0
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["verdict"] == "clean" and report["warnings"]


def test_an_unreadable_sample_is_listed_and_marks_the_scan_incomplete(tmp_path, image_folder):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    (data / "circles" / "broken.png").write_bytes(b"not a png at all")
    result = scan([str(data)], tmp_path / "run", workers=0, progress=False)
    assert result.incomplete and result.n_skipped == 1
    skipped = _rows(tmp_path / "run" / "skipped.csv")
    assert skipped[0]["source"] == "circles/broken.png" and skipped[0]["reason"]
    assert json.loads((tmp_path / "run" / "report.json").read_text())["verdict"] == "inconclusive"


def test_empty_and_missing_data_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDatasetError):
        scan([str(tmp_path / "empty")], tmp_path / "run1", workers=0, progress=False)
    with pytest.raises(DataNotFoundError):
        scan([str(tmp_path / "nowhere")], tmp_path / "run2", workers=0, progress=False)
    with pytest.raises(ConfigError):
        scan([str(tmp_path / "empty")], tmp_path / "run3", workers=0, progress=False, batch_size=0)
