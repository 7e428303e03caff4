"""Scan an image folder (or shards) for backdoor poisons and list what was quarantined.

    python examples/scan_folder.py path/to/images --out runs/scan-1 [--encoder bootstrap]

Writes the run folder (quarantine.json, report.json, scores.csv, skipped.csv) and prints the
flagged samples with the commands that use the result: guarding a DataLoader, writing a cleaned
copy, and the CI check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="+", help="image folders, shards or brace patterns")
    parser.add_argument("--out", type=Path, required=True, help="new run folder")
    parser.add_argument("--encoder", default="auto")
    parser.add_argument("--method", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top", type=int, default=10, help="how many flagged samples to list")
    args = parser.parse_args(argv)

    from ssl_guard import scan
    from ssl_guard.errors import GuardError

    try:
        result = scan(args.data, args.out, encoder=args.encoder, method=args.method, device=args.device, workers=args.workers)
    except GuardError as error:
        print(error.one_line(), file=sys.stderr)
        return 2

    quarantine = result.quarantine
    print(f"scanned {result.n_samples} samples, {result.n_skipped} unreadable, {result.n_flagged} flagged -> {result.run_dir}")
    for entry in sorted(quarantine.entries, key=lambda e: -e.score)[: args.top]:
        print(f"  {entry.score:.3f}  {entry.source}  {entry.key}  ({entry.detector}: {entry.reason})")
    manifest = Path(result.run_dir) / "quarantine.json"
    data = " ".join(args.data)
    print("next:")
    print(f"  guard training:  GuardedDataset(ImageFolder({args.data[0]!r}), {str(manifest)!r})")
    print(f"  cleaned copy:    ssl-guard apply {data} --quarantine {manifest} --out CLEAN")
    print(f"  CI check:        ssl-guard check {data} --quarantine {manifest}")
    if result.incomplete or result.n_skipped:
        print("warning: the scan could not read part of the data; see skipped.csv", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
