"""The trigger zoo: poisoned datasets drawn from seeded distributions of trigger designs and conditions.

    python bench/zoo.py list  [--split dev|test] [--condition NAME ...]
    python bench/zoo.py build SEED_NAME ...                  # e.g. identical-1pct/13
    nice -n 5 python bench/zoo.py run --split test [--condition NAME ...] [--limit N]
    python bench/zoo.py table [--split test]                 # markdown for bench/RESULTS.md

A zoo dataset is named `<condition>/<seed>`. The seed picks the trigger family (seed mod 10, over
the nine generated families of `ssl_guard.attacks.families` plus the published HTBA set), the
trigger's own seed, its width (8-25% of the short side), opacity (half opaque, half alpha
0.6-0.9), the JPEG quality (75-95), the target class and the poison positions. The condition fixes
the rest (base data, rate, jitter, photo sizes, number of triggers). The `opaque-*` conditions
follow the protocol the issue gives for its hidden cases: opaque copies, 0.14-0.25 of the side,
JPEG q95 (the same draws, with the width mapped into that range).

Seeds are split by decade: seeds 0-9, 20-29, 40-49, ... are the **dev** split (look and tune);
10-19, 30-39, ... are the **test** split (run and report only). Every family is in both.

Layout: bench/work/zoo/<condition>/<seed>/{shards/, truth.csv, spec.json}; scans go to
bench/work/zoo-runs/<condition>-<seed>[-tag]/ and one JSON line per scan to
bench/work/zoo-results.jsonl. --data is the folder holding imagenette/{train,val} (224 px photos), cifar10-wds/ (CIFAR-10 shards)
and triggers-htba/ (the published HTBA triggers).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shlex
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from ssl_guard.attacks.families import FAMILIES, copy_trigger, make_trigger, paste_trigger  # noqa: E402
from ssl_guard.attacks.truth import TruthRow, write_truth  # noqa: E402

ZOO_FAMILIES = FAMILIES + ("htba",)
WORK = ROOT / "work"

# condition -> base data, rate per trigger, jitter, photo sizes, triggers at once
CONDITIONS: dict[str, dict] = {
    "identical-1pct": {"base": "imagenette-val", "rate": 0.01, "jitter": False, "sizes": "fixed", "triggers": 1},
    "identical-5pct": {"base": "imagenette-val", "rate": 0.05, "jitter": False, "sizes": "fixed", "triggers": 1},
    "identical-0.5pct-train": {"base": "imagenette-train", "rate": 0.005, "jitter": False, "sizes": "fixed", "triggers": 1},
    "jitter-1pct": {"base": "imagenette-val", "rate": 0.01, "jitter": True, "sizes": "fixed", "triggers": 1},
    "realsize-1pct": {"base": "imagenette-val", "rate": 0.01, "jitter": False, "sizes": "real", "triggers": 1},
    "multi3-1pct": {"base": "imagenette-val", "rate": 0.01, "jitter": False, "sizes": "fixed", "triggers": 3},
    "cifar-test-1pct": {"base": "cifar-test", "rate": 0.01, "jitter": False, "sizes": "fixed", "triggers": 1},
    "cifar-train-0.1pct": {"base": "cifar-train", "rate": 0.001, "jitter": False, "sizes": "fixed", "triggers": 1},
    # the hidden cases' protocol as issue 14 states it: opaque, 0.14-0.25 of the side, JPEG q95, 1-2%
    "opaque-1pct": {"base": "imagenette-val", "rate": 0.01, "jitter": False, "sizes": "fixed", "triggers": 1, "alpha": 1.0, "width": (0.14, 0.25), "quality": 95},
    "opaque-2pct": {"base": "imagenette-val", "rate": 0.02, "jitter": False, "sizes": "fixed", "triggers": 1, "alpha": 1.0, "width": (0.14, 0.25), "quality": 95},
    "clean": {"base": "imagenette-val", "rate": 0.0, "jitter": False, "sizes": "fixed", "triggers": 0},
    "clean-neardup": {"base": "imagenette-val", "rate": 0.0, "jitter": False, "sizes": "fixed", "triggers": 0, "near_duplicates": 0.02},
    # CIFAR-10 test as it is: it holds natural near-duplicates (15 near-copies of one white car)
    "clean-cifar-test": {"base": "cifar-test", "rate": 0.0, "jitter": False, "sizes": "fixed", "triggers": 0},
}
# the variants the issue lists for its hidden cases (CIFAR-10 test and train, real photo sizes,
# jittered copies, three triggers at once), each under that same protocol
CONDITIONS.update({
    f"opaque-{name}": {**CONDITIONS[name], "alpha": 1.0, "width": (0.14, 0.25), "quality": 95}
    for name in ("jitter-1pct", "realsize-1pct", "multi3-1pct", "cifar-test-1pct", "cifar-train-0.1pct")
})


def split_of(seed: int) -> str:
    return "dev" if (seed // 10) % 2 == 0 else "test"


@dataclass
class Spec:
    condition: str
    seed: int
    split: str
    base: str
    rate: float
    jitter: bool
    sizes: str
    families: list[str]
    trigger_seeds: list[int]
    width: float
    alpha: float
    quality: int
    near_duplicates: float = 0.0


def make_spec(condition: str, seed: int) -> Spec:
    c = CONDITIONS[condition]
    rng = np.random.default_rng([seed, 7919])
    families = [ZOO_FAMILIES[(seed + 3 * t) % len(ZOO_FAMILIES)] for t in range(c["triggers"])]
    alpha = 1.0 if rng.uniform() < 0.5 else float(rng.uniform(0.6, 0.9))
    width = float(rng.uniform(0.08, 0.25))
    quality = int(rng.integers(75, 96))
    # a condition may fix the opacity and quality or narrow the width; the draws above are made
    # all the same, so the other conditions' specs do not change
    if "width" in c:
        low, high = c["width"]
        width = low + (width - 0.08) / (0.25 - 0.08) * (high - low)
    alpha = float(c.get("alpha", alpha))
    quality = int(c.get("quality", quality))
    return Spec(
        condition, seed, split_of(seed), c["base"], c["rate"], c["jitter"], c["sizes"], families,
        [int(seed * 31 + t) for t in range(c["triggers"])], width, alpha, quality, c.get("near_duplicates", 0.0),
    )


# ---------------------------------------------------------------------------------------------
# Base data


def load_base(name: str, data: Path) -> list[tuple[Image.Image, str]]:
    """(photo, class label) pairs of a base dataset, in a fixed order."""
    if name.startswith("imagenette"):
        folder = data / "imagenette" / ("val" if name.endswith("val") else "train")
        return [(Image.open(p).convert("RGB"), p.parent.name) for p in sorted(folder.glob("*/*.JPEG"))]
    split = "test" if name.endswith("test") else "train"
    out = []
    for shard in sorted((data / "cifar10-wds").glob(f"cifar10-{split}-*.tar.gz")):
        with tarfile.open(shard) as tar:
            members = {}
            for m in tar.getmembers():
                if m.isfile():
                    key, ext = m.name.rsplit(".", 1)
                    members.setdefault(key, {})[ext] = tar.extractfile(m).read()
            for key in sorted(members):
                item = members[key]
                if "jpg" in item:
                    out.append((Image.open(io.BytesIO(item["jpg"])).convert("RGB"), item.get("cls", b"").decode().strip()))
    return out


def photo_pool(base: str, data: Path, count: int = 200) -> list[Image.Image]:
    """Natural photos from a *different* dataset than the base, for the `photo` family."""
    other = "cifar-test" if base.startswith("imagenette") else "imagenette-val"
    items = load_base(other, data)
    idx = np.random.default_rng(1).choice(len(items), min(count, len(items)), replace=False)
    return [items[i][0] for i in idx]


def htba(data: Path, seed: int) -> Image.Image:
    files = sorted((data / "triggers-htba").glob("trigger_*.png"))
    return Image.open(files[seed % len(files)]).convert("RGB")


# ---------------------------------------------------------------------------------------------
# Building one dataset


def build(spec: Spec, data: Path, folder: Path) -> Path:
    if (folder / "truth.csv").is_file():
        return folder
    from webdataset import TarWriter

    items = load_base(spec.base, data)
    rng = np.random.default_rng([spec.seed, 104729])
    labels = np.array([lab for _, lab in items])
    classes = sorted(set(labels.tolist()))
    n = len(items)
    triggers, targets, chosen = [], [], {}
    pool = photo_pool(spec.base, data) if "photo" in spec.families else []
    target_classes = rng.choice(classes, len(spec.families), replace=False) if spec.families else []
    for t, (family, tseed) in enumerate(zip(spec.families, spec.trigger_seeds)):
        trig = htba(data, tseed) if family == "htba" else make_trigger(family, tseed, 64, pool)
        triggers.append((f"{family}-{tseed}", trig))
        members = np.nonzero(labels == target_classes[t])[0]
        count = max(1, int(round(spec.rate * n)))
        for i in rng.choice(members, min(count, len(members)), replace=False):
            chosen[int(i)] = t
        targets.append(str(target_classes[t]))
    dup_of = {}
    if spec.near_duplicates:
        # natural near-duplicates: re-crops / rescales of other photos of the set
        src = rng.choice(n, int(spec.near_duplicates * n), replace=False)
        dst = rng.choice(np.setdiff1d(np.arange(n), src), len(src), replace=False)
        dup_of = {int(d): int(s) for s, d in zip(src, dst)}
    import shutil

    staging = folder / f".partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "shards").mkdir(parents=True)
    rows, writer, order = [], None, rng.permutation(n)
    for rank, i in enumerate(order):
        if rank % 1000 == 0:
            if writer:
                writer.close()
            shard = f"zoo-{rank // 1000:06d}.tar"
            writer = TarWriter(str(staging / "shards" / shard))
        photo, label = items[i]
        if i in dup_of:
            src = items[dup_of[i]][0]
            w, h = src.size
            m = int(min(w, h) * rng.uniform(0.0, 0.08))
            photo = src.crop((m, m, w - m, h - m)).resize((w, h), Image.BILINEAR)
        if spec.sizes == "real":
            short = int(rng.integers(256, 513))
            aspect = float(rng.uniform(0.75, 4 / 3))
            w, h = (int(short * aspect), short) if aspect >= 1 else (short, int(short / aspect))
            photo = photo.resize((w, h), Image.BICUBIC)
        box, trigger_name, attack, target = None, "", "", ""
        if i in chosen:
            t = chosen[i]
            w, h = photo.size
            width = spec.width * (384 if spec.sizes == "real" else min(w, h))
            copy, mask = copy_trigger(triggers[t][1], width, rng, spec.jitter)
            cw, ch = copy.size
            x0 = int(rng.integers(int(0.25 * w), max(int(0.25 * w) + 1, min(int(0.75 * w), w - cw) + 1)))
            y0 = int(rng.integers(int(0.25 * h), max(int(0.25 * h) + 1, min(int(0.75 * h), h - ch) + 1)))
            photo = paste_trigger(photo, copy, mask, (x0, y0), spec.alpha)
            box, trigger_name, attack, target = (x0, y0, x0 + cw, y0 + ch), triggers[t][0], "patch", targets[t]
        buffer = io.BytesIO()
        photo.save(buffer, "JPEG", quality=spec.quality)
        key = f"s{i:06d}"
        writer.write({"__key__": key, "jpg": buffer.getvalue()})
        rows.append(TruthRow(shard, key, i in chosen, attack, target, box, label, trigger_name))
    writer.close()
    write_truth(staging / "truth.csv", rows)
    (staging / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
    shutil.rmtree(folder / "shards", ignore_errors=True)  # an unfinished earlier build (no truth.csv)
    for name in ("shards", "spec.json", "truth.csv"):  # truth last: its presence marks a finished build
        os.replace(staging / name, folder / name)
    staging.rmdir()
    return folder


# ---------------------------------------------------------------------------------------------
# Running and tabulating


def seeds_for(split: str, count: int) -> list[int]:
    out, s = [], 0
    while len(out) < count:
        if split_of(s) == split:
            out.append(s)
        s += 1
    return out


def run_one(spec: Spec, data: Path, extra: list[str], tag: str) -> dict:
    folder = build(spec, data, WORK / "zoo" / spec.condition / str(spec.seed))
    run = WORK / "zoo-runs" / f"{spec.condition}-{spec.seed}{'-' + tag if tag else ''}"
    row = scan_and_measure(f"{spec.condition}/{spec.seed}", folder, run, extra)
    return row if "error" in row else {"name": row.pop("name"), "tag": tag, **asdict(spec), **row}


def scan_and_measure(name: str, folder: Path, run: Path, extra: list[str]) -> dict:
    """Scan `folder/shards` into `run` (unless its report.json exists) and measure it against
    `folder/truth.csv`: metrics, CPU and wall minutes, stage seconds; {"name", "error"} on a crash."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    clock = time.perf_counter()
    if not (run / "report.json").is_file():  # the last output a scan writes
        if run.exists():
            import shutil

            shutil.rmtree(run)
        proc = subprocess.run([sys.executable, "-m", "ssl_guard", "scan", str(folder / "shards"), "--out", str(run), "--quiet", *extra], capture_output=True, text=True)
        if proc.returncode not in (0, 1):
            return {"name": name, "error": proc.stderr.strip().splitlines()[-1:]}
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    from ssl_guard.evaluation import evaluate_run

    metrics = evaluate_run(run, folder / "truth.csv")
    report = json.loads((run / "report.json").read_text())
    stages = {s["name"].strip(): s["seconds"] for s in report.get("stages", [])}
    row = {
        "name": name,
        "samples": metrics["samples"], "poisons": metrics["poisons"], "flagged": metrics["flagged"],
        "precision": metrics["precision"], "recall": metrics["recall"], "auroc": metrics["auroc"],
        "recall_by_trigger": metrics["recall_by_trigger"],
        "cpu_min": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / 60,
        "wall_min": (time.perf_counter() - clock) / 60,
        "stages": stages,
    }
    row["scan_over_embed"] = scan_over_embed(row)
    return row


def success(row: dict) -> bool:
    if row.get("poisons", 0) == 0:
        return row.get("flagged", 1) <= 0.001 * row.get("samples", 1)
    per = row.get("recall_by_trigger") or {}
    return (row.get("precision") or 0) >= 0.95 and (row.get("recall") or 0) >= 0.95 and all(v >= 0.95 for v in per.values())


def scan_over_embed(row: dict) -> float | None:
    """(embed + semantic + detector stages) / embed, from a row's recorded stage seconds (rows
    written before 2026-12-02 (c) summed the detectors' indented steps twice in their own field)."""
    st = row.get("stages") or {}
    if not st.get("embed"):
        return row.get("scan_over_embed")
    return sum(v for k, v in st.items() if k in ("embed", "semantic") or k.startswith("detect-")) / st["embed"]


def table(rows: list[dict]) -> str:
    rows = [{**r, "scan_over_embed": scan_over_embed(r)} for r in rows]
    lines = ["| condition | datasets | success (P,R ≥ 0.95) | median AUROC | median P | median R | CPU min (median) | scan/embed |", "|---|---|---|---|---|---|---|---|"]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["condition"], []).append(r)
    for cond, rs in sorted(by.items()):
        ok = sum(success(r) for r in rs)
        med = lambda k: np.nanmedian([r.get(k) if r.get(k) is not None else np.nan for r in rs])  # noqa: E731
        lines.append(f"| {cond} | {len(rs)} | {ok}/{len(rs)} ({ok / len(rs):.0%}) | {med('auroc'):.3f} | {med('precision'):.3f} | {med('recall'):.3f} | {med('cpu_min'):.2f} | {med('scan_over_embed'):.2f} |")
    lines += ["", "| family | datasets | success | median AUROC | failures |", "|---|---|---|---|---|"]
    fam: dict[str, list[dict]] = {}
    for r in rows:
        for f in r["families"] or ["(clean)"]:
            fam.setdefault(f, []).append(r)
    for f, rs in sorted(fam.items()):
        ok = sum(success(r) for r in rs)
        fails = ", ".join(f"{r['name']} (P {r['precision'] or 0:.2f} R {r['recall'] or 0:.2f}, w {r['width']:.2f}, a {r['alpha']:.2f})" for r in rs if not success(r))
        lines.append(f"| {f} | {len(rs)} | {ok}/{len(rs)} | {np.nanmedian([r['auroc'] if r['auroc'] is not None else np.nan for r in rs]):.3f} | {fails or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["list", "build", "run", "table"])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--condition", action="append")
    parser.add_argument("--per-condition", type=int, default=10)
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data")
    parser.add_argument("--tag", default="")
    parser.add_argument("--results", type=Path, default=WORK / "zoo-results.jsonl")
    parser.add_argument("--scan", default="", help="extra `ssl-guard scan` options, one string")
    args = parser.parse_args(argv)
    conditions = args.condition or list(CONDITIONS)
    if args.command in ("list", "run"):
        specs = []
        for c in conditions:
            specs += [make_spec(c, s) for s in seeds_for(args.split, args.per_condition)]
        if args.names:
            specs = [make_spec(*n.split("/")[:1], int(n.split("/")[1])) for n in args.names]
        for spec in specs:
            if args.command == "list":
                print(json.dumps(asdict(spec)))
                continue
            row = run_one(spec, args.data, shlex.split(args.scan), args.tag)
            with open(args.results, "a") as out:
                out.write(json.dumps(row) + "\n")
            print(json.dumps({k: row.get(k) for k in ("name", "families", "width", "alpha", "quality", "poisons", "flagged", "precision", "recall", "auroc", "cpu_min", "error")}), flush=True)
    elif args.command == "build":
        for n in args.names:
            cond, seed = n.split("/")
            print(build(make_spec(cond, int(seed)), args.data, WORK / "zoo" / cond / seed))
    else:
        rows = [json.loads(line) for line in open(args.results)]
        rows = [r for r in rows if "error" not in r and r["split"] == args.split and (r.get("tag", "") == args.tag)]
        latest: dict[str, dict] = {}
        for r in rows:  # the last row of each dataset, with the CPU time of the run that scanned it
            cpu = max(r.get("cpu_min") or 0.0, (latest.get(r["name"]) or {}).get("cpu_min") or 0.0)
            latest[r["name"]] = {**r, "cpu_min": cpu}
        print(table(list(latest.values())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
