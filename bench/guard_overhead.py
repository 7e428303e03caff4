"""What the integration costs: guard construction and lookups, manifest checks, cleaned copies.

    nice -n 10 python bench/guard_overhead.py [SHARD_FOLDER]

SHARD_FOLDER defaults to bench/work/imagenette-patch-1pct/shards (built by make_benchmark.py); the
shard timings are skipped when it does not exist. Prints a Markdown table of wall times.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    from ssl_guard.guard import GuardedDataset, SampleGuard
    from ssl_guard.quarantine import Provenance, Quarantine, QuarantineEntry, build_quarantine, check_coverage

    rows = []
    n, n_bad = 1_000_000, 5_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        for c in range(100):  # realpath is taken per folder; the folders must exist
            (root / f"class{c:03d}").mkdir()
        files = [f"class{i % 100:03d}/{i:07d}.jpg" for i in range(n)]
        provenance = Provenance(tool_version="0", created="", method="mine", encoder="e", config_hash="0", root=str(root), units=[])
        entries = [QuarantineEntry(source=f, key=f[:-4], score=1.0, reason="", detector="mine") for f in files[:: n // n_bad]]
        quarantine = Quarantine(provenance=provenance, n_scanned=n, n_skipped=0, threshold=None, entries=entries)

        class Folder:  # the part of ImageFolder that GuardedDataset reads
            samples = [(str(root / f), 0) for f in files]

            def __len__(self):
                return len(self.samples)

        guarded, seconds = timed(lambda: GuardedDataset(Folder(), quarantine, log_drops=False))
        assert guarded.n_dropped == len(entries)
        rows.append((f"GuardedDataset over an ImageFolder of {n:,} paths ({len(entries):,} quarantined)", seconds, f"{seconds / n * 1e6:.2f} µs/sample"))

        guard = SampleGuard(quarantine)
        shard_entries = [QuarantineEntry(source=f"shard-{i % 100:06d}.tar", key=f"k{i}", score=1.0, reason="", detector="mine") for i in range(0, n, n // n_bad)]
        units = [{"name": f"shard-{i:06d}.tar", "kind": "shard", "sha256": "0", "size": 0} for i in range(100)]
        q2 = Quarantine(provenance=Provenance(**{**provenance.model_dump(), "units": units}), n_scanned=n, n_skipped=0, threshold=None, entries=shard_entries)
        guard = SampleGuard(q2)
        samples = [{"__url__": str(root / f"shard-{i % 100:06d}.tar"), "__key__": f"k{i}"} for i in range(n)]
        kept, seconds = timed(lambda: sum(guard.keep(s) for s in samples))
        assert kept == n - len(shard_entries)
        rows.append((f"SampleGuard.keep (WebDataset .select) on {n:,} raw samples", seconds, f"{seconds / n * 1e6:.2f} µs/sample"))

    shards = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench" / "work" / "imagenette-patch-1pct" / "shards"
    if shards.is_dir():
        size = sum(p.stat().st_size for p in shards.glob("*.tar")) / 2**20
        count = len(list(shards.glob("*.tar")))
        manifest, seconds = timed(lambda: build_quarantine([str(shards)], [], n_scanned=1))
        rows.append((f"fingerprint {count} shards, {size:.0f} MiB (manifest write, `check --quarantine`)", seconds, f"{size / seconds:.0f} MiB/s"))
        one = sorted(shards.glob("*.tar"))[0]
        coverage, seconds = timed(lambda: check_coverage([(manifest, None)], [one]))
        assert coverage
        rows.append((f"`ssl-guard-verify` of one changed shard ({one.stat().st_size / 2**20:.0f} MiB)", seconds, ""))
        with tempfile.TemporaryDirectory(dir=shards.parent.parent) as tmp:
            from ssl_guard.apply import apply_quarantine

            manifest.write(Path(tmp) / "q.json")
            result, seconds = timed(lambda: apply_quarantine([str(shards)], Path(tmp) / "q.json", Path(tmp) / "clean"))
            rows.append((f"`ssl-guard apply` copying {result.n_kept:,} samples ({size:.0f} MiB)", seconds, f"{size / seconds:.0f} MiB/s"))
            shutil.rmtree(Path(tmp) / "clean")

    print("| operation | wall time | rate |")
    print("|---|---:|---|")
    for name, seconds, rate in rows:
        print(f"| {name} | {seconds:.2f} s | {rate} |")


if __name__ == "__main__":
    main()
