"""Reviewed decisions: `ssl-guard review` records false positives that later checks honour."""

from __future__ import annotations

import json
import shutil

import pytest

from ssl_guard.baseline import Baseline
from ssl_guard.cli import main
from ssl_guard.errors import ManifestError
from ssl_guard.quarantine import QuarantineEntry, build_quarantine


def _entry(source, key, score=0.9):
    return QuarantineEntry(source=source, key=key, score=score, reason="recurring patch", detector="mine")


def test_mark_persist_and_suppress(tmp_path):
    baseline = Baseline()
    baseline.mark_false_positive("a.tar", "k1", note="a watermark", reviewer="ana", score=0.7)
    path = baseline.write(tmp_path / ".ssl-guard-baseline.json")
    loaded = Baseline.load(path)
    assert loaded.suppresses("a.tar", "k1") and not loaded.suppresses("a.tar", "k2") and not loaded.suppresses("b.tar", "k1")
    decision = loaded.decisions[0]
    assert (decision.note, decision.reviewer, decision.score, decision.verdict) == ("a watermark", "ana", 0.7, "false_positive")
    assert decision.reviewed_at.endswith("+00:00")


def test_marking_twice_updates_instead_of_duplicating():
    baseline = Baseline()
    baseline.mark_false_positive("a.tar", "k1", note="first")
    baseline.mark_false_positive("a.tar", "k1", note="second")
    assert len(baseline) == 1 and baseline.decisions[0].note == "second"


def test_missing_and_invalid_baselines(tmp_path):
    assert len(Baseline.load(tmp_path / "none.json", missing_ok=True)) == 0
    with pytest.raises(ManifestError, match="does not exist"):
        Baseline.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"schema_version": 7}')
    with pytest.raises(ManifestError, match="schema_version"):
        Baseline.load(tmp_path / "bad.json")


def test_stale_decisions_are_reported():
    baseline = Baseline()
    baseline.mark_false_positive("a.tar", "k1", unit_sha256="old")
    baseline.mark_false_positive("b.tar", "k2", unit_sha256="same")
    assert [d.source for d in baseline.stale_decisions({"a.tar": "new", "b.tar": "same"})] == ["a.tar"]


@pytest.fixture
def run(shard_folder, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(shard_folder, data)
    q = build_quarantine([str(data)], [_entry("shard-000000.tar", "k1"), _entry("shard-000001.tar", "k2", 0.8)], n_scanned=48)
    q.write(tmp_path / "run" / "quarantine.json")
    return data, tmp_path / "run"


def test_review_cli_marks_a_finding_and_check_honours_it(run, tmp_path, capsys):
    data, run_dir = run
    baseline = tmp_path / "b.json"
    assert main(["check", str(data), "-q", str(run_dir), "--baseline", str(baseline), "--fail-on", "1"]) == 2  # baseline missing
    assert main(["review", str(run_dir), "--false-positive", "shard-000000.tar", "k1", "--note", "logo", "--baseline", str(baseline)]) == 0
    stored = json.loads(baseline.read_text())
    assert stored["decisions"][0]["source"] == "shard-000000.tar" and stored["decisions"][0]["note"] == "logo"
    assert stored["decisions"][0]["unit_sha256"]  # the shard's fingerprint at review time
    capsys.readouterr()
    assert main(["review", str(run_dir), "--baseline", str(baseline)]) == 0
    listing = capsys.readouterr().out
    assert "shard-000000.tar\tk1\t0.900\tmine\tfalse positive" in listing and "k2\t0.800\tmine\topen" in listing
    # one finding left: within --fail-on 1 only thanks to the baseline
    assert main(["check", str(data), "-q", str(run_dir), "--fail-on", "0", "--baseline", str(baseline)]) == 1
    assert main(["check", str(data), "-q", str(run_dir), "--fail-on", "1", "--baseline", str(baseline)]) == 0


def test_review_refuses_an_id_that_is_not_a_finding(run, tmp_path, capsys):
    _, run_dir = run
    rc = main(["review", str(run_dir), "--false-positive", "shard-000000.tar", "nope", "--baseline", str(tmp_path / "b.json")])
    assert rc == 2 and "not a finding" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
