"""Resumable scan stages: a stage is a name, a cache key, and how to run, save and load it.

`execute` is the one place that decides whether a stage's stored result is still valid (same key
in the run folder's state), runs it when not, saves it, records its time, and loads the result
back, so a resumed and a fresh run read the same thing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ssl_guard.detect.result import Detection, TriggerPattern
from ssl_guard.run import RunFolder


@dataclass
class Stage:
    """One step of the scan.

    name: the stage's record in run.json (and the prefix of its files).
    key: hash of every input and setting the result depends on.
    run: computes the result.
    save: writes it into the run folder (atomically).
    load: reads it back.
    """

    name: str
    key: str
    run: Callable[[], Any]
    save: Callable[[Any], None]
    load: Callable[[], Any]


def execute(folder: RunFolder, stage: Stage, items: int, timings: dict[str, tuple[float, int]] | None = None) -> Any:
    """Run `stage` unless the run folder holds its result under the same key; return the result
    as loaded from the folder. `items` is what the stage counts (samples), for the report's rates;
    `timings[stage.name]` gets (seconds of the run that made the result, items)."""
    if not folder.done(stage.name, stage.key):
        clock = time.perf_counter()
        stage.save(stage.run())
        folder.finish(stage.name, stage.key, time.perf_counter() - clock, items)
    value = stage.load()
    if timings is not None:
        timings[stage.name] = (folder.record(stage.name).seconds, items)
    return value


def array_stage(folder: RunFolder, name: str, key: str, run: Callable[[], np.ndarray]) -> Stage:
    """A stage whose result is one array, stored as `<name>.npy`."""
    path = folder / f"{name}.npy"

    def save(value: np.ndarray) -> None:
        import io

        from ssl_guard.run import atomic_write_bytes

        buffer = io.BytesIO()
        np.save(buffer, value)
        atomic_write_bytes(path, buffer.getvalue())

    return Stage(name, key, run, save, lambda: np.load(path))


def detection_stage(folder: RunFolder, name: str, key: str, run: Callable[[], Detection]) -> Stage:
    """A detector's stage: its `Detection` stored as `<name>.npz` (arrays, bank pixels, maps and
    a JSON header; nothing pickled)."""
    return Stage(name, key, run, lambda d: save_detection(folder, name, d), lambda: load_detection(folder, name))


def save_detection(folder: RunFolder, stage: str, d: Detection) -> None:
    bank = [
        {"pixels": p.pixels, "host": p.host, "box": list(p.box), "score": p.score, "hosts": p.hosts, "targeted": p.targeted, "evidence": p.evidence}
        for p in d.bank
    ]
    meta = {
        "method": d.method,
        "threshold": d.threshold,
        "seconds": d.seconds,
        "warnings": d.warnings,
        "details": {k: v for k, v in d.details.items() if not isinstance(v, np.ndarray)},
        "bank": [{k: v for k, v in b.items() if k != "pixels"} for b in bank],
    }
    arrays = {f"bank_{i}": b["pixels"] for i, b in enumerate(bank)}
    arrays.update({f"map_{row}": m for row, m in d.maps.items()})
    folder.save_npz(f"{stage}.npz", scores=d.scores, flagged=d.flagged, boxes=d.boxes, meta=np.array(json.dumps(meta, default=_jsonable)), **arrays)


def load_detection(folder: RunFolder, stage: str) -> Detection:
    data = folder.load_npz(f"{stage}.npz")
    meta = json.loads(str(data["meta"]))
    bank = [
        TriggerPattern(pixels=data[f"bank_{i}"], host=b["host"], box=tuple(b["box"]), score=b["score"], hosts=b["hosts"], targeted=b["targeted"], evidence=b["evidence"])
        for i, b in enumerate(meta["bank"])
    ]
    maps = {int(k[4:]): v for k, v in data.items() if k.startswith("map_")}
    return Detection(meta["method"], data["scores"], data["flagged"], data["boxes"], meta["threshold"], bank, maps, meta["seconds"], meta["warnings"], meta["details"])


def _jsonable(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
