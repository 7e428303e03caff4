"""Train on an image folder with the quarantined samples left out.

    python examples/guard_dataloader.py path/to/images --quarantine runs/scan-1/quarantine.json

`GuardedDataset` wraps torchvision's `ImageFolder`, decides from the file paths alone which
samples to keep, and works unchanged with DataLoader workers and `DistributedSampler`. The loop
below is a stand-in for a real SSL training step; what matters is the dataset line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="an ImageFolder (one sub-folder per class)")
    parser.add_argument("--quarantine", type=Path, required=True, help="quarantine.json or a scan's run folder")
    parser.add_argument("--root", type=Path, default=None, help="the scanned folder, if the data moved since the scan")
    parser.add_argument("--baseline", type=Path, default=None, help="reviewed false positives to keep")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    import torch
    from torchvision import datasets, transforms

    from ssl_guard import GuardedDataset
    from ssl_guard.errors import GuardError

    transform = transforms.Compose([transforms.Resize((args.resolution, args.resolution)), transforms.ToTensor()])
    try:
        dataset = GuardedDataset(datasets.ImageFolder(args.folder, transform=transform), args.quarantine, root=args.root, baseline=args.baseline)
    except GuardError as error:
        print(error.one_line(), file=sys.stderr)
        return 2
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * args.resolution**2, len(dataset.dataset.classes)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = 0
    for epoch in range(args.epochs):
        for images, labels in loader:  # (B, 3, R, R) float in [0, 1], (B,) int
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
        print(f"epoch {epoch}: loss {loss.item():.3f}")
    print(json.dumps({"total": len(dataset.dataset), "kept": len(dataset), "dropped": dataset.n_dropped, "trained_on": seen}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
