"""The scan report as data: `report.json`, from which every human-facing view is rendered.

`report.json` is the single source of truth of a finished scan. `report.html` and the terminal
summary are derived from it (and can be re-rendered at any time with `ssl-guard report RUN_DIR`), so
everything a person may want to look at has to be in here: the verdict and the numbers behind it,
the top suspects with the paths of their thumbnails, the trigger bank, the score histogram, the
per-stage timings and every sample that could not be read.

Image fields hold paths of PNG files *relative to the run folder* (e.g.
`report_assets/suspect_003.png`), so a run folder can be moved or archived as a whole.
`schema_version` changes whenever a field changes meaning or disappears; readers refuse any other
version instead of guessing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ssl_guard.atomic import write_text_atomic
from ssl_guard.errors import ReportError, validation_summary

SCHEMA_VERSION = 1
REPORT_FILE = "report.json"

Verdict = Literal["clean", "poison found", "inconclusive"]


class _Model(BaseModel):
    # A misspelt field name from a writer must fail loudly, not vanish from the report. Non-finite
    # floats (an infinite threshold, a NaN evidence value) are written as the strings "Infinity" /
    # "NaN", which keeps the file standard JSON and still reads back as the same float.
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="strings")


class StageTiming(_Model):
    """Wall time of one pipeline stage: `items` processed in `seconds`, `rate` items per second."""

    name: str
    seconds: float
    items: int
    rate: float | None = None


class Suspect(_Model):
    """One of the top-scored samples, shown as a card of the report's gallery.

    `box` is the localized trigger `[x0, y0, x1, y1]` in scan-resolution pixels (exclusive end), or
    None when the detector gave none. `image`, `overlay` (activation map over the image) and
    `trigger` (the cut-out trigger) are PNG paths relative to the run folder.
    """

    source: str
    key: str
    score: float
    flagged: bool
    detector: str
    box: list[int] | None = None
    image: str
    overlay: str | None = None
    trigger: str | None = None

    @model_validator(mode="after")
    def _box_has_four_numbers(self) -> "Suspect":
        _check_box(self.box)
        return self


class BankPattern(_Model):
    """One verified trigger of the bank: its crop (`image`), how many samples carry it (`hosts`),
    its score, whether it drags images to one cluster (`targeted`, None when not tested), the box it
    was cut from and the raw evidence numbers that verified it."""

    id: int
    image: str
    hosts: int
    score: float
    targeted: bool | None = None
    box: list[int]
    evidence: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _box_has_four_numbers(self) -> "BankPattern":
        _check_box(self.box)
        return self


class SkippedSample(_Model):
    """A sample (or whole shard) that could not be read, and why."""

    source: str
    key: str
    reason: str


class Histogram(_Model):
    """Score histogram: `counts[i]` samples in `[edges[i], edges[i+1])`, the last bin closed.

    `log_scale` asks renderers to draw counts on a log axis, since poisons are a thin tail.
    """

    edges: list[float]
    counts: list[int]
    threshold: float | None = None
    log_scale: bool = True

    @model_validator(mode="after")
    def _edges_match_counts(self) -> "Histogram":
        if len(self.edges) != len(self.counts) + 1:
            raise ValueError(f"a histogram of {len(self.counts)} bins needs {len(self.counts) + 1} edges, got {len(self.edges)}")
        if any(b < a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("histogram edges must be non-decreasing")
        if any(c < 0 for c in self.counts):
            raise ValueError("histogram counts must be non-negative")
        return self


class FlaggedSample(_Model):
    """One flagged sample (every one, not only the gallery's): the report's table row.

    `box` is in scan-resolution pixels; `box_photo` the same box in the photo's own pixels
    (`x0, y0, x1, y1`, exclusive end), None when the photo's size is unknown or there is no box.
    `waived` is True for a flagged sample that a reviewed baseline keeps in the data.
    """

    source: str
    key: str
    score: float
    detector: str
    box: list[int] | None = None
    box_photo: list[int] | None = None
    photo_size: list[int] | None = None
    waived: bool = False


class Report(_Model):
    """Everything a finished scan reports. Written once per run as `RUN_DIR/report.json`."""

    schema_version: int = SCHEMA_VERSION
    tool_version: str
    created: str  # ISO 8601 timestamp of the end of the scan
    run_dir: str

    method: str
    detectors: list[str]
    encoder: str
    encoder_revision: str | None = None
    resolution: int
    config_hash: str

    data_root: str
    n_units: int
    n_samples: int
    n_skipped: int
    n_flagged: int
    threshold: float | None = None
    verdict: Verdict
    warnings: list[str] = Field(default_factory=list)

    stages: list[StageTiming] = Field(default_factory=list)
    suspects: list[Suspect] = Field(default_factory=list)
    flagged: list[FlaggedSample] = Field(default_factory=list)
    bank: list[BankPattern] = Field(default_factory=list)
    histogram: Histogram
    skipped: list[SkippedSample] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the report as JSON to `path` atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        text = self.model_dump_json(indent=2) + "\n"
        return write_text_atomic(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Report":
        """Read `path` (a report.json, or a run folder holding one).

        Raises `ReportError` when the file is missing, is not JSON, has another `schema_version`
        or does not match the schema.
        """
        path = Path(path)
        if path.is_dir():
            path = path / REPORT_FILE
        if not path.is_file():
            if not path.parent.is_dir():
                raise ReportError(f"run folder {path.parent} does not exist", "pass the folder a scan wrote with --out")
            raise ReportError(f"{path} does not exist", "pass a run folder of a finished scan (it holds report.json)")
        from ssl_guard.jsonfile import read_versioned

        data = read_versioned(
            path, SCHEMA_VERSION, ReportError, "report", "pass a run folder of a finished scan (it holds report.json)",
            lambda found: "re-run the scan with this version, or use the ssl-guard version that wrote it",
        )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            where, message = validation_summary(error)
            raise ReportError(
                f"{path} does not match report schema {SCHEMA_VERSION}: {where}: {message}"
                f" ({error.error_count()} problem(s))",
                "re-run the scan to write a fresh report",
            ) from error


def _check_box(box: list[int] | None) -> None:
    if box is not None and len(box) != 4:
        raise ValueError(f"a box is [x0, y0, x1, y1], got {len(box)} numbers")
