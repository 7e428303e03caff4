"""Train from WebDataset shards on several processes, with quarantined samples dropped before decoding.

    torchrun --standalone --nproc_per_node=2 examples/guard_webdataset_torchrun.py "shards/shard-{000000..000009}.tar" \
        --quarantine runs/scan-1/quarantine.json

Each rank reads its own shards (`split_by_node`), each DataLoader worker its own share of those
(`split_by_worker`); `guard.keep` runs in `.select()` before `.decode()`, so a quarantined image is
never even decoded. The guard's counters include the workers' drops, and `stats(all_ranks=True)`
sums them over ranks. Runs on CPU with the gloo backend, or single-process without torchrun.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", help="shard URLs, e.g. 'shards/shard-{000000..000009}.tar'")
    parser.add_argument("--quarantine", type=Path, required=True, help="quarantine.json or a scan's run folder")
    parser.add_argument("--root", type=Path, default=None, help="the scanned shard folder, if the data moved since the scan")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keys-out", type=Path, default=None, help="write the keys each rank trained on to this folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"rank {os.environ.get('RANK', '0')} %(name)s: %(message)s")

    import numpy as np
    import torch
    import torch.distributed as dist
    import webdataset as wds

    from ssl_guard.guard import SampleGuard

    distributed = "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0

    guard = SampleGuard(args.quarantine, root=args.root)

    def transform(image):  # PIL image -> (3, R, R) float in [0, 1]
        pixels = np.asarray(image.convert("RGB").resize((args.resolution, args.resolution)), dtype=np.float32) / 255.0
        return torch.from_numpy(pixels).permute(2, 0, 1)

    dataset = (
        wds.WebDataset(args.shards, shardshuffle=False, nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker, empty_check=False)
        .select(guard.keep)  # on raw samples: the quarantined ones are never decoded
        .decode("pil")
        .to_tuple("__key__", "png;jpg;jpeg", "cls")
        .map_tuple(lambda key: key, transform, lambda label: int(label))
    )
    loader = torch.utils.data.DataLoader(dataset.batched(args.batch_size), batch_size=None, num_workers=args.workers)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * args.resolution**2, 10))
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    keys: list[str] = []
    # ranks hold different numbers of samples once poisons are dropped; join() keeps DDP in step
    with model.join() if distributed else contextlib.nullcontext():
        for batch_keys, images, labels in loader:  # images: (B, 3, R, R) float in [0, 1]
            loss = torch.nn.functional.cross_entropy(model(images), torch.as_tensor(labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            keys += list(batch_keys)

    stats = guard.stats(all_ranks=distributed)
    if args.keys_out is not None:
        args.keys_out.mkdir(parents=True, exist_ok=True)
        (args.keys_out / f"rank{rank}.json").write_text(json.dumps(sorted(keys)))
    if rank == 0:
        print(json.dumps({"seen": stats.seen, "dropped": stats.dropped, "kept": stats.kept}))
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
