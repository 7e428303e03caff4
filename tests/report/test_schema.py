"""report.json: what the scan writes is exactly what every renderer reads back, or a clear error."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ssl_guard.errors import ReportError
from ssl_guard.report.schema import SCHEMA_VERSION, Histogram, Report, Suspect


def test_round_trip_is_lossless(run_folder):
    written = Report.load(run_folder / "report.json")
    again = run_folder / "again.json"
    written.write(again)
    assert Report.load(again) == written
    assert Report.load(run_folder) == written  # a run folder is accepted for its report.json
    assert written.schema_version == SCHEMA_VERSION
    assert len(written.suspects) == 9 and len(written.bank) == 2 and len(written.skipped) == 3


def test_non_finite_numbers_survive_as_standard_json(run_folder, tmp_path):
    report = Report.load(run_folder)
    report.threshold = float("inf")
    report.bank[0].evidence["flip_rate"] = float("nan")
    path = report.write(tmp_path / "report.json")

    def refuse(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    json.loads(path.read_text(), parse_constant=refuse)  # jq, browsers and JSON.parse can read it
    back = Report.load(path)
    assert back.threshold == float("inf")
    assert back.bank[0].evidence["flip_rate"] != back.bank[0].evidence["flip_rate"]  # NaN


def test_write_is_atomic_and_leaves_no_temp_files(run_folder):
    report = Report.load(run_folder)
    before = sorted(p.name for p in run_folder.iterdir())
    report.write(run_folder / "report.json")
    assert sorted(p.name for p in run_folder.iterdir()) == before
    assert (run_folder / "report.json").stat().st_mode & 0o777 == 0o644


def test_missing_folder_and_file_are_report_errors(tmp_path):
    with pytest.raises(ReportError, match="does not exist"):
        Report.load(tmp_path / "nowhere" / "report.json")
    with pytest.raises(ReportError, match="does not exist"):
        Report.load(tmp_path)  # a folder without report.json


def test_unreadable_json_is_a_report_error(tmp_path):
    (tmp_path / "report.json").write_text("{ not json")
    with pytest.raises(ReportError, match="cannot read"):
        Report.load(tmp_path)
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="not a report"):
        Report.load(tmp_path)


@pytest.mark.parametrize("version", [0, 2, None, "1"])
def test_other_schema_version_is_refused(run_folder, version):
    data = json.loads((run_folder / "report.json").read_text())
    if version is None:
        del data["schema_version"]
    else:
        data["schema_version"] = version
    (run_folder / "report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match="schema_version") as caught:
        Report.load(run_folder)
    assert caught.value.hint  # says what to do next


def test_schema_mismatch_names_the_field(run_folder):
    data = json.loads((run_folder / "report.json").read_text())
    data["suspects"][0]["score"] = "very high"
    (run_folder / "report.json").write_text(json.dumps(data))
    with pytest.raises(ReportError, match=r"suspects\.0\.score"):
        Report.load(run_folder)


def test_writers_cannot_misspell_fields():
    with pytest.raises(ValidationError, match="scor"):
        Suspect(source="a.tar", key="k", scor=1.0, score=1.0, flagged=True, detector="mine", image="x.png")


def test_boxes_have_four_numbers():
    with pytest.raises(ValidationError, match="x0, y0, x1, y1"):
        Suspect(source="a.tar", key="k", score=1.0, flagged=True, detector="mine", box=[1, 2, 3], image="x.png")


def test_histogram_shape_is_checked():
    Histogram(edges=[0.0, 0.5, 1.0], counts=[3, 4], threshold=0.5)
    with pytest.raises(ValidationError, match="needs 3 edges"):
        Histogram(edges=[0.0, 1.0], counts=[3, 4], threshold=None)
    with pytest.raises(ValidationError, match="non-decreasing"):
        Histogram(edges=[0.0, 1.0, 0.5], counts=[3, 4], threshold=None)
