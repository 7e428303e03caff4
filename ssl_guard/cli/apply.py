"""`ssl-guard apply DATA --quarantine Q --out CLEAN`: write a copy of DATA without the quarantined samples."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ssl_guard.cli import options

NAME = "apply"


def command(
    data: options.DataPaths = options.DATA,
    quarantine: Path = typer.Option(..., "--quarantine", "-q", help="quarantine.json (or a scan's run folder) made for DATA."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the cleaned shards (or images); the input is never modified."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Reviewed decisions (default: .ssl-guard-baseline.json when present)."),
    allow_stale: bool = typer.Option(False, "--allow-stale", help="Use the manifest even if DATA changed since the scan."),
) -> None:
    """Write cleaned shards to OUT, leaving out quarantined samples, with OUT/removed.json listing them."""
    from ssl_guard.apply import REMOVED_NAME, apply_quarantine
    from ssl_guard.baseline import DEFAULT_BASELINE

    if baseline is None and Path(DEFAULT_BASELINE).is_file():
        baseline = Path(DEFAULT_BASELINE)
    result = apply_quarantine(data, quarantine, out, baseline=baseline, allow_stale=allow_stale)
    typer.echo(
        f"ssl-guard apply: kept {result.n_kept} samples, removed {result.n_removed} "
        f"({len(result.suppressed)} kept as reviewed false positives) in {len(result.units)} units -> {out}"
    )
    if result.not_found:
        typer.echo(f"warning: {len(result.not_found)} quarantined ids were not found in DATA (see {out / REMOVED_NAME})", err=True)
