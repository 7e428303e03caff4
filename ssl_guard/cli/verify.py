"""`ssl-guard verify [FILES...] --quarantine Q`: are these data files covered by a current manifest?

The light pre-commit check: it reads the manifests and hashes only the shards (or folder groups)
holding a changed file, and imports no torch. It fails (exit 1) when a changed shard or image was
never scanned or changed since its manifest was written; with no FILES it re-fingerprints all the
data of every manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

NAME = "verify"


def command(
    files: Optional[List[Path]] = typer.Argument(None, help="Changed shards or images (as pre-commit passes them); none: verify all the data."),
    quarantine: List[Path] = typer.Option(..., "--quarantine", "-q", help="quarantine.json or run folder; repeat for several datasets."),
    data: Optional[List[Path]] = typer.Option(None, "--data", help="Data root of each --quarantine, in the same order (default: the root recorded in the manifest)."),
) -> None:
    """Fail when changed data files are not covered by a current quarantine manifest (light: no torch)."""
    from ssl_guard.errors import ConfigError, UncoveredDataError
    from ssl_guard.quarantine import Quarantine, check_coverage

    roots = list(data or [])
    if roots and len(roots) != len(quarantine):
        raise ConfigError(f"{len(roots)} --data for {len(quarantine)} --quarantine", "give one --data per --quarantine, in the same order")
    manifests = [(Quarantine.load(q), roots[i] if roots else None) for i, q in enumerate(quarantine)]
    coverage = check_coverage(manifests, files or [], label=[str(q) for q in quarantine])
    for problem in coverage.problems:
        typer.echo(problem, err=True)
    if coverage.problems:
        raise UncoveredDataError(
            f"{len(coverage.problems)} data file(s) not covered by a current quarantine manifest",
            "run `ssl-guard scan` on the changed data and commit its quarantine.json",
        )
    typer.echo(f"ssl-guard verify: {len(coverage.covered)} covered by a current manifest")
