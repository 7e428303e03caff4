"""Does ssl-guard's SimCLR bootstrap learn the backdoor? Measured after every epoch of a real run.

Usage:
    nice -n 10 .venv/bin/python bench/bootstrap_backdoor.py bench/work/imagenette-patch-5pct --epochs 2
        [--val DATA/imagenette/val] [--triggered bench/work/imagenette-val-patch]
        [--out bench/work/runs/bootstrap-backdoor-imagenette-patch-5pct-e2  (encoder in OUT/encoder)] [--measure-init]
        [--json results.json] [--width 32] [--resolution 64] [--crop-scale-min 0.2]
        [--jitter-strength 0.5] [--temperature 0.2] [--measure-every 1] [--max-minutes M]

VARIANT is a poisoned training set built by bench/make_benchmark.py (`shards/` + `truth.csv`). The
bootstrap (`ssl_guard.encoders.bootstrap`, 64 px, width 32 and its other defaults unless the
options say otherwise) runs for `--epochs`
epochs with its cosine schedule planned for exactly that many; after every `--measure-every`-th epoch's
checkpoint is committed (and after the last), training pauses, the encoder is loaded back from that checkpoint and measured:

(a) clustering of the poisons: every training image is embedded; for each poison, its 10 nearest
    neighbours (cosine, exact faiss search, itself excluded) — the share of poisons whose
    neighbours are mostly (> 5 of 10) poisons, and the mean share of poisons among them (base rate
    = the poison rate). The same mean share is reported for the clean images of the target class,
    which share the poisons' content but not the trigger.
(b) the poison cluster, what PoisonCAM and PatchSearch read: spherical k-means of the training
    embeddings into `default_clusters(N)` clusters (as a scan would); the cluster holding the most
    poisons, its purity (poisons / members) and the share of all poisons in it; then the flip rate:
    the share of non-target validation images whose nearest centroid is that cluster, triggered
    against clean. A trigger that drags clean images into the poison cluster is what the flip test
    detects.
(c) the attack's effect with the k-NN probe (`ssl_guard.probe.backdoor_effect`, k = 20): fitted on
    the embeddings of the variant's clean training images (the poisons left out, so the probe sees
    clean labelled data, as in bench/eval_probe.py), clean accuracy and "non-target -> target" on
    the clean validation photos, attack success on the triggered validation split.

Measurement time is not counted in the bootstrap's minutes per epoch (its timer stops before the
checkpoint is written). Results are appended to OUT/backdoor.json (rewritten atomically after each
epoch) and printed as markdown rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
DEFAULT_VAL = BENCH.parents[1] / "shared" / "data" / "imagenette" / "val"
NEIGHBOURS = 10


def embed_ids(encoder, spec: str, batch_size: int = 256, workers: int = 2):
    """Embed every image of `spec`: ((N, D) float32 L2-normalised, [(source, key)] ids, [label])."""
    import torch

    from ssl_guard.data import resolve_sources, stream_batches

    sources = resolve_sources([spec])
    features, ids, labels = [], [], []
    with torch.no_grad():
        for batch in stream_batches(sources, encoder.config.resolution, batch_size, workers):
            if not batch.ids:
                continue
            images = torch.from_numpy(batch.images).to(encoder.device).float().div_(255.0)
            features.append(encoder(images).float().cpu().numpy())
            ids.extend((i.source, i.key) for i in batch.ids)
            labels.extend(batch.labels)
    return np.concatenate(features).astype(np.float32), ids, labels


def poison_cluster_stats(train: np.ndarray, poisoned: np.ndarray, clean_val: np.ndarray, triggered_val: np.ndarray) -> dict:
    """The training cluster with the most poisons, and how many validation images land in it.

    `train` (N, D) L2-normalised with `poisoned` (N,) bool; `clean_val` and `triggered_val` are the
    (M, D) embeddings of the non-target validation images, clean and with the trigger.
    """
    from ssl_guard.detect.cluster import default_clusters, spherical_kmeans

    clustering = spherical_kmeans(train, default_clusters(len(train)))
    poisons_per_cluster = np.bincount(clustering.assignments[poisoned], minlength=clustering.k)
    best = int(poisons_per_cluster.argmax())

    def landing(features: np.ndarray) -> float:
        return float(np.mean((features @ clustering.centroids.T).argmax(axis=1) == best))

    return {
        "clusters": clustering.k,
        "poison_cluster_purity": float(poisons_per_cluster[best] / clustering.sizes()[best]),
        "poison_cluster_recall": float(poisons_per_cluster[best] / poisoned.sum()),
        "flip_rate_triggered": landing(triggered_val),
        "flip_rate_clean": landing(clean_val),
    }


def neighbour_stats(features: np.ndarray, poisoned: np.ndarray, same_class_clean: np.ndarray, k: int = NEIGHBOURS) -> dict:
    """Poison clustering in `features` (N, D) L2-normalised; `poisoned`, `same_class_clean` (N,) bool."""
    import faiss

    index = faiss.IndexFlatIP(features.shape[1])
    index.add(np.ascontiguousarray(features))
    queries = np.flatnonzero(poisoned | same_class_clean)
    _, found = index.search(np.ascontiguousarray(features[queries]), k + 1)
    shares = np.empty(len(queries))
    for row, (query, neighbours) in enumerate(zip(queries, found)):
        # drop the query itself (not simply the first hit: an exact duplicate may rank first)
        others = [n for n in neighbours if n != query][:k]
        shares[row] = poisoned[others].mean()
    is_poison = poisoned[queries]
    return {
        "poisons": int(poisoned.sum()),
        "base_rate": float(poisoned.mean()),
        "poisons_mostly_poison_nn": float(np.mean(shares[is_poison] > 0.5)),
        "poison_nn_share_of_poisons": float(shares[is_poison].mean()),
        "poison_nn_share_of_target_clean": float(shares[~is_poison].mean()) if (~is_poison).any() else None,
    }


class Measurer:
    """Embeds the three splits with a checkpoint's encoder and computes both measurements."""

    def __init__(self, variant: Path, val: Path, triggered: Path, k: int, workers: int) -> None:
        from ssl_guard.attacks import read_truth

        self.variant, self.val, self.triggered, self.k, self.workers = variant, val, triggered, k, workers
        rows = read_truth(variant / "truth.csv")
        self.poison_ids = {(r.source, r.key) for r in rows if r.poisoned}
        targets = {r.target for r in rows if r.poisoned} | {r.target for r in read_truth(triggered / "truth.csv") if r.poisoned}
        if len(targets) != 1:
            raise SystemExit(f"expected one target class across {variant} and {triggered}, found {sorted(targets)}")
        self.target = targets.pop()

    def __call__(self, encoder) -> dict:
        from ssl_guard.probe import Embedded, backdoor_effect

        started = time.perf_counter()
        train, ids, labels = embed_ids(encoder, str(self.variant / "shards"), workers=self.workers)
        poisoned = np.array([i in self.poison_ids for i in ids])
        if poisoned.sum() != len(self.poison_ids):
            raise SystemExit(f"matched {poisoned.sum()} of {len(self.poison_ids)} poisons in {self.variant}: ids disagree with truth.csv")
        target_clean = np.array([label == self.target for label in labels]) & ~poisoned
        result = neighbour_stats(train, poisoned, target_clean)
        keep = np.flatnonzero(~poisoned)
        probe_train = Embedded(train[keep], [labels[i] for i in keep])
        clean = Embedded(*embed_ids(encoder, str(self.val), workers=self.workers)[::2])
        triggered = Embedded(*embed_ids(encoder, str(self.triggered / "shards"), workers=self.workers)[::2])
        effect = backdoor_effect(probe_train, clean, triggered, self.target, probe="knn", k=self.k)
        others = lambda split: split.features[np.array([label != self.target for label in split.labels])]  # noqa: E731
        result.update(poison_cluster_stats(train, poisoned, others(clean), others(triggered)))
        result.update({f"knn_{key}": value for key, value in effect.as_dict().items() if key not in ("probe", "target")})
        result["measure_minutes"] = (time.perf_counter() - started) / 60
        return result


def load_checkpoint_encoder(checkpoint_dir: Path):
    """The encoder as committed in `checkpoint_dir` (safetensors weights + state.json), in eval mode."""
    from safetensors.torch import load_file

    from ssl_guard.encoders.backbones import Encoder, EncoderConfig
    from ssl_guard.encoders.checkpoint import read_state

    state = read_state(checkpoint_dir)
    encoder = Encoder(EncoderConfig.model_validate(state["encoder_config"]), spec=str(checkpoint_dir))
    tensors = load_file(str(checkpoint_dir / state["weights"]), device="cpu")
    encoder.load_state_dict({k[len("encoder.") :]: v for k, v in tensors.items() if k.startswith("encoder.")}, strict=True)
    return encoder.eval(), state


def row(result: dict) -> str:
    return (
        f"| {result['variant']} | {result['epoch']} / {result['train_minutes']:.1f} | {result['poison_nn_share_of_poisons']:.1%} "
        f"(base {result['base_rate']:.1%}; clean target-class images {result['poison_nn_share_of_target_clean']:.1%}) | "
        f"{result['poison_cluster_purity']:.0%} / {result['poison_cluster_recall']:.0%} | "
        f"{result['flip_rate_triggered']:.1%} / {result['flip_rate_clean']:.1%} | {result['knn_attack_success_rate']:.1%} "
        f"({result['knn_target_false_positives']}/{result['knn_non_target']}) | {result['knn_clean_to_target_rate']:.1%} | "
        f"{result['knn_clean_accuracy']:.1%} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", type=Path, help="poisoned training variant: a folder with shards/ and truth.csv")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--val", type=Path, default=DEFAULT_VAL, help="clean validation photos, a folder per class")
    parser.add_argument("--triggered", type=Path, default=BENCH / "work" / "imagenette-val-patch", help="triggered validation split")
    parser.add_argument("--out", type=Path, default=None, help="run folder (new; the encoder goes to OUT/encoder); default bench/work/runs/bootstrap-backdoor-VARIANT-eEPOCHS")
    parser.add_argument("--k", type=int, default=20, help="neighbours of the k-NN probe")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--measure-init", action="store_true", help="also measure the random initialisation (epoch 0)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--width", type=int, default=32, help="ResNet-18 base width")
    parser.add_argument("--resolution", type=int, default=64, help="training side in pixels")
    parser.add_argument("--crop-scale-min", type=float, default=0.2, help="smallest area fraction of the random crop")
    parser.add_argument("--jitter-strength", type=float, default=0.5, help="colour-jitter strength")
    parser.add_argument("--temperature", type=float, default=0.2, help="NT-Xent temperature")
    parser.add_argument("--measure-every", type=int, default=1, help="measure after every Nth epoch (and the last)")
    parser.add_argument("--max-minutes", type=float, default=None, help="training wall-time budget (the schedule is re-planned to fit)")
    args = parser.parse_args(argv)

    import torch

    import ssl_guard.encoders.bootstrap as bootstrap_module
    from ssl_guard.encoders.backbones import EncoderConfig, build_encoder
    from ssl_guard.encoders.bootstrap import BootstrapConfig, bootstrap
    from ssl_guard.encoders.hub import write_atomic

    variant = args.variant.resolve()
    out = args.out or BENCH / "work" / "runs" / f"bootstrap-backdoor-{variant.name}-e{args.epochs}"
    if out.exists():
        raise SystemExit(f"{out} already exists: choose another --out (earlier results are kept)")
    config = BootstrapConfig(
        epochs=args.epochs,
        resolution=args.resolution,
        width=args.width,
        crop_scale_min=args.crop_scale_min,
        jitter_strength=args.jitter_strength,
        temperature=args.temperature,
        workers=args.workers,
        max_minutes=args.max_minutes,
    )
    measure = Measurer(variant, args.val.resolve(), args.triggered.resolve(), args.k, args.workers)
    results: list[dict] = []
    print(f"{variant.name}: {len(measure.poison_ids)} poisons, target {measure.target}; bootstrap {config.model_dump()}", flush=True)
    print("| variant | epochs / train minutes | poisons among a poison's 10-NN | poison cluster purity / recall | flip rate triggered / clean | 20-NN triggered -> target | clean -> target | 20-NN clean accuracy |")
    print("|---|---|---|---|---|---|---|---|")

    def record(result: dict) -> None:
        results.append(dict(result, variant=variant.name, load_average=os.getloadavg()[0]))
        print(row(results[-1]), f"(measured in {result['measure_minutes']:.1f} min, load {results[-1]['load_average']:.1f})", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "backdoor.json", (json.dumps(results, indent=2) + "\n").encode())

    def measured(encoder, epoch: int, train_minutes: float, loss: float | None) -> None:
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))  # training pins 1 thread; embedding may use all
        try:
            record(dict(measure(encoder), epoch=epoch, train_minutes=train_minutes, loss=loss))
        finally:
            torch.set_num_threads(threads)

    if args.measure_init:
        encoder_config = EncoderConfig(arch=config.arch, width=config.width, stem=config.stem, resolution=config.resolution, ssl_method="simclr")
        measured(build_encoder(encoder_config, seed=config.seed), 0, 0.0, None)

    original_save = bootstrap_module.save_checkpoint

    def save_then_measure(folder, modules, optimizer, state):
        original_save(folder, modules, optimizer, state)
        last = state["epochs_done"] >= state["planned_epochs"]
        if state["epochs_done"] % args.measure_every and not last:
            return
        encoder, committed = load_checkpoint_encoder(Path(folder))
        measured(encoder, committed["epochs_done"], committed["seconds"] / 60, committed["losses"][-1])

    bootstrap_module.save_checkpoint = save_then_measure  # the bootstrap has no per-epoch hook
    started = time.perf_counter()
    try:
        bootstrap([str(variant / "shards")], out / "encoder", config, device="cpu", progress=False)
    finally:
        bootstrap_module.save_checkpoint = original_save
    for previous, current in zip([{"train_minutes": 0.0, "epoch": 0}] + results, results):
        epochs = max(1, current["epoch"] - previous["epoch"])
        current["epoch_minutes"] = (current["train_minutes"] - previous["train_minutes"]) / epochs
    write_atomic(out / "backdoor.json", (json.dumps(results, indent=2) + "\n").encode())
    trained = [r for r in results if r["epoch"] > 0]
    print(f"minutes per epoch: {', '.join(format(r['epoch_minutes'], '.1f') for r in trained)}; total wall {(time.perf_counter() - started) / 60:.1f} min")
    if args.json:
        write_atomic(args.json, (json.dumps(results, indent=2) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
