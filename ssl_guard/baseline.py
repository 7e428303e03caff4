"""Reviewed decisions: findings a person has checked and marked as false positives.

A baseline file (`.ssl-guard-baseline.json` by default, meant to be committed beside the data)
persists these decisions so that later scans, `check`, `apply` and `GuardedDataset` keep the sample
in the data instead of flagging it again. Each decision records who made it, when, and the score,
detector and unit fingerprint it was made against, so that an audit can see what was waived.

Decisions are keyed by the sample id `(source, key)` and bound to the sample's own content: the
sha256 of its stored bytes when it was reviewed (as a secrets baseline binds an entry to the hashed
secret). If someone replaces a waived sample's bytes under the same key, the waiver no longer
applies: the finding is back, and manifests list it under `waivers_not_applied`. A decision without
a content hash (made before hashes were recorded) binds by id only when the finding has no hash
either; against a hashed finding it does not apply (re-review it).
"""

from __future__ import annotations

import getpass
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from ssl_guard.errors import ManifestError, validation_summary

SCHEMA_VERSION = 1
DEFAULT_BASELINE = ".ssl-guard-baseline.json"


class Decision(BaseModel):
    """One reviewed finding."""

    model_config = ConfigDict(extra="allow")

    source: str
    key: str
    verdict: Literal["false_positive"] = "false_positive"
    note: str = ""
    reviewer: str = ""
    reviewed_at: str = ""  # ISO 8601, UTC
    score: float | None = None
    detector: str | None = None
    unit_sha256: str | None = None  # fingerprint of the sample's unit when it was reviewed
    sha256: str | None = None  # the sample's own content hash when it was reviewed


class Baseline(BaseModel):
    """The set of reviewed decisions; `suppresses(source, key)` is what scans and guards consult."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    decisions: list[Decision] = Field(default_factory=list)

    _index: dict[tuple[str, str], int] | None = PrivateAttr(default=None)

    def _by_id(self) -> dict[tuple[str, str], int]:
        if self._index is None:
            self._index = {(d.source, d.key): i for i, d in enumerate(self.decisions)}
        return self._index

    def decision(self, source: str, key: str) -> Decision | None:
        index = self._by_id().get((source, key))
        return None if index is None else self.decisions[index]

    def suppresses(self, source: str, key: str, sha256: str | None = None) -> bool:
        """True when `(source, key)` was marked a false positive for these bytes.

        `sha256` is the finding's content hash (`QuarantineEntry.sha256`). The waiver applies when
        both hashes are known and equal, or when neither is known (legacy id-only records).
        """
        decision = self.decision(source, key)
        if decision is None:
            return False
        if decision.sha256 is None and sha256 is None:
            return True
        return decision.sha256 == sha256

    def content_changed(self, source: str, key: str, sha256: str | None) -> bool:
        """True when `(source, key)` has a waiver that does not apply to a finding with `sha256`."""
        return self.decision(source, key) is not None and not self.suppresses(source, key, sha256)

    def __len__(self) -> int:
        return len(self.decisions)

    def mark_false_positive(
        self,
        source: str,
        key: str,
        note: str = "",
        reviewer: str | None = None,
        score: float | None = None,
        detector: str | None = None,
        unit_sha256: str | None = None,
        sha256: str | None = None,
    ) -> Decision:
        """Record (or update) a false-positive decision for `(source, key)`; returns it."""
        decision = Decision(
            source=source,
            key=key,
            note=note,
            reviewer=reviewer if reviewer is not None else _whoami(),
            reviewed_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            score=score,
            detector=detector,
            unit_sha256=unit_sha256,
            sha256=sha256,
        )
        index = self._by_id().get((source, key))
        if index is None:
            self.decisions.append(decision)
        else:
            self.decisions[index] = decision
        self._index = None
        return decision

    def stale_decisions(self, units: dict[str, str]) -> list[Decision]:
        """Decisions whose unit fingerprint differs from `units` (unit name -> sha256)."""
        return [d for d in self.decisions if d.unit_sha256 and d.source in units and units[d.source] != d.unit_sha256]

    @classmethod
    def load(cls, path: str | os.PathLike, missing_ok: bool = False) -> "Baseline":
        """Read a baseline file; an absent file is an empty baseline when `missing_ok`.

        Raises:
            ManifestError: missing (unless `missing_ok`), unreadable or of another schema.
        """
        from ssl_guard.jsonfile import read_versioned

        path = Path(path)
        if missing_ok and not path.exists():
            return cls()
        raw = read_versioned(path, SCHEMA_VERSION, ManifestError, "baseline", "create one with `ssl-guard review`", lambda found: "is it a .ssl-guard-baseline.json?")
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            where, message = validation_summary(error)
            raise ManifestError(f"baseline {path} is invalid: {where}: {message}") from None

    def write(self, path: str | os.PathLike) -> Path:
        """Write the baseline atomically (it is updated in place by design: decisions accumulate)."""
        from ssl_guard.atomic import write_text_atomic

        return write_text_atomic(path, self.model_dump_json(indent=2) + "\n")


def _whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER", "")
