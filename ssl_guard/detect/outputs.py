"""The outputs of a scan, all derived from the run folder's stage results:

- `scores.csv`: one row per sample, `source,key,score,flagged,detector` (the run contract),
- `quarantine.json`: the flagged samples with score, box, reason and provenance,
- `report.json` + `report_assets/*.png` + `report.html`: what a person looks at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ssl_guard import __version__
from ssl_guard.detect.embed import ScanArrays
from ssl_guard.detect.result import Detection
from ssl_guard.run import RunFolder, write_csv

ASSETS = "report_assets"


def write_outputs(run: RunFolder, sources, fingerprints, arrays: ScanArrays, detection: Detection, net, config, resolution: int, timings: dict, baseline) -> tuple[object, object]:
    """Write scores.csv, quarantine.json and the report; returns (Quarantine, Report)."""
    from ssl_guard.quarantine import Provenance, Quarantine, QuarantineEntry, config_hash

    detectors = detection.details.get("detector")
    if detectors is None or len(detectors) != len(arrays):
        detectors = np.array([detection.method] * len(arrays), dtype=object)
    write_csv(
        run / "scores.csv",
        ["source", "key", "score", "flagged", "detector"],
        ((i.source, i.key, f"{float(s):.6f}", int(f), d) for i, s, f, d in zip(arrays.ids, detection.scores, detection.flagged, detectors)),
    )
    provenance = Provenance(
        tool_version=__version__,
        created=_now(),
        method=detection.method,
        encoder=str(net.spec),
        encoder_revision=getattr(net, "revision", None),
        config_hash=config_hash(config),
        root=sources.root,
        units=list(fingerprints),
        resolution=resolution,
    )
    entries = [
        QuarantineEntry(
            source=arrays.ids[row].source,
            key=arrays.ids[row].key,
            score=float(detection.scores[row]),
            box=[int(v) for v in detection.boxes[row]] if detection.boxes[row][0] >= 0 else None,
            reason=_reason(detection, row, str(detectors[row])),
            detector=str(detectors[row]),
            sha256=(arrays.digests[row] or None) if arrays.digests else None,
        )
        for row in np.nonzero(detection.flagged)[0].tolist()
    ]
    quarantine = Quarantine(provenance=provenance, n_scanned=len(arrays), n_skipped=len(arrays.skipped), threshold=float(detection.threshold), entries=entries)
    quarantine = quarantine.with_baseline(baseline)
    # outputs are derived from the recorded stages, so a resumed run rewrites them in place
    quarantine.write(run / "quarantine.json", overwrite=True)
    report = build_report(run, sources, arrays, detection, quarantine, net, resolution, timings, config_hash(config), getattr(config, "top_suspects", 24))
    report.write(run / "report.json")
    from ssl_guard.report.html import render_html

    render_html(run.path, report)
    return quarantine, report


def _reason(detection: Detection, row: int, detector: str) -> str:
    if "mine" in detector:
        return f"carries a repeated trigger pattern (match score {float(detection.scores[row]):.2f})"
    if "additive" in detector:
        return f"carries a global signal shared with other images (score {float(detection.scores[row]):.3f}, threshold {detection.threshold:.3f})"
    return f"{detector}: poison score {float(detection.scores[row]):.3f} above the threshold {detection.threshold:.3f}"


def photo_box(box: list[int] | None, size: tuple[int, int], resolution: int) -> list[int] | None:
    """A scan-resolution box `[x0, y0, x1, y1]` in the photo's own pixels (rounded outwards)."""
    width, height = size
    if box is None or width <= 0 or height <= 0:
        return None
    sx, sy = width / resolution, height / resolution
    x0, y0, x1, y1 = box
    return [int(np.floor(x0 * sx)), int(np.floor(y0 * sy)), min(width, int(np.ceil(x1 * sx))), min(height, int(np.ceil(y1 * sy)))]


def build_report(run: RunFolder, sources, arrays: ScanArrays, detection: Detection, quarantine, net, resolution: int, timings: dict, config_hash: str, top_suspects: int = 24):
    """report.json's model: the top `top_suspects` as gallery cards (thumbnails written as PNGs),
    every flagged sample as a table row, and the bank."""
    from ssl_guard.report.images import draw_box, histogram, overlay_map, save_png
    from ssl_guard.report.schema import BankPattern, FlaggedSample, Report, SkippedSample, StageTiming, Suspect

    assets = run / ASSETS
    assets.mkdir(exist_ok=True)
    suppressed = {(e.source, e.key) for e in quarantine.suppressed}
    detectors = detection.details.get("detector")
    order = np.argsort(-detection.scores, kind="stable")[:top_suspects]
    suspects = []
    for rank, row in enumerate(order.tolist()):
        image = np.asarray(arrays.images[row])
        box = [int(v) for v in detection.boxes[row]] if detection.boxes[row][0] >= 0 else None
        shown = draw_box(image, box) if box else image
        thumb = save_png(shown, assets / f"suspect_{rank:03d}.png", scale=4)
        overlay = trigger = None
        if row in detection.maps:
            overlay = save_png(overlay_map(image, np.asarray(detection.maps[row], np.float32)), assets / f"suspect_{rank:03d}_map.png", scale=4)
        if box and box[2] > box[0] and box[3] > box[1]:  # an empty box has no crop to show
            x0, y0, x1, y1 = box
            trigger = save_png(image[:, y0:y1, x0:x1], assets / f"suspect_{rank:03d}_trigger.png", scale=8)
        identity = arrays.ids[row]
        suspects.append(Suspect(
            source=identity.source,
            key=identity.key,
            score=float(detection.scores[row]),
            flagged=bool(detection.flagged[row]) and (identity.source, identity.key) not in suppressed,
            detector=str(detectors[row]) if detectors is not None else detection.method,
            box=box,
            image=_rel(run, thumb),
            overlay=_rel(run, overlay) if overlay else None,
            trigger=_rel(run, trigger) if trigger else None,
        ))
    flagged_rows = []
    sizes = arrays.sizes if len(arrays.sizes) == len(arrays) else [(0, 0)] * len(arrays)
    for row in np.nonzero(detection.flagged)[0][np.argsort(-detection.scores[detection.flagged], kind="stable")].tolist():
        identity = arrays.ids[row]
        box = [int(v) for v in detection.boxes[row]] if detection.boxes[row][0] >= 0 else None
        size = tuple(int(v) for v in sizes[row])
        flagged_rows.append(FlaggedSample(
            source=identity.source,
            key=identity.key,
            score=float(detection.scores[row]),
            detector=str(detectors[row]) if detectors is not None else detection.method,
            box=box,
            box_photo=photo_box(box, size, resolution),
            photo_size=list(size) if size[0] > 0 else None,
            waived=(identity.source, identity.key) in suppressed,
        ))
    bank = []
    for i, pattern in enumerate(detection.bank):
        path = save_png(pattern.pixels, assets / f"bank_{i:02d}.png", scale=8)
        bank.append(BankPattern(id=i, image=_rel(run, path), hosts=int(pattern.hosts), score=float(pattern.score), targeted=pattern.targeted, box=[int(v) for v in pattern.box], evidence={k: float(v) for k, v in pattern.evidence.items()}))
    n_flagged = len(quarantine.entries)
    if arrays.skipped and n_flagged == 0:
        verdict = "inconclusive"
    else:
        verdict = "poison found" if n_flagged else "clean"
    warnings = list(detection.warnings)
    if arrays.skipped:
        warnings.append(f"{len(arrays.skipped)} sample(s) could not be read: the scan is incomplete (see skipped.csv)")
    if quarantine.suppressed:
        warnings.append(f"{len(quarantine.suppressed)} flagged sample(s) kept in the data by the reviewed baseline")
    if quarantine.waiver_warning():
        warnings.append(quarantine.waiver_warning())
    stages = [StageTiming(name=name, seconds=float(seconds), items=int(items), rate=float(items / seconds) if seconds > 0 else None) for name, (seconds, items) in timings.items()]
    stages += [StageTiming(name=f"  {name}", seconds=float(seconds), items=len(arrays), rate=None) for name, seconds in detection.seconds.items()]
    extra = {k: v for k, v in detection.details.items() if k in ("candidates", "mined_images", "cells", "per_detector", "clusters", "forward_passes")}
    return Report(
        tool_version=__version__,
        created=_now(),
        run_dir=str(run.path),
        method=detection.method,
        detectors=detection.method.split("+"),
        encoder=str(net.spec),
        encoder_revision=getattr(net, "revision", None),
        resolution=resolution,
        config_hash=config_hash,
        data_root=sources.root,
        n_units=len(sources.units),
        n_samples=len(arrays),
        n_skipped=len(arrays.skipped),
        n_flagged=n_flagged,
        threshold=float(detection.threshold) if np.isfinite(detection.threshold) else None,
        verdict=verdict,
        warnings=warnings,
        stages=stages,
        suspects=suspects,
        flagged=flagged_rows,
        bank=bank,
        histogram=histogram(np.asarray(detection.scores, np.float64), float(detection.threshold) if np.isfinite(detection.threshold) else None),
        skipped=[SkippedSample(source=s.id.source, key=s.id.key, reason=s.reason) for s in arrays.skipped],
        extra=_plain(extra),
    )


def _plain(value):
    """JSON-safe copy of nested details (numpy scalars and arrays become Python values)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _rel(run: RunFolder, path: Path) -> str:
    return Path(path).relative_to(run.path).as_posix()


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")
