"""The terminal summary: the numbers a person needs, and sample ids printed as they are."""

from __future__ import annotations

from rich.console import Console

from ssl_guard.report.console import print_summary
from ssl_guard.report.schema import Report


def _printed(report: Report, **kwargs) -> str:
    console = Console(record=True, width=160, color_system=None)
    print_summary(report, console, **kwargs)
    return console.export_text()


def test_summary_shows_verdict_numbers_stages_and_suspects(run_folder):
    report = Report.load(run_folder)
    text = _printed(report)
    assert "POISON FOUND" in text
    assert "2,048 in 40 units" in text
    assert f"{report.n_flagged:,} (" in text and "0.62" in text
    assert "2 patterns" in text and "hub:example/simclr-r18-64@3f2a9c1" in text
    for stage in report.stages:
        assert stage.name in text
    assert "49.59/s" in text and "n/a" in text  # rate of embed, and a stage without a rate
    assert "2 min 24 s" in text  # total time (143.5 s)
    assert "warning: 3 samples could not be decoded" in text
    for suspect in report.suspects:
        assert suspect.key in text


def test_summary_lists_only_the_top_suspects(run_folder):
    report = Report.load(run_folder)
    text = _printed(report, top=3)
    assert f"Top suspects: 3 shown of {report.n_flagged} flagged" in text
    assert report.suspects[2].key in text and report.suspects[3].key not in text


def test_markup_in_sample_ids_is_printed_literally(run_folder):
    report = Report.load(run_folder)
    report.suspects[0].key = "[bold red]boom[/]"
    report.warnings = ["[link=http://x]click[/link]"]
    text = _printed(report)
    assert "[bold red]boom[/]" in text
    assert "[link=http://x]click[/link]" in text


def test_clean_report_without_suspects_or_stages(run_folder):
    report = Report.load(run_folder)
    report = report.model_copy(update={"verdict": "clean", "n_flagged": 0, "suspects": [], "stages": [], "threshold": None, "warnings": []})
    text = _printed(report)
    assert "CLEAN" in text and "none" in text  # no threshold
    assert "Top suspects" not in text and "Stages" not in text
