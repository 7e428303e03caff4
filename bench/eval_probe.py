"""Measure the backdoor's effect on an encoder with the triggered Imagenette validation splits.

Usage:
    nice -n 10 python bench/eval_probe.py DATA/imagenette --encoder SPEC [--work bench/work]
        [--splits imagenette-val-patch imagenette-val-blend imagenette-val-frequency] [--probe knn|linear]
        [--json out.json]

The probe (ssl_guard.probe) is fitted on the clean train photos DATA/train, its clean accuracy and
the baseline "clean non-target -> target" share are measured on DATA/val, and each triggered split
(built by bench/make_benchmark.py) gives the attack success rate: the share of its non-target
images that the probe sends to the target class read from the split's truth.csv. Train and clean
val are embedded once. Prints one markdown table row per split.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_SPLITS = ("imagenette-val-patch", "imagenette-val-blend", "imagenette-val-frequency")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="Imagenette folder with train/ and val/")
    parser.add_argument("--encoder", required=True, help="encoder spec: hub:org/name, a folder, or random:resnet18?resolution=64")
    parser.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / "work")
    parser.add_argument("--splits", nargs="*", default=list(DEFAULT_SPLITS), help="triggered validation variants in WORK")
    parser.add_argument("--probe", default="knn", choices=("knn", "linear"))
    parser.add_argument("--k", type=int, default=20, help="neighbours of the k-NN probe")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from ssl_guard.attacks import read_truth
    from ssl_guard.encoders import load_encoder
    from ssl_guard.probe import backdoor_effect, embed_split

    started = time.perf_counter()
    encoder = load_encoder(args.encoder, args.device)
    train = embed_split(encoder, [str(args.data / "train")], workers=args.workers)
    clean = embed_split(encoder, [str(args.data / "val")], workers=args.workers)
    print(f"encoder {args.encoder} at {encoder.config.resolution} px; embedded {len(train.labels)} train and {len(clean.labels)} val images", flush=True)
    print("| triggered split | probe | clean accuracy | attack success (triggered non-target -> target) | clean non-target -> target |")
    print("|---|---|---|---|---|")
    results = []
    for name in args.splits:
        folder = args.work / name
        targets = {row.target for row in read_truth(folder / "truth.csv") if row.poisoned}
        if len(targets) != 1:
            print(f"error: {folder / 'truth.csv'} names {len(targets)} targets", file=sys.stderr)
            return 2
        triggered = embed_split(encoder, [str(folder / "shards")], workers=args.workers)
        effect = backdoor_effect(train, clean, triggered, targets.pop(), probe=args.probe, k=args.k)
        results.append({"split": name, "encoder": args.encoder, **effect.as_dict()})
        print(
            f"| {name} | {args.probe}{args.k if args.probe == 'knn' else ''} | {effect.clean_accuracy:.1%} | "
            f"{effect.attack_success_rate:.1%} ({effect.target_false_positives}/{effect.non_target}) | {effect.clean_to_target_rate:.1%} |",
            flush=True,
        )
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
