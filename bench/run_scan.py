"""Run `ssl-guard scan` on a benchmark variant, score it against its truth, print a RESULTS row.

    python bench/run_scan.py bench/work/imagenette-patch-1pct --method mine [--resolution 64]
    python bench/run_scan.py DATA/imagenette/train --name imagenette-clean --method mine

A variant folder holds `shards/` and `truth.csv` (bench/make_benchmark.py); any other path is scanned
as clean data (no truth: only the number flagged is reported). The scan runs in a child process
under `/usr/bin/time -v`, so the row carries its CPU time (user + system) and peak RSS as well as
its wall time; per-stage times come from the run folder. The run goes to bench/work/runs/<name>.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--name", default=None)
    parser.add_argument("--method", default="mine")
    parser.add_argument("--encoder", default="auto")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--tag", default="", help="appended to the run folder's name")
    parser.add_argument("--runs", type=Path, default=ROOT / "work" / "runs")
    args = parser.parse_args()

    variant = args.data
    shards = variant / "shards" if (variant / "shards").is_dir() else variant
    truth = variant / "truth.csv" if (variant / "truth.csv").is_file() else None
    name = args.name or variant.name
    run = args.runs / (f"{name}-{args.method}" + (f"-{args.resolution}px" if args.resolution else "") + (f"-{args.tag}" if args.tag else ""))
    command = [sys.executable, "-m", "ssl_guard", "scan", str(shards), "--out", str(run), "--method", args.method, "--encoder", args.encoder, "--quiet"]
    if args.resolution:
        command += ["--resolution", str(args.resolution)]
    timed = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if timed.returncode != 0:
        print(timed.stdout, timed.stderr, file=sys.stderr)
        return timed.returncode
    usage = _time_v(timed.stderr)
    report = json.loads((run / "report.json").read_text())
    stages = {s["name"].strip(): s["seconds"] for s in report["stages"]}
    row = {
        "date": date.today().isoformat(),
        "data": name,
        "method": args.method,
        "resolution": report["resolution"],
        "samples": report["n_samples"],
        "flagged": report["n_flagged"],
        "wall_min": usage["wall"] / 60,
        "cpu_min": (usage["user"] + usage["system"]) / 60,
        "peak_rss_mib": usage["rss_kib"] / 1024,
        "embed_s": stages.get("embed"),
        "detect_s": sum(v for k, v in stages.items() if k.startswith("detect-")),
    }
    if row["embed_s"]:
        row["scan_over_embed"] = (row["embed_s"] + row["detect_s"] + stages.get("semantic", 0.0)) / row["embed_s"]
    if truth is not None:
        from ssl_guard.evaluation import evaluate_run

        metrics = evaluate_run(run, truth)
        row.update({
            "poisons": metrics["poisons"],
            "precision": metrics["precision"],
            "recall": metrics["recall"],
            "auroc": metrics["auroc"],
            "p_at_poisons": metrics["precision_at_k"].get("poisons"),
        })
    print(json.dumps(row))
    print(_markdown(row))
    return 0


def _time_v(text: str) -> dict[str, float]:
    def grab(label: str) -> str:
        match = re.search(rf"{re.escape(label)}: (.+)", text)
        if not match:
            raise SystemExit(f"/usr/bin/time did not report {label!r}")
        return match.group(1).strip()

    wall = grab("Elapsed (wall clock) time (h:mm:ss or m:ss)")
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return {"wall": seconds, "user": float(grab("User time (seconds)")), "system": float(grab("System time (seconds)")), "rss_kib": float(grab("Maximum resident set size (kbytes)"))}


def _markdown(row: dict) -> str:
    def f(key: str, fmt: str = "{:.3f}") -> str:
        value = row.get(key)
        return "–" if value is None else fmt.format(value)

    return (
        f"| {row['data']} | {row['method']} | {row['resolution']} | {row['samples']} | {row.get('poisons', 0)} | {row['flagged']} "
        f"| {f('precision')} | {f('recall')} | {f('p_at_poisons')} | {f('auroc')} | {f('wall_min', '{:.1f}')} | {f('cpu_min', '{:.1f}')} "
        f"| {f('embed_s', '{:.0f}')} | {f('detect_s', '{:.0f}')} | {f('scan_over_embed', '{:.1f}')} | {f('peak_rss_mib', '{:.0f}')} |"
    )


if __name__ == "__main__":
    sys.exit(main())
