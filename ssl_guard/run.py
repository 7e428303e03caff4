"""The run folder: every stage's output on disk, so a scan resumes where it stopped.

Layout of RUN_DIR:

    run.json            state: config, data units and fingerprints, encoder, finished stages
    encoder/            the bootstrapped encoder (--encoder bootstrap)
    units/NNNNNN.npz    embed stage output per data unit (ids, labels, digests, images, embeddings, skipped)
    samples.csv         row, source, key, label, unit, sha256: the row order of every array below
    images.u8.npy       (N, 3, R, R) uint8 memmap: the scan-resolution image cache
    embeddings.f16.npy  (N, D) float16 memmap: L2-normalised embeddings
    units.npy           (N,) int32 data unit of each row
    skipped.csv         source, key, reason of every sample that could not be read
    semantic.npy        (N,) int32 k-means cluster of each embedding
    detect-<method>.npz a detector's scores, flags and boxes
    scores.csv, quarantine.json, report.json, report.html, report_assets/   the outputs

A stage is skipped on re-run when its recorded input key matches; a changed input or setting
changes the key, which invalidates that stage and every later one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pydantic

from ssl_guard.atomic import write_bytes_atomic, write_text_atomic
from ssl_guard.errors import RunDirError

STATE_NAME = "run.json"


# the run folder's files are written like every other output (ssl_guard/atomic.py)
atomic_write_bytes = write_bytes_atomic
atomic_write_text = write_text_atomic


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def stable_hash(*parts: Any) -> str:
    """A short sha256 of JSON-serialisable parts (pydantic models are dumped first)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, pydantic.BaseModel):
            part = part.model_dump(mode="json")
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class StageRecord(pydantic.BaseModel):
    key: str
    seconds: float = 0.0
    items: int = 0
    info: dict[str, Any] = {}


class RunState(pydantic.BaseModel):
    """run.json: what this run folder holds and how it was made."""

    tool_version: str
    data: list[str]
    config: dict[str, Any]
    stages: dict[str, StageRecord] = {}


class RunFolder:
    """A scan's run folder: created new, or reopened with `resume=True`."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = Path(path)
        exists = self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir()))
        if exists and not resume:
            raise RunDirError(f"{self.path} already exists", "pass --resume to continue that run, or choose a new --out")
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a run folder")
        if resume and exists and not (self.path / STATE_NAME).is_file():
            raise RunDirError(f"{self.path} is not an ssl-guard run folder (no {STATE_NAME})", "choose a new --out")
        self.path.mkdir(parents=True, exist_ok=True)
        self.state: RunState | None = None
        if (self.path / STATE_NAME).is_file():
            self.state = RunState.model_validate_json((self.path / STATE_NAME).read_text())

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def start(self, state: RunState) -> None:
        """Adopt `state`, keeping the finished stages of a previous state when resuming."""
        if self.state is not None:
            state.stages = dict(self.state.stages)
        self.state = state
        self.save()

    def save(self) -> None:
        assert self.state is not None
        atomic_write_text(self.path / STATE_NAME, self.state.model_dump_json(indent=2))

    def done(self, stage: str, key: str) -> bool:
        """Whether `stage` finished with this input key."""
        record = self.state.stages.get(stage) if self.state else None
        return record is not None and record.key == key

    def finish(self, stage: str, key: str, seconds: float, items: int, **info: Any) -> None:
        assert self.state is not None
        self.state.stages[stage] = StageRecord(key=key, seconds=seconds, items=items, info=info)
        self.save()

    def invalidate(self, stage: str) -> None:
        if self.state and stage in self.state.stages:
            del self.state.stages[stage]
            self.save()

    def record(self, stage: str) -> StageRecord | None:
        return self.state.stages.get(stage) if self.state else None

    def save_npz(self, name: str, **arrays: np.ndarray) -> Path:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return atomic_write_bytes(self.path / name, buffer.getvalue())

    def load_npz(self, name: str) -> dict[str, np.ndarray]:
        # allow_pickle stays False: run folders may come from elsewhere
        with np.load(self.path / name, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
