"""`ssl-guard report RUN_DIR`: re-render report.html from report.json and print the summary."""

from __future__ import annotations

from pathlib import Path

import typer

NAME = "report"


def command(
    run_dir: Path = typer.Argument(..., help="Run folder of a finished scan (it holds report.json)."),
    top: int = typer.Option(10, "--top", min=0, help="How many top suspects the terminal summary lists."),
) -> None:
    """Re-render RUN_DIR/report.html from RUN_DIR/report.json and print the scan summary."""
    from rich.console import Console

    from ssl_guard.errors import ReportError
    from ssl_guard.report.console import print_summary
    from ssl_guard.report.html import render_html
    from ssl_guard.report.schema import REPORT_FILE, Report

    if not run_dir.is_dir():
        raise ReportError(f"run folder {run_dir} does not exist", "pass the folder a scan wrote with --out")
    report = Report.load(run_dir / REPORT_FILE)
    path = render_html(run_dir, report)
    print_summary(report, Console(), top=top)
    typer.echo(f"report: {path}")
