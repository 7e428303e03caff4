"""Reviewed decisions: `ssl-guard review` records false positives that later checks honour."""

from __future__ import annotations

import json
import shutil

import numpy as np
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


def test_a_waiver_follows_the_bytes_it_was_made_for(tmp_path, capsys):
    """Waive a finding, replace the sample's bytes under the same name: the finding is back."""
    from PIL import Image

    from ssl_guard.guard import GuardedDataset
    from tests.detect.planted import planted_patch_images

    images, truth, _ = planted_patch_images(240, 30, seed=0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, pixels in enumerate(images):
        Image.fromarray(pixels.transpose(1, 2, 0)).save(folder / f"img{i:03d}.png")
    first = tmp_path / "scan-1"
    assert main(["scan", str(folder), "--out", str(first), "--workers", "0", "--quiet"]) == 0
    manifest = json.loads((first / "quarantine.json").read_text())
    entry = manifest["entries"][0]
    assert entry["sha256"] and len(entry["sha256"]) == 64
    baseline = tmp_path / "baseline.json"
    assert main(["review", str(first), "--false-positive", entry["source"], entry["key"], "--baseline", str(baseline), "--reviewer", "ana"]) == 0
    assert Baseline.load(baseline).decisions[0].sha256 == entry["sha256"]

    # the waiver holds for the same bytes
    second = tmp_path / "scan-2"
    main(["scan", str(folder), "--out", str(second), "--workers", "0", "--quiet", "--baseline", str(baseline)])
    kept = json.loads((second / "quarantine.json").read_text())
    assert (entry["source"], entry["key"]) in {(e["source"], e["key"]) for e in kept["suppressed"]}
    assert (entry["source"], entry["key"]) not in {(e["source"], e["key"]) for e in kept["entries"]}

    # the attack: other (poisoned) bytes under the waived name
    waived = next(folder.rglob(entry["key"].split("/")[-1] + ".png"))
    donor = next(p for p in sorted(folder.glob("*.png")) if p != waived and truth[int(p.stem[3:])])
    pixels = np.asarray(Image.open(donor)).copy()
    pixels[0, 0] = (pixels[0, 0].astype(int) + 1) % 256  # new bytes, still carrying the trigger
    Image.fromarray(pixels).save(waived)
    third = tmp_path / "scan-3"
    capsys.readouterr()
    assert main(["scan", str(folder), "--out", str(third), "--workers", "0", "--quiet", "--baseline", str(baseline)]) == 0
    back = json.loads((third / "quarantine.json").read_text())
    assert (entry["source"], entry["key"]) in {(e["source"], e["key"]) for e in back["entries"]}
    assert back["waivers_not_applied"] == [f"{entry['source']} {entry['key']}"]
    # the guard drops it too
    class Files:
        files = [str(p) for p in sorted(folder.rglob("*.png"))]

        def __len__(self):
            return len(self.files)

        def __getitem__(self, i):
            return self.files[i]

    dataset = GuardedDataset(Files(), third / "quarantine.json", baseline=baseline)
    assert str(waived) not in {dataset[i] for i in range(len(dataset))}
    assert len(dataset) == 240 - len(back["entries"])
    assert main(["check", str(folder), "--quarantine", str(third), "--baseline", str(baseline)]) == 1
    assert "bytes changed since review" in capsys.readouterr().out + capsys.readouterr().err
