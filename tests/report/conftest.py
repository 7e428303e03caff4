"""A realistic finished-scan run folder, built the way the scan pipeline builds one.

Scenes come from `ssl_guard.synthetic`; some carry a pasted trigger patch, and their activation maps
peak on it. Thumbnails, overlays and trigger crops are written with `ssl_guard.report.images`, the
report with `Report.write`. One suspect and one unreadable sample carry a hostile key, as an
untrusted dataset may.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ssl_guard import synthetic
from ssl_guard.report.images import histogram, overlay_map, save_png
from ssl_guard.report.schema import BankPattern, Report, SkippedSample, StageTiming, Suspect

RESOLUTION = 64
TRIGGER = 12
N_POISON_SUSPECTS = 6
N_CLEAN_SUSPECTS = 3
HOSTILE_KEY = '<script>alert("pwned")</script>'


def _heat(rng: np.random.Generator, box: tuple[int, int, int, int] | None) -> np.ndarray:
    """(R, R) float map: a bump on `box` over weak noise, or diffuse noise when there is no box."""
    yy, xx = np.mgrid[0:RESOLUTION, 0:RESOLUTION].astype(np.float32)
    heat = rng.normal(0.0, 0.05, (RESOLUTION, RESOLUTION)).astype(np.float32)
    if box is None:
        cx, cy = rng.uniform(10, 54, 2)
        return heat + 0.3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 14.0**2))
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return heat + np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * (TRIGGER / 2.0) ** 2))


def build_run(run_dir: Path, seed: int = 0) -> Report:
    """Fill `run_dir` with report_assets/*.png and report.json; returns the written `Report`."""
    rng = np.random.default_rng(seed)
    assets = run_dir / "report_assets"
    patch = np.asarray(synthetic.trigger_patch(seed=7, size=TRIGGER)).transpose(2, 0, 1)

    suspects: list[Suspect] = []
    for i in range(N_POISON_SUSPECTS + N_CLEAN_SUSPECTS):
        poisoned = i < N_POISON_SUSPECTS
        cls = int(rng.integers(0, 8))
        image = np.asarray(synthetic.scene(rng, cls, RESOLUTION)).transpose(2, 0, 1).copy()
        if poisoned:
            x0, y0 = (int(v) for v in rng.integers(2, RESOLUTION - TRIGGER - 2, 2))
            image[:, y0 : y0 + TRIGGER, x0 : x0 + TRIGGER] = patch
            box = [x0, y0, x0 + TRIGGER, y0 + TRIGGER]
        else:
            x0, y0 = (int(v) for v in rng.integers(0, RESOLUTION - 16, 2))
            box = [x0, y0, x0 + 16, y0 + 16]
        heat = _heat(rng, tuple(box) if poisoned else None)
        name = f"suspect_{i:03d}"
        save_png(image, assets / f"{name}.png", scale=2)
        save_png(overlay_map(image, heat), assets / f"{name}_overlay.png", scale=2)
        save_png(image[:, box[1] : box[3], box[0] : box[2]], assets / f"{name}_trigger.png", scale=4)
        key = HOSTILE_KEY if i == 2 else f"{synthetic.CLASS_NAMES[cls]}_{int(rng.integers(0, 99999)):05d}"
        suspects.append(
            Suspect(
                source=f"shards/train-{int(rng.integers(0, 40)):06d}.tar",
                key=key,
                score=float(0.97 - 0.04 * i if poisoned else 0.41 - 0.05 * i),
                flagged=poisoned,
                detector="mine",
                box=box,
                image=f"report_assets/{name}.png",
                overlay=f"report_assets/{name}_overlay.png",
                trigger=f"report_assets/{name}_trigger.png",
            )
        )

    save_png(patch, assets / "bank_000.png", scale=4)
    other = np.asarray(synthetic.trigger_patch(seed=11, size=TRIGGER)).transpose(2, 0, 1)
    save_png(other, assets / "bank_001.png", scale=4)
    bank = [
        BankPattern(id=0, image="report_assets/bank_000.png", hosts=58, score=0.93, targeted=True,
                    box=suspects[0].box, evidence={"masking_collapse": 0.81, "flip_rate": 0.64, "recurrence": 58.0}),
        BankPattern(id=1, image="report_assets/bank_001.png", hosts=4, score=0.52, targeted=None,
                    box=[20, 30, 32, 42], evidence={"masking_collapse": 0.22}),
    ]

    clean_scores = rng.beta(2.0, 14.0, 1990)
    poison_scores = rng.uniform(0.75, 0.98, 58)
    scores = np.concatenate([clean_scores, poison_scores])
    threshold = 0.62
    n_flagged = int((scores >= threshold).sum())

    report = Report(
        tool_version="0.1.0",
        created="2026-11-25T14:30:00+00:00",
        run_dir=str(run_dir),
        method="mine",
        detectors=["mine"],
        encoder="hub:example/simclr-r18-64",
        encoder_revision="3f2a9c1",
        resolution=RESOLUTION,
        config_hash="sha256:9d1c0e7b5a42",
        data_root="/data/cifar-shards",
        n_units=40,
        n_samples=len(scores),
        n_skipped=3,
        n_flagged=n_flagged,
        threshold=threshold,
        verdict="poison found",
        warnings=["3 samples could not be decoded and were not scanned (listed at the end of the report)."],
        stages=[
            StageTiming(name="embed", seconds=41.3, items=len(scores), rate=len(scores) / 41.3),
            StageTiming(name="cluster", seconds=2.1, items=len(scores), rate=len(scores) / 2.1),
            StageTiming(name="localize", seconds=75.0, items=240, rate=3.2),
            StageTiming(name="flip test", seconds=18.4, items=240, rate=240 / 18.4),
            StageTiming(name="classify", seconds=6.7, items=len(scores), rate=None),
        ],
        suspects=suspects,
        bank=bank,
        histogram=histogram(scores, threshold),
        skipped=[
            SkippedSample(source="shards/train-000007.tar", key="dots_00412", reason="cannot identify image file"),
            SkippedSample(source="shards/train-000019.tar", key=HOSTILE_KEY, reason="truncated PNG data"),
            SkippedSample(source="shards/train-000033.tar", key="grid_01001", reason="no image member (.jpg/.png/...)"),
        ],
        extra={"dataset_fingerprint": "blake2b:51c7e0aa", "bank_size": 2},
    )
    report.write(run_dir / "report.json")
    return report


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A fresh run folder per test (tests may delete or corrupt its files)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    build_run(run_dir)
    return run_dir
