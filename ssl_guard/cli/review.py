"""`ssl-guard review RUN_DIR|QUARANTINE`: list findings, or mark reviewed ones as false positives.

Decisions go to a baseline file (default `.ssl-guard-baseline.json`, meant to be committed) that
`check`, `apply`, `GuardedDataset` and later scans honour: a sample marked false positive stays in
the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import typer

NAME = "review"


def command(
    quarantine: Path = typer.Argument(..., help="A scan's run folder or its quarantine.json."),
    false_positive: Optional[Tuple[str, str]] = typer.Option(
        None, "--false-positive", metavar="SOURCE KEY", help="Mark the finding SOURCE KEY as a false positive."
    ),
    note: str = typer.Option("", "--note", help="Why: recorded with the decision."),
    baseline: Path = typer.Option(Path(".ssl-guard-baseline.json"), "--baseline", help="Baseline file to update (created if absent)."),
    reviewer: Optional[str] = typer.Option(None, "--reviewer", help="Who reviewed (default: the current user)."),
) -> None:
    """Without --false-positive, list the findings and their review status; with it, record decisions."""
    from ssl_guard.baseline import Baseline
    from ssl_guard.errors import ManifestError
    from ssl_guard.quarantine import Quarantine

    manifest = Quarantine.load(quarantine)
    decisions = Baseline.load(baseline, missing_ok=True)
    if not false_positive or false_positive[0] is None:
        for entry in sorted(manifest.entries, key=lambda e: -e.score):
            status = "false positive" if decisions.suppresses(entry.source, entry.key, entry.sha256) else ("open (waived bytes changed)" if decisions.content_changed(entry.source, entry.key, entry.sha256) else "open")
            typer.echo(f"{entry.source}\t{entry.key}\t{entry.score:.3f}\t{entry.detector}\t{status}")
        typer.echo(f"{len(manifest.entries)} findings, {sum(decisions.suppresses(*e.id, e.sha256) for e in manifest.entries)} marked false positive in {baseline}", err=True)
        return
    findings = {entry.id: entry for entry in [*manifest.entries, *manifest.suppressed]}
    units = {u.name: u.sha256 for u in manifest.provenance.units}
    source, key = false_positive
    entry = findings.get((source, key))
    if entry is None:
        raise ManifestError(f"{source} {key} is not a finding of {quarantine}", "list the findings with `ssl-guard review RUN_DIR`")
    decisions.mark_false_positive(source, key, note=note, reviewer=reviewer, score=entry.score, detector=entry.detector, unit_sha256=units.get(entry.source), sha256=entry.sha256)
    decisions.write(baseline)
    typer.echo(f"marked {source} {key} as a false positive in {baseline} ({len(decisions)} decisions in all)")
