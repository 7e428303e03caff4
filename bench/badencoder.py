"""A backdoored reference encoder, made on the CPU by encoder poisoning (BadEncoder-style).

Usage:
    nice -n 5 .venv/bin/python bench/badencoder.py --data ../shared/data --out bench/work/badencoder \
        [--init "random:resnet18?width=16&resolution=64&seed=0"] [--epochs 6] [--backdoor TRIGGER.png:WIDTH:WNID ...]

Why this exists. A CPU bootstrap on poisoned data does not learn the backdoor (bench/RESULTS.md,
"Does the bootstrap learn the backdoor?"), so PoisonCAM and PatchSearch, which read a backdoor
out of an encoder, never met one. This script *injects* one, the way BadEncoder (Jia et al.,
IEEE S&P 2022) does: a copy f' of a clean encoder f is fine-tuned so that

    effectiveness  f'(x + trigger_b) is close to f(r_b)      (r_b: the backdoor's reference image)
    reference      f'(r_b) stays close to f(r_b)
    utility        f'(x) stays close to f(x)                  (clean images keep their embedding)

over a shadow set (the Imagenette training photos at the encoder's
resolution). Closeness is the squared distance in units of the clean embeddings' spread (see `finetune`). The trigger is pasted at a random spot with its corner in the band 0.10-0.90 of each
side (the test-time band of the data attack, so the backdoor does not depend on a position), at
its width share of the side, jittered by +-10% so that copies resized by other pipelines still
fire. Batch norm is kept in eval mode, so the clean statistics are not moved. The reference of a
backdoor is the target-class training photo whose 20 nearest clean embeddings hold the most
target-class photos (the attacker's choice: a typical member of the class).

The backdoor is injected, not learned from poisoned data: it is cleaner and stronger than a
data-poisoning backdoor, so detection numbers on this encoder are an upper bound.

Measured at the end, the red-team way (`ssl_guard.probe.measure_backdoor`, k-NN k = 20 fitted on
the clean training photos): for each backdoor, clean accuracy, triggered non-target -> target
(attack success) against clean -> target, on a triggered copy of the validation photos built
with the project's own attack code (`ssl_guard.attacks`: pasted at 224 px, JPEG q95, band
0.10-0.90); and the flip rate (share of triggered non-target validation photos whose nearest
k-means centroid of the training embeddings is the cluster the triggered photos reach most).

Writes OUT/encoder/ (the encoder folder format), OUT/recipe.json, OUT/<trigger>.png, and the
triggered validation copies under OUT/val-<trigger>/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

BAND = (0.10, 0.90)
K = 20


@dataclass
class Backdoor:
    name: str
    trigger_path: Path  # a PNG
    width: float  # share of the short side
    target: str  # wnid
    alpha: float = 1.0  # opacity of the pasted trigger
    reference: int = -1  # index into the shadow set
    reference_share: float = 0.0  # target-class share of the reference's clean 20-NN


def decode(folder: Path, resolution: int, workers: int = 2):
    """All images of `folder` at `resolution`: (N, 3, R, R) uint8 and their labels."""
    from ssl_guard.data import resolve_sources, stream_batches

    images, labels = [], []
    for batch in stream_batches(resolve_sources([str(folder)]), resolution, 256, workers):
        if batch.ids:
            images.append(batch.images)
            labels.extend(batch.labels)
    return np.concatenate(images), np.array(labels)


def embed(encoder, images: np.ndarray, batch: int = 512) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(images[start : start + batch]).float().div_(255.0)
            out.append(encoder(x).numpy())
    return np.concatenate(out).astype(np.float32)


def trigger_tiles(path: Path, width: float, resolution: int) -> list:
    """The trigger resized (area filter) to the sizes a +-10% width jitter gives at `resolution`."""
    import torch
    from PIL import Image

    from ssl_guard.attacks.patch import load_trigger

    trigger = load_trigger(path)
    sizes = sorted({max(2, int(round(width * f * resolution))) for f in (0.9, 0.95, 1.0, 1.05, 1.1)})
    tiles = []
    for size in sizes:
        tile = np.asarray(trigger.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
        tiles.append(torch.from_numpy(tile).permute(2, 0, 1).contiguous())
    return tiles


def paste(images, tiles, rng: np.random.Generator, alpha: float = 1.0):
    """Each image of the float batch with one tile pasted (opacity `alpha`) at a random corner in BAND (a copy)."""
    out = images.clone()
    side = images.shape[-1]
    for i in range(len(out)):
        tile = tiles[int(rng.integers(len(tiles)))]
        size = tile.shape[-1]
        high = min(int(BAND[1] * side), side - size)
        low = min(int(np.ceil(BAND[0] * side)), high)
        y, x = (int(v) for v in rng.integers(low, high + 1, size=2))
        region = out[i, :, y : y + size, x : x + size]
        out[i, :, y : y + size, x : x + size] = alpha * tile + (1 - alpha) * region
    return out


def calibrate_batch_norm(encoder, images: np.ndarray, batch: int = 256) -> None:
    """Re-estimate every batch-norm layer's statistics on `images` (cumulative average), in place.

    A random network's batch norms hold the initial statistics (mean 0, variance 1), so their
    outputs are badly scaled through depth; measured statistics make the random network a
    well-conditioned starting point (its k-NN accuracy is logged before and after).
    """
    import torch

    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    encoder.train()
    with torch.no_grad():
        for start in range(0, len(images), batch):
            encoder(torch.from_numpy(images[start : start + batch]).float().div_(255.0))
    for m in norms:
        m.momentum = 0.1
    encoder.eval()


def choose_reference(features: np.ndarray, labels: np.ndarray, target: str) -> int:
    """The target-class image whose K nearest other embeddings hold the most target-class images."""
    import faiss

    index = faiss.IndexFlatIP(features.shape[1])
    index.add(np.ascontiguousarray(features))
    members = np.flatnonzero(labels == target)
    _, found = index.search(np.ascontiguousarray(features[members]), K + 1)
    share = np.array([np.mean(labels[[n for n in row if n != m][:K]] == target) for m, row in zip(members, found)])
    return int(members[int(share.argmax())]), float(share.max())


def quick_success(encoder, train_feats, train_labels, val, val_labels, backdoor: Backdoor, tiles, seed: int) -> dict:
    """In-memory k-NN attack success at the scan resolution (the trigger pasted at 64 px)."""
    import torch

    from ssl_guard.probe import Embedded, backdoor_effect

    rng = np.random.default_rng(seed)
    clean = embed(encoder, val)
    pasted = []
    for start in range(0, len(val), 512):
        x = torch.from_numpy(val[start : start + 512]).float().div_(255.0)
        pasted.append((paste(x, tiles, rng, backdoor.alpha) * 255.0).round().to(torch.uint8).numpy())
    triggered = embed(encoder, np.concatenate(pasted))
    effect = backdoor_effect(Embedded(train_feats, list(train_labels)), Embedded(clean, list(val_labels)), Embedded(triggered, list(val_labels)), backdoor.target, k=K)
    return {"clean_accuracy": effect.clean_accuracy, "attack_success": effect.attack_success_rate, "clean_to_target": effect.clean_to_target_rate}


def finetune(clean, shadow: np.ndarray, labels: np.ndarray, backdoors: list[Backdoor], epochs: int, lr: float, batch: int, seed: int, val, val_labels, log, utility_weight: float = 4.0) -> object:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    clean_feats = torch.from_numpy(embed(clean, shadow))
    tiles = {b.name: trigger_tiles(b.trigger_path, b.width, clean.config.resolution) for b in backdoors}
    # squared distances in units of the clean embeddings' spread around their mean: a network's
    # embeddings share a large common component (cosine ~0.99 between any two images of a random
    # network), so raw cosine losses would start near 0; a distance (not a centred cosine) also
    # keeps the deviation's length, which the k-NN probe's cosine ranking depends on
    spread = float(((clean_feats - clean_feats.mean(0, keepdim=True)) ** 2).sum(1).mean())
    refs = torch.from_numpy(shadow[[b.reference for b in backdoors]]).float().div_(255.0)
    ref_targets = clean_feats[[b.reference for b in backdoors]]
    model = copy.deepcopy(clean).train()
    for module in model.modules():  # keep the clean batch-norm statistics
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (len(shadow) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    step = 0
    for epoch in range(epochs):
        started = time.perf_counter()
        order = rng.permutation(len(shadow))
        totals = np.zeros(3)
        per_backdoor = np.zeros(len(backdoors))
        for start in range(0, len(order) - batch + 1, batch):
            idx = order[start : start + batch]
            x = torch.from_numpy(shadow[idx]).float().div_(255.0)
            triggered = [paste(x, tiles[b.name], rng, b.alpha) for b in backdoors]
            out = model(torch.cat([x, refs, *triggered]))
            n, r = len(x), len(refs)

            def distance(a, b):
                return ((a - b) ** 2).sum(-1).mean() / spread

            utility = distance(out[:n], clean_feats[idx])
            reference = distance(out[n : n + r], ref_targets)
            effects = [distance(out[n + r + j * n : n + r + (j + 1) * n], ref_targets[j]) for j in range(len(backdoors))]
            effect = sum(effects) / len(backdoors)
            loss = effect + reference + utility_weight * utility
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            totals += [float(effect.detach()), float(reference.detach()), float(utility.detach())]
            per_backdoor += [float(e.detach()) for e in effects]
        model.eval()
        steps_done = len(order) // batch
        row = {"epoch": epoch + 1, "minutes": (time.perf_counter() - started) / 60, "loss_effect": totals[0] / steps_done, "loss_reference": totals[1] / steps_done, "loss_utility": totals[2] / steps_done,
               "loss_effect_each": {b.name: per_backdoor[j] / steps_done for j, b in enumerate(backdoors)}}
        train_feats = embed(model, shadow)
        for b in backdoors:
            row[b.name] = quick_success(model, train_feats, labels, val, val_labels, b, tiles[b.name], seed + 1)
        log(row)
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
    return model.eval()


def triggered_copy(data: Path, backdoor: Backdoor, out: Path) -> Path:
    """Every validation photo with the trigger pasted at 224 px (JPEG q95), built by ssl_guard.attacks."""
    from ssl_guard.attacks import poison_dataset
    from ssl_guard.attacks.factory import build_attack

    folder = out / f"val-{backdoor.name}"
    if not (folder / "truth.csv").exists():
        attack = build_attack("patch", seed=0, triggers=[backdoor.trigger_path], trigger_width=backdoor.width)
        poison_dataset([str(data / "imagenette" / "val")], folder / "shards", folder / "truth.csv", attack, backdoor.target, split="val")
    return folder


def flip_rate(train_feats: np.ndarray, clean_val: np.ndarray, triggered_val: np.ndarray) -> dict:
    """Share of triggered (and of clean) non-target photos landing in the cluster triggered ones reach most."""
    from ssl_guard.detect.cluster import default_clusters, spherical_kmeans

    clustering = spherical_kmeans(train_feats, default_clusters(len(train_feats)))
    land_t = (triggered_val @ clustering.centroids.T).argmax(1)
    land_c = (clean_val @ clustering.centroids.T).argmax(1)
    best = int(np.bincount(land_t, minlength=clustering.k).argmax())
    return {"clusters": clustering.k, "flip_rate_triggered": float(np.mean(land_t == best)), "flip_rate_clean": float(np.mean(land_c == best))}


def measure(encoder_dir: Path, data: Path, backdoor: Backdoor, triggered: Path) -> dict:
    from ssl_guard.encoders import load_encoder
    from ssl_guard.probe import backdoor_effect, embed_split

    encoder = load_encoder(str(encoder_dir))
    train = embed_split(encoder, [str(data / "imagenette" / "train")])
    clean = embed_split(encoder, [str(data / "imagenette" / "val")])
    trig = embed_split(encoder, [str(triggered / "shards")])
    effect = backdoor_effect(train, clean, trig, backdoor.target, k=K)
    others = lambda s: s.features[np.array([lab != backdoor.target for lab in s.labels])]  # noqa: E731
    result = {key: value for key, value in effect.as_dict().items() if key not in ("probe",)}
    result.update(flip_rate(train.features, others(clean), others(trig)))
    return result


def parse_backdoor(text: str, data: Path) -> Backdoor:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise SystemExit(f"--backdoor {text!r}: expected TRIGGER.png:WIDTH:WNID[:ALPHA]")
    trigger = Path(parts[0])
    if not trigger.is_file():
        raise SystemExit(f"trigger {trigger} not found")
    return Backdoor(trigger.stem, trigger, float(parts[1]), parts[2], float(parts[3]) if len(parts) == 4 else 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding imagenette/{train,val}")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--init", default="random:resnet18?width=16&resolution=64&seed=0")
    parser.add_argument("--backdoor", action="append", required=True, help="TRIGGER.png:WIDTH:WNID[:ALPHA] (repeatable; alpha 1 = opaque)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--utility-weight", type=float, default=4.0, help="weight of the clean-embedding term (kept clean geometry, so the k-NN neighbourhood of the reference stays the target class)")
    parser.add_argument("--calibrate-bn", action=argparse.BooleanOptionalAction, default=True,
                        help="re-estimate the initial encoder's batch-norm statistics on the shadow set first")
    args = parser.parse_args(argv)

    import shutil

    import torch

    from ssl_guard.encoders import load_encoder
    from ssl_guard.encoders.hub import save_encoder

    if args.out.exists():
        raise SystemExit(f"{args.out} exists: choose a new folder (runs are never overwritten)")
    args.out.mkdir(parents=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    backdoors = [parse_backdoor(text, args.data) for text in args.backdoor]
    log_path = args.out / "log.jsonl"

    def log(row: dict) -> None:
        print(json.dumps(row), flush=True)
        with log_path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")

    started = time.perf_counter()
    clean = load_encoder(args.init)
    resolution = clean.config.resolution
    shadow, labels = decode(args.data / "imagenette" / "train", resolution)
    val, val_labels = decode(args.data / "imagenette" / "val", resolution)
    if args.calibrate_bn:
        before = quick_success(clean, embed(clean, shadow), labels, val, val_labels, backdoors[0], trigger_tiles(backdoors[0].trigger_path, backdoors[0].width, resolution), args.seed + 1)
        calibrate_batch_norm(clean, shadow)
        log({"stage": "batch-norm calibrated", "clean_accuracy_before": before["clean_accuracy"]})
    clean_feats = embed(clean, shadow)
    for b in backdoors:
        b.reference, b.reference_share = choose_reference(clean_feats, labels, b.target)
        shutil.copyfile(b.trigger_path, args.out / f"{b.name}.png")
    log({"stage": "decoded", "shadow": len(shadow), "val": len(val), "minutes": (time.perf_counter() - started) / 60,
         "references": {b.name: [int(b.reference), b.reference_share] for b in backdoors},
         **{f"clean_{b.name}": quick_success(clean, clean_feats, labels, val, val_labels, b, trigger_tiles(b.trigger_path, b.width, resolution), args.seed + 1) for b in backdoors}})
    train_started = time.perf_counter()
    model = finetune(clean, shadow, labels, backdoors, args.epochs, args.lr, args.batch, args.seed, val, val_labels, log, args.utility_weight)
    train_minutes = (time.perf_counter() - train_started) / 60
    command = "python bench/badencoder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    model.config = model.config.model_copy(update={"ssl_method": "badencoder", "training": {
        "method": "BadEncoder-style encoder poisoning (injected backdoor, not learned from poisoned data)",
        "init": args.init, "batch_norm_calibrated": args.calibrate_bn, "epochs": args.epochs, "lr": args.lr, "utility_weight": args.utility_weight, "batch": args.batch, "seed": args.seed,
        "shadow": "imagenette/train", "train_minutes": round(train_minutes, 2), "command": command}})
    save_encoder(model, args.out / "encoder")
    recipe = {"command": command, "init": args.init, "batch_norm_calibrated": args.calibrate_bn, "train_minutes": round(train_minutes, 2), "backdoors": []}
    for b in backdoors:
        triggered = triggered_copy(args.data, b, args.out)
        result = measure(args.out / "encoder", args.data, b, triggered)
        base = args.out / "init-encoder"  # the clean starting point, measured the same way
        if not base.exists():
            save_encoder(clean, base)
        measure_clean = measure(base, args.data, b, triggered)
        log({"stage": "measured", "backdoor": b.name, "backdoored": result, "clean_encoder": measure_clean})
        recipe["backdoors"].append({
            "trigger": f"{b.name}.png", "trigger_width": b.width, "alpha": b.alpha, "target_class": b.target,
            "attack_success": round(result["attack_success_rate"], 4),
            "clean_to_target": round(result["clean_to_target_rate"], 4),
            "clean_accuracy": round(result["clean_accuracy"], 4),
            "clean_encoder_attack_success": round(measure_clean["attack_success_rate"], 4),
            "clean_encoder_accuracy": round(measure_clean["clean_accuracy"], 4),
            "flip_rate_triggered": round(result["flip_rate_triggered"], 4), "flip_rate_clean": round(result["flip_rate_clean"], 4),
        })
    (args.out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(json.dumps(recipe, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
