"""Bootstrap throughput: source images per second of `ssl_guard.encoders.bootstrap`, end to end.

Each setting runs the real training loop (decoding in DataLoader workers, shuffle buffer, two
batched SimCLR views per image, forward, backward, SGD step, one checkpoint) for one epoch over a
seeded random subset of `--steps` × `--batch-size` images, and reports images / loop seconds. The
loop time includes waiting for decoded images, so it is what a user sees, not the network alone.
The machine's load average is printed with each number: on shared cores it moves the result, so
the CPU time per image (this process and its decoding workers) is reported too.

Run (Imagenette train photos, 224 px JPEGs):
    nice -n 10 .venv/bin/python bench/bench_bootstrap.py
    nice -n 10 .venv/bin/python bench/bench_bootstrap.py --resolutions 64 --widths 32 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette" / "train"


def image_files(root: Path, count: int, seed: int) -> list[str]:
    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if len(files) < count:
        raise SystemExit(f"{root} has {len(files)} images, fewer than the {count} asked")
    return random.Random(seed).sample(files, count)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run(files: list[str], resolution: int, width: int, arch: str, batch_size: int, workers: int) -> dict:
    import torch

    from ssl_guard.encoders.bootstrap import BootstrapConfig, bootstrap, training_threads

    config = BootstrapConfig(epochs=1, batch_size=batch_size, resolution=resolution, width=width, arch=arch, workers=workers)
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds()
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        bootstrap(files, Path(tmp) / "run", config, device="cpu", progress=False)
        total = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_before
        state = json.loads((Path(tmp) / "run" / "checkpoint" / "state.json").read_text())
    images = state["step"] * batch_size
    return {
        "resolution": resolution,
        "arch": arch,
        "width": width,
        "batch_size": batch_size,
        "workers": workers,
        "torch_threads": training_threads(workers) or torch.get_num_threads(),
        "steps": state["step"],
        "loop_seconds": round(state["seconds"], 1),
        "call_seconds": round(total, 1),
        "images_per_second": round(images / state["seconds"], 1),
        # CPU time of this process and its (finished) decoding workers, for the whole call: less
        # sensitive than wall time to what else runs on the machine
        "cpu_ms_per_image": round(1000 * cpu / images, 1),
        "epoch_minutes_9469": round(9469 / (images / state["seconds"]) / 60, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def decode_only(files: list[str], resolution: int) -> dict:
    """The decoding floor: the same images through `stream_batches` in this process, no training."""
    import math

    from ssl_guard.data import resolve_sources, stream_batches
    from ssl_guard.encoders.bootstrap import DECODE_SCALE

    side = int(math.ceil(resolution * DECODE_SCALE))
    sources = resolve_sources(files)
    cpu_before, started = cpu_seconds(), time.perf_counter()
    count = sum(len(batch.ids) for batch in stream_batches(sources, side, batch_size=64, workers=0))
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_before
    return {"decode_only": True, "resolution": resolution, "decoded_side": side, "images": count, "images_per_second": round(count / wall, 1), "cpu_ms_per_image": round(1000 * cpu / count, 1), "load": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 96])
    parser.add_argument("--widths", type=int, nargs="+", default=[32])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads via OMP_NUM_THREADS (0 = bootstrap's own choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decode-only", action="store_true", help="measure decoding alone (one process), not training")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no data at {args.data}")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read by torch at import; bootstrap then keeps it
    import torch
    print(f"# {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, {args.data}", flush=True)
    files = image_files(args.data, args.steps * args.batch_size, args.seed)
    if args.decode_only:
        for resolution in args.resolutions:
            print(json.dumps(decode_only(files, resolution)), flush=True)
        return
    for resolution in args.resolutions:
        for width in args.widths:
            print(json.dumps(run(files, resolution, width, args.arch, args.batch_size, args.workers)), flush=True)


if __name__ == "__main__":
    main()
