"""SARIF 2.1.0: the structure code scanning requires, stable rule ids, one fingerprint per sample."""

from __future__ import annotations

import json
from types import SimpleNamespace

from ssl_guard.quarantine import QuarantineEntry
from ssl_guard.report.sarif import UNREADABLE_RULE, rule_id, to_sarif


def _entries():
    return [
        QuarantineEntry(source="shards/shard-000001.tar", key="img_0007", score=0.97, box=[3, 4, 20, 21], reason="recurring patch in 41 images", detector="mine"),
        QuarantineEntry(source="shards/shard-000001.tar", key="img_0009", score=0.91, reason="recurring patch in 41 images", detector="mine"),
        QuarantineEntry(source="shards/shard-000004.tar", key="img_0100", score=0.88, reason="masking collapse", detector="poisoncam"),
    ]


def assert_valid_sarif_2_1_0(log: dict) -> None:
    """The required properties of SARIF 2.1.0 (sarifLog, run, tool, toolComponent, result,
    location) plus what GitHub code scanning needs to place and deduplicate an alert."""
    json.dumps(log)  # plain JSON
    assert log["version"] == "2.1.0"
    assert isinstance(log["runs"], list) and log["runs"]
    for run in log["runs"]:
        driver = run["tool"]["driver"]
        assert isinstance(driver["name"], str) and driver["name"]
        rule_ids = [rule["id"] for rule in driver.get("rules", [])]
        assert len(rule_ids) == len(set(rule_ids))
        for result in run["results"]:
            assert isinstance(result["message"]["text"], str) and result["message"]["text"]
            assert result["ruleId"] in rule_ids
            assert rule_ids[result["ruleIndex"]] == result["ruleId"]
            assert result["level"] in ("none", "note", "warning", "error")
            assert result["locations"]
            for location in result["locations"]:
                physical = location["physicalLocation"]
                assert physical["artifactLocation"]["uri"]
                assert physical["region"]["startLine"] >= 1
            fingerprints = result["partialFingerprints"]
            assert fingerprints and all(isinstance(v, str) and v for v in fingerprints.values())
        for invocation in run.get("invocations", []):
            assert isinstance(invocation["executionSuccessful"], bool)


def test_log_has_the_required_structure():
    log = to_sarif(_entries(), artifact_prefix="data/")
    assert_valid_sarif_2_1_0(log)
    run = log["runs"][0]
    assert run["tool"]["driver"]["name"] == "ssl-guard"
    assert len(run["results"]) == 3 and run["invocations"][0]["executionSuccessful"] is True


def test_rule_ids_are_stable_per_detector():
    run = to_sarif(_entries())["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["ssl-guard/mine", "ssl-guard/poisoncam"]
    assert [r["ruleId"] for r in run["results"]] == ["ssl-guard/mine", "ssl-guard/mine", "ssl-guard/poisoncam"]
    assert rule_id("PatchSearch") == "ssl-guard/patchsearch" and rule_id("a b/c") == "ssl-guard/a-b-c"


def test_the_shard_is_the_artifact_and_the_key_is_in_the_fingerprint():
    run = to_sarif(_entries(), artifact_prefix="data/")["runs"][0]
    first, second, _ = run["results"]
    assert first["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "data/shards/shard-000001.tar"
    assert first["partialFingerprints"]["sslGuardSample/v1"] == "shards/shard-000001.tar:img_0007"
    # two samples of one shard: one artifact, two alerts (a line hash of a binary file would merge them)
    assert first["partialFingerprints"]["primaryLocationLineHash"] != second["partialFingerprints"]["primaryLocationLineHash"]
    assert first["properties"]["box"] == [3, 4, 20, 21] and "img_0007" in first["message"]["text"]


def test_fingerprints_do_not_change_between_runs_or_with_scores():
    again = [e.model_copy(update={"score": 0.5}) for e in _entries()]
    a = [r["partialFingerprints"] for r in to_sarif(_entries())["runs"][0]["results"]]
    b = [r["partialFingerprints"] for r in to_sarif(again)["runs"][0]["results"]]
    assert a == b


def test_unreadable_samples_and_incomplete_runs():
    skipped = [SimpleNamespace(source="shards/shard-000002.tar", key="*", reason="shard read error: truncated")]
    log = to_sarif([], skipped=skipped, complete=False, notes=["incomplete scan: 1 samples could not be read"])
    assert_valid_sarif_2_1_0(log)
    run = log["runs"][0]
    assert run["results"][0]["ruleId"] == UNREADABLE_RULE and run["results"][0]["level"] == "warning"
    assert run["invocations"][0]["executionSuccessful"] is False
    assert "incomplete" in run["invocations"][0]["toolExecutionNotifications"][0]["message"]["text"]


def test_clean_run_is_valid_and_empty():
    log = to_sarif([])
    assert_valid_sarif_2_1_0(log)
    assert log["runs"][0]["results"] == []
