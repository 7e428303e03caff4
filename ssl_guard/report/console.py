"""The terminal summary of a scan: a few rich tables rendered from the `Report`.

Sample ids come from untrusted datasets, so they are passed to rich as `Text` objects (never as
markup strings): a key like `[bold red]x[/]` is printed as it is.
"""

from __future__ import annotations

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ssl_guard.report.html import format_number, format_seconds
from ssl_guard.report.schema import Report

_VERDICT_STYLE = {"clean": "bold green", "poison found": "bold red", "inconclusive": "bold yellow"}


def print_summary(report: Report, console: Console | None = None, top: int = 10) -> None:
    """Print the verdict, key numbers, warnings, per-stage time and rate, and the `top` suspects."""
    console = console or Console()
    r = report
    style = _VERDICT_STYLE[r.verdict]

    numbers = Table.grid(padding=(0, 2))
    numbers.add_column(style="dim", justify="right")
    numbers.add_column()
    share = f" ({100.0 * r.n_flagged / r.n_samples:.2f}%)" if r.n_samples else ""
    encoder = r.encoder + (f"@{r.encoder_revision}" if r.encoder_revision else "")
    rows = [
        ("verdict", Text(r.verdict.upper(), style=style)),
        ("samples", Text(f"{r.n_samples:,} in {r.n_units:,} unit{'s' if r.n_units != 1 else ''}")),
        ("skipped", Text(f"{r.n_skipped:,}", style="yellow" if r.n_skipped else "")),
        ("flagged", Text(f"{r.n_flagged:,}{share}", style="red" if r.n_flagged else "green")),
        ("threshold", Text(format_number(r.threshold))),
        ("trigger bank", Text(f"{len(r.bank)} pattern{'s' if len(r.bank) != 1 else ''}")),
        ("method", Text(f"{r.method} ({', '.join(r.detectors) or 'no detector'})")),
        ("encoder", Text(f"{encoder} at {r.resolution} px")),
        ("data", Text(r.data_root)),
    ]
    for label, value in rows:
        numbers.add_row(label, value)
    console.print(Panel(numbers, title=Text("ssl-guard scan"), border_style=style.split()[-1], expand=False))

    for warning in r.warnings:
        console.print(Text("warning: ", style="bold yellow") + Text(warning))

    if r.stages:
        stages = Table(title="Stages", title_justify="left", show_edge=False)
        stages.add_column("stage")
        stages.add_column("time", justify="right")
        stages.add_column("items", justify="right")
        stages.add_column("rate", justify="right")
        for s in r.stages:
            stages.add_row(Text(s.name), format_seconds(s.seconds), f"{s.items:,}", "n/a" if s.rate is None else f"{format_number(s.rate)}/s")
        stages.add_section()
        stages.add_row(Text("total", style="bold"), Text(format_seconds(sum(s.seconds for s in r.stages)), style="bold"), "", "")
        console.print(stages)

    if r.suspects:
        shown = r.suspects[:top]
        suspects = Table(
            title=f"Top suspects: {len(shown)} shown of {r.n_flagged} flagged (all of them: report.html, table 'All flagged')", title_justify="left", show_edge=False
        )
        suspects.add_column("#", justify="right", style="dim")
        suspects.add_column("source")
        suspects.add_column("key")
        suspects.add_column("score", justify="right")
        suspects.add_column("detector")
        suspects.add_column("flagged")
        for rank, s in enumerate(shown, 1):
            suspects.add_row(
                str(rank),
                Text(s.source, overflow="fold"),
                Text(s.key, overflow="fold"),
                f"{s.score:.3f}",
                Text(s.detector),
                Text("yes", style="bold red") if s.flagged else Text("no", style="dim"),
            )
        console.print(suspects)
