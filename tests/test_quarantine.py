"""The quarantine manifest: round trip, atomic writes, schema checks, stale data refused, coverage."""

from __future__ import annotations

import json
import shutil
import tarfile

import pytest

from ssl_guard.data import resolve_sources
from ssl_guard.errors import ManifestError, StaleManifestError
from ssl_guard.quarantine import (
    Quarantine,
    QuarantineEntry,
    UnitFingerprint,
    build_quarantine,
    check_coverage,
    compare_units,
    config_hash,
    fingerprint_sources,
)


def _entry(source: str, key: str, score: float = 0.9) -> QuarantineEntry:
    return QuarantineEntry(source=source, key=key, score=score, box=[1, 2, 10, 12], reason="recurring patch", detector="mine")


def _shard_keys(path) -> list[str]:
    with tarfile.open(path) as tar:
        return sorted({m.name.split(".")[0] for m in tar.getmembers()})


@pytest.fixture
def shards(shard_folder, tmp_path):
    copy = tmp_path / "shards"
    shutil.copytree(shard_folder, copy)
    return copy


def test_ids_and_keep_name_exactly_the_entries(shards):
    key = _shard_keys(shards / "shard-000001.tar")[0]
    q = build_quarantine([str(shards)], [_entry("shard-000001.tar", key)])
    assert q.ids() == frozenset({("shard-000001.tar", key)})
    assert not q.keep("shard-000001.tar", key)
    assert q.keep("shard-000000.tar", key) and q.keep("shard-000001.tar", key + "x")
    assert q.n_scanned == 48 and q.n_flagged == 1


def test_provenance_fingerprints_every_unit_with_size_and_hash(shards, image_folder):
    units = fingerprint_sources(resolve_sources([str(shards)]))
    assert [u.name for u in units] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert all(u.kind == "shard" and u.size == (shards / u.name).stat().st_size and len(u.sha256) == 32 for u in units)
    groups = fingerprint_sources(resolve_sources([str(image_folder)]))
    assert sum(g.size for g in groups) == sum(p.stat().st_size for p in image_folder.rglob("*.png"))


def test_write_load_round_trip_and_refuses_to_overwrite(shards, tmp_path):
    q = build_quarantine([str(shards)], [_entry("shard-000000.tar", "a")], threshold=0.5, method="mine", encoder="hub:org/enc")
    path = q.write(tmp_path / "run" / "quarantine.json")
    loaded = Quarantine.load(path)
    assert loaded == q and loaded.schema_version == 1
    assert Quarantine.load(tmp_path / "run").ids() == q.ids()  # a run folder works too
    before = path.read_bytes()
    with pytest.raises(ManifestError, match="already exists"):
        q.write(path)
    assert path.read_bytes() == before
    q.write(path, overwrite=True)
    assert [p.name for p in path.parent.iterdir()] == ["quarantine.json"]  # no temp file left behind


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"hello": 1}', "no schema_version"),
        ('{"schema_version": 99}', "schema_version 99, this ssl-guard reads 1"),
        ('{"schema_version": 1, "entries": []}', "not a valid manifest"),
    ],
)
def test_unreadable_manifests_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "quarantine.json"
    path.write_text(content)
    with pytest.raises(ManifestError, match=message) as caught:
        Quarantine.load(path)
    assert caught.value.exit_code == 2 and "\n" not in caught.value.one_line() and caught.value.hint


def test_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        Quarantine.load(tmp_path / "nope.json")


def test_current_data_loads(shards, tmp_path):
    build_quarantine([str(shards)], []).write(tmp_path / "q.json")
    assert Quarantine.load(tmp_path / "q.json", data=[str(shards)]).n_flagged == 0


def test_stale_manifest_names_changed_added_and_removed_units(shards, tmp_path):
    build_quarantine([str(shards)], []).write(tmp_path / "q.json")
    with open(shards / "shard-000000.tar", "ab") as handle:  # one shard changes
        handle.write(b"\0" * 512)
    shutil.copy(shards / "shard-000001.tar", shards / "shard-000009.tar")  # one is added
    (shards / "shard-000002.tar").unlink()  # one is removed
    with pytest.raises(StaleManifestError) as caught:
        Quarantine.load(tmp_path / "q.json", data=[str(shards)])
    text = caught.value.one_line()
    assert caught.value.exit_code == 1
    assert "1 changed (shard-000000.tar)" in text and "1 added (shard-000009.tar)" in text and "1 removed (shard-000002.tar)" in text
    assert "--allow-stale" in text
    assert Quarantine.load(tmp_path / "q.json", data=[str(shards)], allow_stale=True).n_scanned == 48


def test_same_size_content_change_is_stale(image_folder, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(image_folder, folder)
    build_quarantine([str(folder)], []).write(tmp_path / "q.json")
    a, b = sorted(folder.rglob("*.png"))[:2]
    a.write_bytes(b.read_bytes())  # content swap; the group's file list is unchanged
    with pytest.raises(StaleManifestError, match="changed"):
        Quarantine.load(tmp_path / "q.json", data=[str(folder)])


def test_compare_units_by_name():
    def unit(name, sha="a", size=1):
        return UnitFingerprint(name=name, kind="shard", sha256=sha, size=size)

    diff = compare_units([unit("x"), unit("y")], [unit("x", size=2), unit("z")])
    assert diff.changed == ("x",) and diff.added == ("z",) and diff.removed == ("y",)
    assert not compare_units([unit("x")], [unit("x")])


def test_config_hash_is_stable_and_order_free():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash({})) == 16


def test_baseline_moves_reviewed_entries_to_suppressed(shards, tmp_path):
    from ssl_guard.baseline import Baseline

    q = build_quarantine([str(shards)], [_entry("shard-000000.tar", "a"), _entry("shard-000000.tar", "b")])
    baseline = Baseline()
    baseline.mark_false_positive("shard-000000.tar", "a", note="logo, not a trigger")
    filtered = q.with_baseline(baseline)
    assert filtered.keep("shard-000000.tar", "a") and not filtered.keep("shard-000000.tar", "b")
    assert [e.key for e in filtered.suppressed] == ["a"]
    assert not q.keep("shard-000000.tar", "a")  # the original is untouched
    baseline.write(tmp_path / "b.json")
    q.write(tmp_path / "q.json")
    assert Quarantine.load(tmp_path / "q.json", baseline=tmp_path / "b.json").ids() == {("shard-000000.tar", "b")}


def test_manifest_is_plain_json_with_the_required_fields(shards, tmp_path):
    build_quarantine([str(shards)], [_entry("shard-000000.tar", "a")], encoder="hub:org/enc", encoder_revision="abc").write(tmp_path / "q.json")
    raw = json.loads((tmp_path / "q.json").read_text())
    assert set(raw) >= {"schema_version", "provenance", "n_scanned", "n_skipped", "threshold", "entries"}
    assert set(raw["provenance"]) >= {"tool_version", "created", "method", "encoder", "encoder_revision", "config_hash", "root", "units"}
    assert raw["entries"][0] == {"source": "shard-000000.tar", "key": "a", "score": 0.9, "box": [1, 2, 10, 12], "reason": "recurring patch", "detector": "mine", "sha256": None}


# -- coverage (the light pre-commit check) ----------------------------------------------------


def test_coverage_of_changed_files(shards, image_folder, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(image_folder, folder)
    qs = build_quarantine([str(shards)], [])
    qf = build_quarantine([str(folder)], [])
    manifests = [(qs, None), (qf, None)]
    image = sorted(folder.rglob("*.png"))[3]
    ok = check_coverage(manifests, [shards / "shard-000001.tar", image, tmp_path / "README.md"])
    assert ok and len(ok.covered) == 2 and ok.ignored == (str(tmp_path / "README.md"),)

    shutil.copy(shards / "shard-000000.tar", shards / "shard-000007.tar")
    image.write_bytes(sorted(folder.rglob("*.png"))[4].read_bytes())
    stray = tmp_path / "elsewhere.tar"
    stray.write_bytes(b"")
    bad = check_coverage(manifests, [shards / "shard-000007.tar", image, stray, shards / "shard-000002.tar"])
    assert not bad and bad.covered == (str(shards / "shard-000002.tar"),)
    assert len(bad.problems) == 3
    assert "not in" in bad.problems[0] and "changed since" in bad.problems[1] and "not under the data" in bad.problems[2]


def test_full_coverage_finds_added_shards_and_moved_roots(shards, tmp_path):
    q = build_quarantine([str(shards)], [])
    assert check_coverage([(q, None)])
    moved = tmp_path / "moved"
    shards.rename(moved)
    assert "does not exist" in check_coverage([(q, None)]).problems[0]
    assert check_coverage([(q, moved)])  # the data folder given explicitly
    shutil.copy(moved / "shard-000000.tar", moved / "shard-000005.tar")
    assert "1 added (shard-000005.tar)" in check_coverage([(q, moved)]).problems[0]


def test_guard_errors_are_also_the_matching_stdlib_errors():
    from ssl_guard.errors import ConfigError, DataNotFoundError, GuardError, ManifestError

    missing = DataNotFoundError("no such folder: x", "check the path")
    assert isinstance(missing, FileNotFoundError) and isinstance(missing, GuardError)
    assert str(missing) == "no such folder: x" and missing.one_line() == "error: no such folder: x (check the path)"
    assert isinstance(ConfigError("bad"), ValueError) and isinstance(ManifestError("bad"), ValueError)
    try:
        raise DataNotFoundError("gone")
    except FileNotFoundError as caught:  # a library user's natural catch
        assert caught.message == "gone"


def test_one_line_of_a_validation_error_names_its_field():
    import pydantic

    from ssl_guard.errors import validation_summary

    class Inner(pydantic.BaseModel):
        depth: int

    class Outer(pydantic.BaseModel):
        inner: Inner

    try:
        Outer.model_validate({"inner": {"depth": "deep"}})
    except pydantic.ValidationError as error:
        where, message = validation_summary(error, prefix=("scan",))
    assert where == "scan.inner.depth" and "integer" in message


@pytest.mark.parametrize("content, message", [("{oops", "not valid JSON"), ("[1]", "no schema_version"), ('{"schema_version": 42}', "schema_version 42, this ssl-guard reads")])
def test_the_three_versioned_files_fail_alike(tmp_path, content, message):
    """quarantine.json, report.json and a baseline share one reader and its one-line errors."""
    from ssl_guard.baseline import Baseline
    from ssl_guard.errors import GuardError
    from ssl_guard.report.schema import Report

    path = tmp_path / "file.json"
    path.write_text(content)
    for load in (Quarantine.load, Report.load, Baseline.load):
        with pytest.raises(GuardError, match=message) as caught:
            load(path)
        assert caught.value.hint and "\n" not in caught.value.one_line()
