"""PoisonCAM against PatchSearch on an encoder that carries the backdoor, through the real CLI.

Usage:
    nice -n 5 .venv/bin/python bench/poisoncam_table.py --encoder bench/fixtures/badencoder-htba10 \
        --variant bench/work/imagenette-patch-1pct [--variant ...] [--method poisoncam --method patchsearch ...] \
        [--runs bench/work/pcam-runs] [--json bench/work/pcam-table.jsonl]

Each (variant, method) pair is one `ssl-guard scan VARIANT/shards --encoder ENCODER --method M`
into RUNS/<variant>-<method> (kept and reused when its report.json exists), then
`ssl-guard eval RUN --truth VARIANT/truth.csv`. Columns: P@k, AUROC, flagged precision and
recall, localisation IoU of the scan's box with the truth box (poisons that got a box; the box is
read from the detector's saved arrays), minutes per stage, and the scan / embed ratio.
The variants are built by bench/make_benchmark.py (trigger_10, 0.19 of the side, French horn).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run_scan(variant: Path, method: str, encoder: str, run: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.perf_counter()
    if not (run / "report.json").is_file():
        proc = subprocess.run([sys.executable, "-m", "ssl_guard", "scan", str(variant / "shards"), "--encoder", encoder,
                               "--method", method, "--out", str(run), "--quiet"], capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            return {"error": proc.stderr.strip().splitlines()[-3:]}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "ssl_guard", "eval", str(run), "--truth", str(variant / "truth.csv")], capture_output=True, text=True)
    return {"cpu_min": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60, "wall_min": (time.perf_counter() - clock) / 60}


def localisation(run: Path, truth_csv: Path) -> dict:
    """Mean IoU of the detector's boxes with the truth boxes over the poisons that got one."""
    rows = {(r["source"], r["key"]): r for r in csv.DictReader(truth_csv.open())}
    samples = list(csv.DictReader((run / "samples.csv").open())) if (run / "samples.csv").is_file() else []
    ious = []
    for npz in sorted(run.glob("detect-*.npz")):
        arrays = np.load(npz, allow_pickle=False)
        if "boxes" not in arrays.files or len(arrays["boxes"]) != len(samples):
            continue
        report = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
        resolution = int(report.get("encoder", {}).get("resolution", 64)) if isinstance(report.get("encoder"), dict) else 64
        for sample, box in zip(samples, arrays["boxes"]):
            truth = rows.get((sample.get("source"), sample.get("key")))
            if truth is None or truth["poisoned"] != "1" or not truth["box"] or box[0] < 0:
                continue
            x0, y0, x1, y1 = (float(v) for v in truth["box"].split())
            scale = resolution / 224.0  # the benchmark's photos are 224 px
            t = np.array([x0, y0, x1, y1]) * scale
            ix = max(0.0, min(t[2], box[2]) - max(t[0], box[0]))
            iy = max(0.0, min(t[3], box[3]) - max(t[1], box[1]))
            inter = ix * iy
            union = (t[2] - t[0]) * (t[3] - t[1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
            ious.append(inter / union if union > 0 else 0.0)
    return {"iou_mean": float(np.mean(ious)) if ious else None, "boxed_poisons": len(ious)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--variant", type=Path, action="append", required=True)
    parser.add_argument("--method", action="append", default=None)
    parser.add_argument("--runs", type=Path, default=ROOT / "bench" / "work" / "pcam-runs")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "work" / "pcam-table.jsonl")
    args = parser.parse_args(argv)
    methods = args.method or ["poisoncam", "patchsearch", "auto"]
    for variant in args.variant:
        for method in methods:
            run = args.runs / f"{variant.name}-{method}"
            row = {"variant": variant.name, "method": method, "encoder": args.encoder, **run_scan(variant, method, args.encoder, run)}
            if "error" not in row:
                metrics = json.loads((run / "eval.json").read_text())
                report = json.loads((run / "report.json").read_text())
                stages = {s["name"].strip(): round(s["seconds"] / 60, 2) for s in report.get("stages", [])}
                embed = next((v for k, v in stages.items() if k.startswith("embed")), None)
                total = sum(stages.values())
                row.update({
                    "samples": metrics["samples"], "poisons": metrics["poisons"], "flagged": metrics["flagged"],
                    "precision_at_k": metrics["precision_at_k"], "auroc": metrics["auroc"],
                    "precision": metrics["precision"], "recall": metrics["recall"],
                    "stage_minutes": stages, "scan_over_embed": round(total / embed, 1) if embed else None,
                    **localisation(run, variant / "truth.csv"),
                })
            print(json.dumps(row), flush=True)
            with args.json.open("a") as handle:
                handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
