"""SARIF 2.1.0 for code scanning: one result per quarantined sample.

Mapping (what GitHub code scanning needs to show and deduplicate alerts):
- one rule per detector, with a stable id `ssl-guard/<detector>` (plus `ssl-guard/unreadable-sample`
  for samples a scan could not read);
- the artifact is the shard (or the image file of a folder), as a path relative to the repository
  (`artifact_prefix` + the sample's source);
- `partialFingerprints` carry the sample key: `sslGuardSample/v1` is `source:key`, and
  `primaryLocationLineHash` is a hash of it. A shard is binary, so the line hash GitHub would
  otherwise compute from "line 1" would merge every sample of a shard into one alert;
- `region.startLine` is 1 (GitHub requires a start line; a shard has no meaningful line).
Whether the scan was complete is reported in `invocations[0].executionSuccessful`.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Iterable, Sequence

from ssl_guard import __version__

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
UNREADABLE_RULE = "ssl-guard/unreadable-sample"

_DETECTOR_HELP = {
    "mine": "a small patch recurring near-identically across unrelated images, above a null measured on the scan",
    "additive": "a global signal (a blend, a frequency trigger) added to many unrelated images, above a mirrored null measured on the scan",
    "poisoncam": "cluster activation masking (PoisonCAM): masking one region throws the image out of its cluster",
    "patchsearch": "PatchSearch: a Grad-CAM window that drags many images into one cluster when pasted",
}


def rule_id(detector: str) -> str:
    """The stable SARIF rule id of a detector, e.g. `ssl-guard/mine`."""
    return "ssl-guard/" + (re.sub(r"[^a-z0-9_.-]+", "-", detector.lower()).strip("-") or "unknown")


def sample_fingerprint(source: str, key: str) -> str:
    """`primaryLocationLineHash` of a sample: stable across runs, distinct per sample."""
    return hashlib.sha256(f"{source}\0{key}".encode()).hexdigest()[:32]


def _rule(detector: str) -> dict[str, Any]:
    description = _DETECTOR_HELP.get(detector, f"flagged by the {detector} detector")
    return {
        "id": rule_id(detector),
        "name": "PoisonedSample" + "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]+", detector) if p),
        "shortDescription": {"text": f"Likely backdoor-poisoned training image ({detector})"},
        "fullDescription": {"text": f"A training sample that carries a likely backdoor trigger: {description}."},
        "help": {
            "text": "Keep the sample out of training (GuardedDataset, or `ssl-guard apply`), or, after "
            "reviewing it, mark it a false positive with `ssl-guard review --false-positive SOURCE KEY`."
        },
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["security", "data-poisoning", "backdoor"]},
    }


def _location(uri: str) -> dict[str, Any]:
    return {"physicalLocation": {"artifactLocation": {"uri": uri}, "region": {"startLine": 1}}}


def to_sarif(
    entries: Sequence[Any],
    artifact_prefix: str = "",
    skipped: Iterable[Any] = (),
    complete: bool = True,
    notes: Sequence[str] = (),
    properties: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a SARIF 2.1.0 log.

    Args:
        entries: quarantine entries (`source`, `key`, `score`, `box`, `reason`, `detector`).
        artifact_prefix: prefix turning a source into a repository-relative path ("data/shards/").
        skipped: records with `source`, `key`, `reason` of samples that could not be read.
        complete: False when part of the input could not be scanned.
        notes: messages for the invocation (a stale manifest, an incomplete scan).
        properties: extra run-level facts (counts, thresholds) for the run's property bag.

    Returns:
        The log as a JSON-ready dict.
    """
    detectors = sorted({entry.detector for entry in entries})
    rules = [_rule(d) for d in detectors]
    index = {rule_id(d): i for i, d in enumerate(detectors)}
    results = []
    for entry in entries:
        rid = rule_id(entry.detector)
        uri = artifact_prefix + entry.source
        box = f", trigger box {list(entry.box)}" if entry.box else ""
        results.append(
            {
                "ruleId": rid,
                "ruleIndex": index[rid],
                "level": "error",
                "message": {
                    "text": f"Sample '{entry.key}' in {entry.source} is likely backdoor-poisoned "
                    f"(score {entry.score:.3f}{box}): {entry.reason}"
                },
                "locations": [_location(uri)],
                "partialFingerprints": {
                    "sslGuardSample/v1": f"{entry.source}:{entry.key}",
                    "primaryLocationLineHash": sample_fingerprint(entry.source, entry.key),
                },
                "properties": {"source": entry.source, "key": entry.key, "score": entry.score, "box": entry.box, "detector": entry.detector},
            }
        )
    skipped = list(skipped)
    if skipped:
        rules.append(
            {
                "id": UNREADABLE_RULE,
                "name": "UnreadableSample",
                "shortDescription": {"text": "Training sample that could not be read"},
                "fullDescription": {"text": "A sample (or shard) the scan could not decode, so it was not checked."},
                "help": {"text": "Repair or remove the sample, then scan again; an incomplete scan never passes."},
                "defaultConfiguration": {"level": "warning"},
            }
        )
        for record in skipped:
            results.append(
                {
                    "ruleId": UNREADABLE_RULE,
                    "ruleIndex": len(rules) - 1,
                    "level": "warning",
                    "message": {"text": f"Sample '{record.key}' in {record.source} could not be read: {record.reason}"},
                    "locations": [_location(artifact_prefix + record.source)],
                    "partialFingerprints": {
                        "sslGuardSample/v1": f"{record.source}:{record.key}",
                        "primaryLocationLineHash": sample_fingerprint(record.source, record.key),
                    },
                }
            )
    invocation: dict[str, Any] = {"executionSuccessful": bool(complete)}
    if notes:
        invocation["toolExecutionNotifications"] = [
            {"level": "error" if not complete else "warning", "message": {"text": note}} for note in notes
        ]
    run: dict[str, Any] = {
        "tool": {"driver": {"name": "ssl-guard", "version": __version__, "rules": rules}},
        "invocations": [invocation],
        "results": results,
        "columnKind": "unicodeCodePoints",
    }
    if properties:
        run["properties"] = properties
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}
