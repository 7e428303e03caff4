"""The ground truth of a poisoned dataset: one CSV row per written sample.

Columns: `source,key,poisoned,attack,target,box,label,trigger`. `source` is the shard file name
relative to the poisoned dataset's folder and `key` the sample's `__key__`, exactly the
`SampleId` that `ssl_guard.data` gives the sample when the folder is scanned. `poisoned` is 0/1;
`attack`, `target` (the attacker's target class) and `trigger` are empty for clean samples; `box`
is `x0 y0 x1 y1` in source pixels (exclusive end) for a pasted patch, empty otherwise; `label` is
the sample's own class.

The file is never written inside the dataset it describes: a scan must not be able to read it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ssl_guard.atomic import write_text_atomic
from ssl_guard.errors import DataNotFoundError, TruthError

TRUTH_COLUMNS = ("source", "key", "poisoned", "attack", "target", "box", "label", "trigger")
REQUIRED_COLUMNS = TRUTH_COLUMNS[:3]


@dataclass(frozen=True)
class TruthRow:
    source: str
    key: str
    poisoned: bool
    attack: str = ""
    target: str = ""
    box: tuple[int, int, int, int] | None = None
    label: str = ""
    trigger: str = ""


def write_truth(path: str | Path, rows: list[TruthRow]) -> None:
    """Write `rows` to `path` atomically (a temp file in the same folder, then `os.replace`)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(TRUTH_COLUMNS)
    for row in rows:
        box = "" if row.box is None else " ".join(str(v) for v in row.box)
        writer.writerow([row.source, row.key, int(row.poisoned), row.attack, row.target, box, row.label, row.trigger])
    write_text_atomic(Path(path), buffer.getvalue())


def read_truth(path: str | Path) -> list[TruthRow]:
    """Read a truth CSV.

    Raises:
        DataNotFoundError: the file does not exist.
        TruthError: missing columns, a bad `poisoned` or `box` value, or a sample listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"truth file {path} does not exist", "pass the --truth CSV written by `ssl-guard poison`")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise TruthError(f"{path} lacks the column(s) {', '.join(missing)}", f"a truth CSV has the header {','.join(TRUTH_COLUMNS)}")
        rows: list[TruthRow] = []
        seen: set[tuple[str, str]] = set()
        for line, record in enumerate(reader, start=2):
            flag = (record.get("poisoned") or "").strip()
            if flag not in ("0", "1"):
                raise TruthError(f"{path}:{line}: poisoned is {flag!r}, not 0 or 1")
            ident = (record["source"], record["key"])
            if ident in seen:
                raise TruthError(f"{path}:{line}: sample {ident[0]} {ident[1]} is listed twice")
            seen.add(ident)
            box_text = (record.get("box") or "").strip()
            box = None
            if box_text:
                try:
                    x0, y0, x1, y1 = (int(v) for v in box_text.split())
                except ValueError:
                    raise TruthError(f"{path}:{line}: box {box_text!r} is not four integers 'x0 y0 x1 y1'") from None
                box = (x0, y0, x1, y1)
            rows.append(
                TruthRow(
                    source=record["source"],
                    key=record["key"],
                    poisoned=flag == "1",
                    attack=record.get("attack") or "",
                    target=record.get("target") or "",
                    box=box,
                    label=record.get("label") or "",
                    trigger=record.get("trigger") or "",
                )
            )
    return rows
