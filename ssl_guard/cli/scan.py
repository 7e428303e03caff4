"""`ssl-guard scan DATA... --out RUN_DIR`: find poisoned samples and write the run folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from ssl_guard.cli import options
from ssl_guard.detect import registry

NAME = "scan"


# the choices follow the detector registry: auto, every registered detector, ensemble
MethodChoice = Enum("MethodChoice", {name: name for name in ("auto", *registry.names(), "ensemble")}, type=str)


def command(
    data: List[str] = options.DATA,
    out: Path = options.OUT_RUN,
    encoder: str = typer.Option("auto", "--encoder", "-e", help="hub:org/name[@rev], an encoder folder, bootstrap, random:..., or auto (a seeded random ResNet-18: no training)."),
    method: MethodChoice = typer.Option(MethodChoice.auto, "--method", "-m", help="auto: mine (patches) and additive (blends, CTRL), plus poisoncam when the encoder is a trained SSL model."),
    resolution: Optional[int] = typer.Option(None, "--resolution", min=16, max=1024, help="Scan resolution (default: the encoder's)."),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Reviewed decisions (ssl-guard review); their false positives are not quarantined."),
    bootstrap_epochs: Optional[int] = typer.Option(None, "--bootstrap-epochs", min=1, help="Epochs of --encoder bootstrap."),
    device: str = options.DEVICE,
    workers: int = options.WORKERS,
    seed: int = options.SEED,
    resume: bool = options.RESUME,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
) -> None:
    """Scan DATA for backdoor-poisoned images; writes scores.csv, quarantine.json and report.html into RUN_DIR."""
    from ssl_guard.detect.pipeline import scan
    from ssl_guard.report.console import print_summary

    overrides = {"resolution": resolution, "batch_size": batch_size}
    if bootstrap_epochs:
        overrides["bootstrap"] = {"epochs": bootstrap_epochs}
    result = scan(
        data, out, encoder=encoder, method=method.value, device=device, workers=workers,
        resume=resume, seed=seed, baseline=baseline, progress=not quiet, **overrides,
    )
    if result.report is None:  # a non-zero torchrun rank: rank 0 reports
        return
    if not quiet:
        print_summary(result.report)
    typer.echo(f"run folder: {result.run_dir}  ({result.n_flagged} quarantined of {result.n_samples}; report: {result.run_dir / 'report.html'})")
