"""Benchmark of the cluster-activation detectors (PoisonCAM masking and the PatchSearch baseline).

Two settings:

  synthetic  generated scenes with an 8-12 px planted trigger and the test suite's trigger-aware
             encoder (a stand-in for an encoder that carries the backdoor): localization IoU with
             each masking fill, detection quality, and per-stage cost.
  shards     a real poisoned benchmark (bench/work/<variant>/shards + truth.csv) with any encoder
             spec (e.g. random:resnet18?width=16&resolution=64): per-stage cost on the full set and
             precision of the search, which is near chance unless the encoder learned the backdoor.

    nice -n 10 python bench/bench_poisoncam.py synthetic --n 2000 --resolution 64
    nice -n 10 python bench/bench_poisoncam.py shards bench/work/imagenette-patch-5pct \
        --encoder "random:resnet18?width=16&resolution=64"

Prints one JSON line per run (method, fill, seconds per stage, details, quality numbers).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssl_guard.detect.masking import box_iou  # noqa: E402
from ssl_guard.detect.poisoncam import ClusterMaskingConfig, detect_clusters  # noqa: E402


def precision_at(scores: np.ndarray, truth: np.ndarray, ks=(5, 10, 20, 50, 100)) -> dict[str, float]:
    order = np.argsort(-scores, kind="stable")
    return {f"p@{k}": float(truth[order[:k]].mean()) for k in ks if k <= len(scores)}


def summarize(det, truth: np.ndarray, boxes: np.ndarray | None, wall: float) -> dict:
    out = {
        "method": det.method,
        "wall_s": round(wall, 1),
        "seconds": {k: round(v, 2) for k, v in det.seconds.items()},
        "flagged": int(det.flagged.sum()),
        "flagged_poison": int((det.flagged & truth).sum()),
        "poisons": int(truth.sum()),
        "bank": len(det.bank),
        "bank_poison_hosts": int(sum(truth[b.host] for b in det.bank)),
        "warnings": det.warnings,
        **precision_at(det.scores, truth),
    }
    keys = ("clusters", "candidates_scored", "search_rounds", "flip_refs", "windows_px", "stride_px", "windows_per_image",
            "masking_ms_per_image", "localize_ms_per_image", "flip_ms_per_candidate", "forwards", "verification", "calibration")
    out.update({k: det.details.get(k) for k in keys if k in det.details})
    if boxes is not None:
        located = truth & (det.boxes[:, 0] >= 0)
        out["localized_poisons"] = int(located.sum())
        if located.any():
            iou = box_iou(det.boxes[located], boxes[located])
            out["iou_mean"] = round(float(iou.mean()), 3)
            out["iou>0.3"] = round(float((iou > 0.3).mean()), 3)
    return out


def synthetic(args) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "detect"))
    from conftest import TriggerAwareEncoder, embed, make_set, make_trigger  # the test suite's stand-in

    n_poison = max(1, round(args.n * args.rate))
    t0 = time.time()
    data = make_set(n_clean=args.n - n_poison, n_poison=n_poison, classes=8, resolution=args.resolution, seed=args.seed)
    encoder = TriggerAwareEncoder(torch.from_numpy(make_trigger()).float() / 255, args.resolution).eval()
    emb = embed(encoder, data.images)
    print(json.dumps({"setting": "synthetic", "n": len(data.images), "poisons": n_poison, "build_s": round(time.time() - t0, 1)}), flush=True)
    for method, fill in [("poisoncam", "blur"), ("poisoncam", "mean"), ("patchsearch", "blur")][: args.runs]:
        cfg = ClusterMaskingConfig(fill=fill, seed=args.seed)
        t = time.time()
        det = detect_clusters(data.images, emb, encoder, cfg, method=method)
        print(json.dumps({"fill": fill, **summarize(det, data.poisoned, data.boxes, time.time() - t)}), flush=True)


def shards(args) -> None:
    from ssl_guard.data import resolve_sources, stream_batches
    from ssl_guard.encoders import load_encoder

    encoder = load_encoder(args.encoder)
    r = encoder.config.resolution
    folder = Path(args.variant)
    truth_rows = {row["key"]: row for row in csv.DictReader(open(folder / "truth.csv"))}
    t0 = time.time()
    images, keys = [], []
    for batch in stream_batches(resolve_sources([str(folder / "shards")]), r, batch_size=256, workers=1):
        images.append(batch.images)
        keys.extend(i.key for i in batch.ids)
    images = np.concatenate(images)
    images.setflags(write=False)
    decode_s = time.time() - t0
    t0 = time.time()
    with torch.no_grad():
        emb = np.concatenate([encoder(torch.from_numpy(np.array(images[i : i + 256])).float() / 255).numpy() for i in range(0, len(images), 256)]).astype(np.float16)
    embed_s = time.time() - t0
    truth = np.array([truth_rows[k]["poisoned"] == "1" for k in keys])
    boxes = np.full((len(keys), 4), -1)
    print(json.dumps({"setting": "shards", "variant": folder.name, "encoder": args.encoder, "n": len(keys), "poisons": int(truth.sum()),
                      "decode_s": round(decode_s, 1), "embed_s": round(embed_s, 1)}), flush=True)
    for method in args.methods:
        cfg = ClusterMaskingConfig(fill=args.fill, seed=args.seed)
        t = time.time()
        det = detect_clusters(images, emb, encoder, cfg, method=method)
        print(json.dumps(summarize(det, truth, None, time.time() - t)), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="setting", required=True)
    s = sub.add_parser("synthetic")
    s.add_argument("--n", type=int, default=2000)
    s.add_argument("--rate", type=float, default=0.01)
    s.add_argument("--resolution", type=int, default=64)
    s.add_argument("--runs", type=int, default=3, help="poisoncam/blur, poisoncam/mean, patchsearch/blur (first k)")
    s.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("shards")
    b.add_argument("variant", help="bench/work/<variant> with shards/ and truth.csv")
    b.add_argument("--encoder", default="random:resnet18?width=16&resolution=64")
    b.add_argument("--methods", nargs="+", default=["poisoncam", "patchsearch"])
    b.add_argument("--fill", default="blur")
    b.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    synthetic(args) if args.setting == "synthetic" else shards(args)


if __name__ == "__main__":
    main()
