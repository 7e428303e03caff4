"""`scan` with its defaults catches a blended trigger through the `additive` detector, end to end:
image folder in, run contract out, each flagged sample naming the detector that fired."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from ssl_guard.attacks.global_families import make_global_trigger
from ssl_guard.detect.pipeline import scan
from tests.detect.additive.test_additive import _poison, _scenes


def test_default_scan_flags_a_blend_with_the_additive_detector(tmp_path):
    images, classes = _scenes(480)
    poisoned, truth = _poison(images, classes, make_global_trigger("stripes", 7, alpha=0.12), 30)
    data = tmp_path / "data"
    for i, rgb in enumerate(poisoned):
        folder = data / f"class{classes[i]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"img{i:04d}.png")
    before = {p: p.read_bytes() for p in data.rglob("*.png")}
    result = scan([str(data)], tmp_path / "run", workers=0, progress=False)

    assert result.detection.details["per_detector"]["additive"]["flagged"] >= 27
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    rows = {r["key"]: r for r in report["flagged"]}
    poisoned_keys = {f"class{classes[i]}/img{i:04d}" for i in np.nonzero(truth)[0]}
    found = [k for k in rows if any(k.endswith(p) or p in k for p in poisoned_keys)]
    assert len(found) >= 27 and len(rows) <= 33
    assert all("additive" in rows[k]["detector"] for k in found)
    assert any(p["box"] == [0, 0, 64, 64] for p in report["bank"])  # the global pattern
    assert {p: p.read_bytes() for p in data.rglob("*.png")} == before  # input untouched
