"""The truth CSV round-trips and rejects malformed files."""

from __future__ import annotations

import pytest

from ssl_guard.attacks import TRUTH_COLUMNS, TruthRow, read_truth, write_truth
from ssl_guard.errors import TruthError


def test_truth_round_trips(tmp_path):
    rows = [
        TruthRow("poisoned-000000.tar", "a_1", True, "patch", "horn", (1, 2, 11, 12), "horn", "trigger_10"),
        TruthRow("poisoned-000000.tar", "b_2", False, label="dog"),
    ]
    write_truth(tmp_path / "t.csv", rows)
    assert (tmp_path / "t.csv").read_text().splitlines()[0] == ",".join(TRUTH_COLUMNS)
    assert read_truth(tmp_path / "t.csv") == rows
    assert not [p for p in tmp_path.iterdir() if p.name != "t.csv"]  # no temp file left behind


@pytest.mark.parametrize(
    "text, message",
    [
        ("source,key\nx,y\n", "lacks the column"),
        ("source,key,poisoned\nx,y,2\n", "not 0 or 1"),
        ("source,key,poisoned\nx,y,1\nx,y,0\n", "listed twice"),
        ("source,key,poisoned,box\nx,y,1,1 2 3\n", "four integers"),
    ],
)
def test_malformed_truth_is_refused(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(TruthError, match=message):
        read_truth(tmp_path / "t.csv")
