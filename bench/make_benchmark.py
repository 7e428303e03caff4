"""Build the standard poisoning benchmark from Imagenette (the anchors' protocol, scaled down).

Usage:
    nice -n 10 python bench/make_benchmark.py DATA/imagenette [--work bench/work] [--only NAME ...]

DATA is the Imagenette folder holding train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (224x224 photos);
the HTBA triggers are read from DATA/../triggers-htba unless --triggers says otherwise.

Layout written (each variant is skipped when its truth.csv already exists; delete the folder to
rebuild it):

    WORK/<variant>/shards/poisoned-NNNNNN.tar   what a scan reads (1,000 samples per shard, JPEG q95)
    WORK/<variant>/truth.csv                    ground truth, outside shards/ (ssl_guard.attacks.truth)
    WORK/<variant>/poison.json                  how the variant was made and what it holds

    variant                      split  attack                                          poisons
    imagenette-patch-0.5pct      train  trigger_10, width 0.19 of the side (~12 px at 64)  47 / 9,469
    imagenette-patch-1pct        train  same                                               95
    imagenette-patch-5pct        train  same                                              473
    imagenette-patch-10pct       train  same (nearly all of the target class; a lever tried
                                        for a backdoored reference encoder, RESULTS.md)     947
    imagenette-blend-1pct        train  seeded coarse noise, alpha 0.1                      95
    imagenette-frequency-1pct    train  CTRL chroma DCT, 112 px blocks, (15,15)+(31,31), 300  95
    imagenette-val-patch         val    trigger_10 at 0.19, corner in 0.10-0.90           all 3,925
    imagenette-val-blend         val    the blend above                                   all
    imagenette-val-frequency     val    the frequency trigger above                       all

The target class is n03394916 (French horn) for every variant, the seed 0. Scans run at 64 px:
the triggers are applied to the 224 px photos, so a scan sees them resized, never pixel-exact.
The frequency trigger uses 112 px blocks on 224 px photos, which is CTRL's 32-pixel block layout
at the scan's 64 px: CTRL's own 32 px blocks at 224 px are averaged away by the resize (the
perturbation's RMS falls from 6.1 to 0.75 grey levels at 64 px). Magnitude 300 in 112 px blocks
moves the chroma by about as much as CTRL's 100 in 32 px blocks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TARGET = "n03394916"
SEED = 0
TRIGGER_WIDTH = 0.19
BLEND_ALPHA = 0.1
FREQUENCY = {"magnitude": 300.0, "window": 112, "coefficients": "15,15 31,31"}

# name -> (split, attack kind, rate or None, attack options)
VARIANTS = {
    "imagenette-patch-0.5pct": ("train", "patch", 0.005, {"trigger_width": TRIGGER_WIDTH}),
    "imagenette-patch-1pct": ("train", "patch", 0.01, {"trigger_width": TRIGGER_WIDTH}),
    "imagenette-patch-5pct": ("train", "patch", 0.05, {"trigger_width": TRIGGER_WIDTH}),
    "imagenette-patch-10pct": ("train", "patch", 0.10, {"trigger_width": TRIGGER_WIDTH}),
    "imagenette-blend-1pct": ("train", "blend", 0.01, {"alpha": BLEND_ALPHA}),
    "imagenette-frequency-1pct": ("train", "frequency", 0.01, FREQUENCY),
    "imagenette-val-patch": ("val", "patch", None, {"trigger_width": TRIGGER_WIDTH}),
    "imagenette-val-blend": ("val", "blend", None, {"alpha": BLEND_ALPHA}),
    "imagenette-val-frequency": ("val", "frequency", None, FREQUENCY),
}


def build(name: str, data: Path, triggers: Path, work: Path) -> Path:
    """Build one variant into WORK/<name>; returns its folder."""
    from ssl_guard.attacks import poison_dataset
    from ssl_guard.attacks.factory import build_attack

    split, kind, rate, options = VARIANTS[name]
    folder = work / name
    if (folder / "truth.csv").exists():
        print(f"{name}: exists, kept ({folder})", flush=True)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    trigger_files = [triggers / "trigger_10.png"] if kind == "patch" else []
    attack = build_attack(kind, seed=SEED, triggers=trigger_files, **options)
    summary = poison_dataset(
        [str(data / split)],
        folder / "shards",
        folder / "truth.csv",
        attack,
        target_class=TARGET,
        rate=rate,
        split=split,
        seed=SEED,
    )
    record = {
        "variant": name,
        "source": str((data / split).resolve()),
        "split": split,
        "attack": kind,
        "options": {**options, **({"trigger": "trigger_10"} if kind == "patch" else {})},
        "rate": rate,
        "target": TARGET,
        "seed": SEED,
        "samples": summary.samples,
        "poisoned": summary.poisoned,
        "shards": summary.shards,
        "mean_psnr_db": summary.mean_psnr,
        "skipped": len(summary.skipped),
        "seconds": round(summary.seconds, 1),
    }
    (folder / "poison.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{name}: {summary.samples} samples, {summary.poisoned} poisoned, PSNR {summary.mean_psnr:.1f} dB, {summary.seconds:.0f} s", flush=True)
    return folder


def measure(name: str, data: Path, work: Path, resolution: int = 64, clean_sample: int = 200) -> dict:
    """How much of each variant's perturbation a scan at `resolution` sees.

    RMS pixel difference (grey levels) between a source photo and its shard copy, both resized as a
    scan resizes them (`ssl_guard.data.to_square_array`), over the poisons and over a sample of
    clean images (whose only difference is the JPEG re-encoding: the noise floor).
    """
    import numpy as np

    from ssl_guard.attacks import read_truth
    from ssl_guard.attacks.dataset import list_samples, output_keys
    from ssl_guard.data import decode_rgb, iter_raw_samples, resolve_sources, to_square_array

    split = VARIANTS[name][0]
    sources = resolve_sources([str(data / split)])
    samples, _ = list_samples(sources)
    path_of = {key: Path(sources.root) / s.id.source for key, s in zip(output_keys(samples, sources), samples)}
    truth = read_truth(work / name / "truth.csv")
    poisoned = {r.key for r in truth if r.poisoned}
    rng = np.random.default_rng(0)
    clean_keys = [r.key for r in truth if not r.poisoned]
    clean = set(rng.choice(clean_keys, size=min(clean_sample, len(clean_keys)), replace=False)) if clean_keys else set()
    rms: dict[str, list[float]] = {"poisoned": [], "clean": []}
    for unit in resolve_sources([str(work / name / "shards")]).units:
        for raw in iter_raw_samples(unit):
            group = "poisoned" if raw.id.key in poisoned else "clean" if raw.id.key in clean else None
            if group is None:
                continue
            copy = to_square_array(decode_rgb(raw.data), resolution).astype(np.float64)
            with open(path_of[raw.id.key], "rb") as handle:
                original = to_square_array(decode_rgb(handle.read()), resolution).astype(np.float64)
            rms[group].append(float(np.sqrt(np.mean((copy - original) ** 2))))
    return {name: float(np.mean(values)) if values else None for name, values in rms.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="Imagenette folder with train/ and val/")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work", help="output folder (default bench/work)")
    parser.add_argument("--triggers", type=Path, default=None, help="HTBA trigger folder (default DATA/../triggers-htba)")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="build only these variants")
    parser.add_argument("--measure", type=int, metavar="R", default=None, help="after building, print how much of each perturbation a scan at R px sees")
    args = parser.parse_args(argv)
    triggers = args.triggers or args.data / ".." / "triggers-htba"
    for needed in (args.data / "train", args.data / "val", triggers / "trigger_10.png"):
        if not needed.exists():
            print(f"error: {needed} does not exist", file=sys.stderr)
            return 2
    for name in args.only or VARIANTS:
        folder = build(name, args.data, triggers, args.work)
        print(f"  shards: {folder / 'shards'}\n  truth:  {folder / 'truth.csv'}", flush=True)
    if args.measure:
        print(f"| variant | poisons | PSNR of a poison at 224 px | RMS change at {args.measure} px, poisons | RMS change at {args.measure} px, clean (re-encoding) |")
        print("|---|---|---|---|---|")
        for name in args.only or VARIANTS:
            record = json.loads((args.work / name / "poison.json").read_text())
            seen = measure(name, args.data, args.work, args.measure)
            clean = "n/a" if seen["clean"] is None else f"{seen['clean']:.2f}"
            print(f"| {name} | {record['poisoned']} | {record['mean_psnr_db']:.1f} dB | {seen['poisoned']:.2f} | {clean} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
