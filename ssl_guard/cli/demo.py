"""`ssl-guard demo`: poison a generated dataset, bootstrap an encoder, scan it, score the scan."""

from __future__ import annotations

from pathlib import Path

import typer

NAME = "demo"


def command(
    out: Path = typer.Option(Path("ssl-guard-demo"), "--out", "-o", help="Folder to create for the demo's data and run."),
    images_per_class: int = typer.Option(250, "--images-per-class", min=10),
    rate: float = typer.Option(0.02, "--rate", min=0.001, max=0.5, help="Share of the dataset that is poisoned."),
    bootstrap_epochs: int = typer.Option(2, "--bootstrap-epochs", min=1),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Run the whole guard on a generated poisoned dataset (no download; a few minutes on 2 cores)."""
    from rich.console import Console
    from rich.table import Table

    from ssl_guard.demo import run_demo
    from ssl_guard.report.console import print_summary

    console = Console()
    console.print(f"[bold]ssl-guard demo[/] into {out}: generating {8 * images_per_class} images, {rate:.1%} poisoned with a patch trigger")
    result = run_demo(out, images_per_class=images_per_class, rate=rate, bootstrap_epochs=bootstrap_epochs, seed=seed)
    print_summary(result.scan.report, console)
    metrics = result.metrics
    table = Table(title="Against the ground truth (truth.csv)")
    for column in ("poisons", "flagged", "precision", "recall", "AUROC"):
        table.add_column(column, justify="right")
    def number(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    table.add_row(str(metrics["poisons"]), str(metrics["flagged"]), number(metrics["precision"]), number(metrics["recall"]), number(metrics["auroc"]))
    console.print(table)
    console.print(f"report: {result.scan.run_dir / 'report.html'}")
