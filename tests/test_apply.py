"""`apply_quarantine`: cleaned shards hold every sample but the quarantined ones, bit for bit."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile

import pytest

from ssl_guard.apply import REMOVED_NAME, apply_quarantine
from ssl_guard.baseline import Baseline
from ssl_guard.errors import GuardError, RunDirError, StaleManifestError
from ssl_guard.quarantine import QuarantineEntry, build_quarantine


def _entry(source, key):
    return QuarantineEntry(source=source, key=key, score=0.9, reason="recurring patch", detector="mine")


def _members(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isreg()}


def _digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def shards(shard_folder, tmp_path):
    data = tmp_path / "data" / "shards"
    shutil.copytree(shard_folder, data)
    return data


def test_cleaned_shards_drop_exactly_the_quarantined_samples(shards, tmp_path):
    keys = {p.name: sorted({n.split(".")[0] for n in _members(p)}) for p in sorted(shards.glob("*.tar"))}
    flagged = [("shard-000000.tar", keys["shard-000000.tar"][0]), ("shard-000002.tar", keys["shard-000002.tar"][-1])]
    build_quarantine([str(shards)], [_entry(*i) for i in flagged]).write(tmp_path / "q.json")
    before = _digest(shards)

    result = apply_quarantine([str(shards)], tmp_path / "q.json", tmp_path / "clean")

    assert _digest(shards) == before  # the input is untouched
    assert (result.n_kept, result.n_removed) == (46, 2)
    for name, original in ((p.name, _members(p)) for p in sorted(shards.glob("*.tar"))):
        cleaned = _members(tmp_path / "clean" / name)
        dropped = {key for source, key in flagged if source == name}
        assert cleaned == {member: data for member, data in original.items() if member.split(".")[0] not in dropped}
    manifest = json.loads((tmp_path / "clean" / REMOVED_NAME).read_text())
    assert sorted((e["source"], e["key"]) for e in manifest["removed"]) == sorted(flagged)
    assert [u["removed"] for u in manifest["units"]] == [1, 0, 1] and manifest["not_found"] == []
    # the cleaned copy is a dataset of its own: the same ids minus the quarantined
    from ssl_guard.data import iter_raw_samples, resolve_sources

    cleaned_ids = {(r.id.source, r.id.key) for u in resolve_sources([str(tmp_path / "clean")]).units for r in iter_raw_samples(u)}
    assert len(cleaned_ids) == 46 and not cleaned_ids & set(flagged)


def test_image_folder_copy_and_baseline(image_folder, tmp_path):
    files = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    entries = [_entry(f, f.rsplit(".", 1)[0]) for f in files[:3]]
    build_quarantine([str(image_folder)], entries).write(tmp_path / "q.json")
    baseline = Baseline()
    baseline.mark_false_positive(entries[0].source, entries[0].key)
    baseline.write(tmp_path / "b.json")
    result = apply_quarantine([str(image_folder)], tmp_path / "q.json", tmp_path / "clean", baseline=tmp_path / "b.json")
    copied = sorted(p.relative_to(tmp_path / "clean").as_posix() for p in (tmp_path / "clean").rglob("*.png"))
    assert copied == [f for f in files if f not in (files[1], files[2])]
    assert result.n_removed == 2 and [e.key for e in result.suppressed] == [entries[0].key]


def test_refuses_stale_manifests_and_existing_or_nested_outputs(shards, tmp_path):
    build_quarantine([str(shards)], []).write(tmp_path / "q.json")
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "old.txt").write_text("earlier results")
    with pytest.raises(RunDirError, match="already exists"):
        apply_quarantine([str(shards)], tmp_path / "q.json", tmp_path / "clean")
    with pytest.raises(RunDirError, match="inside the input"):
        apply_quarantine([str(shards)], tmp_path / "q.json", shards / "clean")
    with pytest.raises(RunDirError, match="contains the input"):
        apply_quarantine([str(shards)], tmp_path / "q.json", shards.parent)
    with open(shards / "shard-000001.tar", "ab") as handle:
        handle.write(b"\0" * 1024)
    with pytest.raises(StaleManifestError):
        apply_quarantine([str(shards)], tmp_path / "q.json", tmp_path / "clean2")
    assert apply_quarantine([str(shards)], tmp_path / "q.json", tmp_path / "clean2", allow_stale=True).n_kept == 48


def test_a_truncated_shard_writes_nothing(shards, tmp_path):
    build_quarantine([str(shards)], [], n_scanned=48).write(tmp_path / "q.json")
    data = (shards / "shard-000001.tar").read_bytes()
    (shards / "shard-000001.tar").write_bytes(data[: len(data) // 2 + 100])
    with pytest.raises(GuardError, match="cannot read shard shard-000001.tar completely"):
        apply_quarantine([str(shards)], tmp_path / "q.json", tmp_path / "clean", allow_stale=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "q.json"]  # no partial output
