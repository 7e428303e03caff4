"""The global-trigger zoo: blended and CTRL-style poisoned datasets drawn from seeded distributions.

    python bench/zoo_global.py list  [--split dev|test] [--condition NAME ...]
    python bench/zoo_global.py build NAME ...                 # e.g. blend-1pct-png/13
    nice -n 5 python bench/zoo_global.py run [NAME ...] [--split test] [--condition C ...] [--scan "--method additive"]
    python bench/zoo_global.py table [--split test] [--tag T] # markdown for bench/RESULTS.md

A dataset is `<condition>/<seed>`. The condition fixes the base data (Imagenette val resized to 64 px,
Imagenette val at its 224 px, or CIFAR-10 test at 32 px), the trigger kind (blend or CTRL), the rate
and the storage (PNG; JPEG q95, q90 or q75 with 4:4:4 chroma; JPEG q90 with 4:2:0 chroma). The seed draws the
rest through `ssl_guard.attacks.global_families`: for blends the family (seed mod 4: noise,
stripes, sig, photo), the pattern and alpha in 0.05-0.2; for CTRL the window (8/16/32), magnitude
(30-100) and coefficient spots; and for both the target class and the poisoned images. Every image
of a dataset, clean or not, goes through the same storage.

Seeds are split by decade as in bench/zoo.py: 0-9, 20-29, ... dev (look and tune); 10-19, 30-39,
... test (run and report only). The `benign` conditions poison nothing and give 5% of the images a
shared colour cast or vignette, as one camera would: flagging them is a false positive.

Layout: bench/work/zoo-global/<condition>/<seed>/{shards/, truth.csv, spec.json}; scans in
bench/work/zoo-global-runs/<condition>-<seed>[-tag]/; one JSON line per scan in
bench/work/zoo-global-results.jsonl.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from zoo import load_base, scan_and_measure, scan_over_embed, seeds_for, split_of  # noqa: E402

from ssl_guard.attacks.global_families import BLEND_FAMILIES, make_global_trigger  # noqa: E402
from ssl_guard.attacks.truth import TruthRow, write_truth  # noqa: E402

WORK = ROOT / "work"
STORAGE = {"png": None, "q95": (95, 0), "q90": (90, 0), "q75": (75, 0), "q90s": (90, 2)}  # (quality, PIL subsampling: 0 = 4:4:4, 2 = 4:2:0)


def _conditions() -> dict[str, dict]:
    out = {}
    for kind in ("blend", "ctrl"):
        for store in STORAGE:
            out[f"{kind}-1pct-{store}"] = {"base": "imagenette-val", "side": 64, "kind": kind, "rate": 0.01, "storage": store}
        for rate, tag in ((0.005, "0.5pct"), (0.05, "5pct")):
            out[f"{kind}-{tag}-png"] = {"base": "imagenette-val", "side": 64, "kind": kind, "rate": rate, "storage": "png"}
        out[f"cifar-{kind}-1pct-png"] = {"base": "cifar-test", "side": 32, "kind": kind, "rate": 0.01, "storage": "png"}
    out["blend224-1pct-q95"] = {"base": "imagenette-val", "side": 224, "kind": "blend", "rate": 0.01, "storage": "q95"}
    for store in ("png", "q90", "q75"):
        out[f"clean-{store}"] = {"base": "imagenette-val", "side": 64, "kind": "clean", "rate": 0.0, "storage": store}
    out["benign-cast-png"] = {"base": "imagenette-val", "side": 64, "kind": "cast", "rate": 0.0, "storage": "png"}
    out["benign-vignette-png"] = {"base": "imagenette-val", "side": 64, "kind": "vignette", "rate": 0.0, "storage": "png"}
    return out


CONDITIONS = _conditions()


@dataclass
class GlobalSpec:
    condition: str
    seed: int
    split: str
    base: str
    side: int
    kind: str
    rate: float
    storage: str
    family: str
    trigger: dict


def make_spec(condition: str, seed: int) -> GlobalSpec:
    c = CONDITIONS[condition]
    family = c["kind"] if c["kind"] != "blend" else BLEND_FAMILIES[seed % len(BLEND_FAMILIES)]
    trigger = {}
    if c["kind"] in ("blend", "ctrl"):
        t = make_global_trigger(family, seed, pool=[np.zeros((8, 8, 3), np.uint8)] * 200)  # same draws as the build (its pool also holds 200 photos)
        trigger = {"alpha": t.alpha, **t.params}
    return GlobalSpec(condition, seed, split_of(seed), c["base"], c["side"], c["kind"], c["rate"], c["storage"], family, trigger)


def _store(rgb: np.ndarray, storage: str) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if STORAGE[storage] is None:
        Image.fromarray(rgb).save(buffer, "PNG")
        return buffer.getvalue(), "png"
    quality, subsampling = STORAGE[storage]
    Image.fromarray(rgb).save(buffer, "JPEG", quality=quality, subsampling=subsampling)
    return buffer.getvalue(), "jpg"


def _benign(rgb: np.ndarray, kind: str, rng: np.random.Generator, strength: float) -> np.ndarray:
    """One camera's shared global effect: a colour cast (a constant shift per channel) or a vignette
    (a radial gain falling to `1 - strength` at the corners)."""
    x = rgb.astype(np.float64)
    if kind == "cast":
        x = x + strength
    else:
        h, w = x.shape[:2]
        yy, xx = np.mgrid[0:h, 0:w]
        r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2)) / np.sqrt(2)
        x = x * (1 - strength * r**2)[..., None]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def build(spec: GlobalSpec, data: Path, folder: Path) -> Path:
    if (folder / "truth.csv").is_file():
        return folder
    from webdataset import TarWriter

    items = load_base(spec.base, data)
    rng = np.random.default_rng([spec.seed, 15485863])
    labels = np.array([lab for _, lab in items])
    n = len(items)
    chosen: set[int] = set()
    target = ""
    trigger = None
    if spec.kind in ("blend", "ctrl"):
        pool = []
        if spec.family == "photo":  # a natural photo from another dataset
            other = load_base("cifar-test" if spec.base.startswith("imagenette") else "imagenette-val", data)
            pool = [np.asarray(other[i][0]) for i in np.random.default_rng(3).choice(len(other), 200, replace=False)]
        trigger = make_global_trigger(spec.family, spec.seed, pool=pool)
        target = str(rng.choice(sorted(set(labels.tolist()))))
        members = np.nonzero(labels == target)[0]
        count = max(1, int(round(spec.rate * n)))
        chosen = set(rng.choice(members, min(count, len(members)), replace=False).tolist())
    elif spec.kind in ("cast", "vignette"):
        chosen = set(rng.choice(n, int(0.05 * n), replace=False).tolist())
        cast = rng.uniform(-12, 12, 3) if spec.kind == "cast" else None
        strength = cast if cast is not None else float(rng.uniform(0.3, 0.6))
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
        photo = items[i][0]
        if photo.size != (spec.side, spec.side):
            photo = photo.resize((spec.side, spec.side), Image.BICUBIC)
        rgb = np.asarray(photo)
        poisoned = trigger is not None and i in chosen
        if poisoned:
            rgb = trigger.apply(rgb)
        elif i in chosen:
            rgb = _benign(rgb, spec.kind, rng, strength)
        payload, ext = _store(rgb, spec.storage)
        key = f"s{i:06d}"
        writer.write({"__key__": key, ext: payload})
        rows.append(TruthRow(shard, key, poisoned, spec.kind if poisoned else "", target if poisoned else "", None, items[i][1], trigger.name if poisoned else ""))
    writer.close()
    write_truth(staging / "truth.csv", rows)
    (staging / "spec.json").write_text(json.dumps(asdict(spec), indent=1))
    shutil.rmtree(folder / "shards", ignore_errors=True)
    for name in ("shards", "spec.json", "truth.csv"):  # truth last: it marks a finished build
        os.replace(staging / name, folder / name)
    staging.rmdir()
    return folder


def run_one(spec: GlobalSpec, data: Path, extra: list[str], tag: str) -> dict:
    folder = build(spec, data, WORK / "zoo-global" / spec.condition / str(spec.seed))
    run = WORK / "zoo-global-runs" / f"{spec.condition}-{spec.seed}{'-' + tag if tag else ''}"
    row = scan_and_measure(f"{spec.condition}/{spec.seed}", folder, run, extra)
    return row if "error" in row else {"name": row.pop("name"), "tag": tag, **asdict(spec), **row}


def success(row: dict) -> bool:
    """The issue's bar: P and R >= 0.9 and AUROC >= 0.95 with poisons; <= 0.1% flagged without."""
    if row.get("poisons", 0) == 0:
        return row.get("flagged", 1) <= 0.001 * row.get("samples", 1)
    return (row.get("precision") or 0) >= 0.9 and (row.get("recall") or 0) >= 0.9 and (row.get("auroc") or 0) >= 0.95


def table(rows: list[dict]) -> str:
    rows = [{**r, "scan_over_embed": scan_over_embed(r)} for r in rows]
    def med(rs, k):
        values = [r.get(k) for r in rs if r.get(k) is not None]
        return float(np.median(values)) if values else float("nan")

    lines = ["| condition | datasets | success (P, R >= 0.9, AUROC >= 0.95) | median AUROC | median P | median R | flagged (clean) | CPU min | scan/embed |", "|---|---|---|---|---|---|---|---|---|"]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["condition"], []).append(r)
    for cond, rs in sorted(by.items()):
        ok = sum(success(r) for r in rs)
        clean = "-" if any(r["poisons"] for r in rs) else "/".join(str(r["flagged"]) for r in rs)
        lines.append(f"| {cond} | {len(rs)} | {ok}/{len(rs)} | {med(rs, 'auroc'):.3f} | {med(rs, 'precision'):.3f} | {med(rs, 'recall'):.3f} | {clean} | {med(rs, 'cpu_min'):.2f} | {med(rs, 'scan_over_embed'):.2f} |")
    lines += ["", "| dataset | family | trigger | P | R | AUROC |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["name"]):
        if not r["poisons"]:
            continue
        t = r["trigger"]
        what = f"alpha {t['alpha']:.3f}" if r["kind"] == "blend" else f"w {t['window']}, m {t['magnitude']:.0f}, {t['where']}"
        lines.append(f"| {r['name']} | {r['family']} | {what} | {r['precision'] or 0:.3f} | {r['recall'] or 0:.3f} | {r['auroc'] if r['auroc'] is not None else float('nan'):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["list", "build", "run", "table"])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--split", default="dev", choices=["dev", "test"])
    parser.add_argument("--condition", action="append")
    parser.add_argument("--per-condition", type=int, default=4)
    parser.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data")
    parser.add_argument("--tag", default="")
    parser.add_argument("--results", type=Path, default=WORK / "zoo-global-results.jsonl")
    parser.add_argument("--scan", default="", help="extra `ssl-guard scan` options, one string")
    args = parser.parse_args(argv)
    if args.command in ("list", "run"):
        if args.names:
            specs = [make_spec(n.split("/")[0], int(n.split("/")[1])) for n in args.names]
        else:
            specs = [make_spec(c, s) for c in (args.condition or list(CONDITIONS)) for s in seeds_for(args.split, args.per_condition)]
        for spec in specs:
            if args.command == "list":
                print(json.dumps(asdict(spec)))
                continue
            row = run_one(spec, args.data, shlex.split(args.scan), args.tag)
            with open(args.results, "a") as out:
                out.write(json.dumps(row) + "\n")
            print(json.dumps({k: row.get(k) for k in ("name", "family", "trigger", "poisons", "flagged", "precision", "recall", "auroc", "cpu_min", "error")}), flush=True)
    elif args.command == "build":
        for n in args.names:
            cond, seed = n.split("/")
            print(build(make_spec(cond, int(seed)), args.data, WORK / "zoo-global" / cond / seed))
    else:
        rows = [json.loads(line) for line in open(args.results)]
        latest = {r["name"]: r for r in rows if "error" not in r and r["split"] == args.split and r.get("tag", "") == args.tag}
        print(table(list(latest.values())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
