"""GitHub Actions output: `::error` workflow commands and a step-summary table.

Annotations point at the shard (or image file) as a repository-relative path, so they show on the
pull request's changed files. GitHub displays a limited number of annotations per step, so at most
`limit` are printed, followed by a notice with the rest's count; the step summary (appended to the
file named by `$GITHUB_STEP_SUMMARY`) lists every flagged sample up to `table_limit` rows.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"


def escape_data(text: str) -> str:
    """Escape a workflow command's message (`%`, CR, LF), as the Actions runner expects."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """Escape a workflow command's property value (message escapes plus `:` and `,`)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(level: str, message: str, file: str | None = None, title: str | None = None) -> str:
    """One workflow command line, e.g. `::error file=data/a.tar,title=...::message`."""
    props = []
    if file:
        props.append(f"file={escape_property(file)}")
    if title:
        props.append(f"title={escape_property(title)}")
    return f"::{level}{' ' + ','.join(props) if props else ''}::{escape_data(message)}"


def annotations(entries: Sequence[Any], artifact_prefix: str = "", skipped: Iterable[Any] = (), limit: int = 50) -> list[str]:
    """`::error` lines for flagged samples and `::warning` lines for unreadable ones."""
    lines = []
    for entry in entries[:limit]:
        lines.append(
            annotation(
                "error",
                f"Sample '{entry.key}' is likely backdoor-poisoned (score {entry.score:.3f}): {entry.reason}",
                file=artifact_prefix + entry.source,
                title=f"ssl-guard: poisoned sample ({entry.detector})",
            )
        )
    if len(entries) > limit:
        lines.append(annotation("notice", f"{len(entries) - limit} more flagged samples: see the step summary or the SARIF report"))
    skipped = list(skipped)
    for record in skipped[:limit]:
        lines.append(annotation("warning", f"Sample '{record.key}' could not be read: {record.reason}", file=artifact_prefix + record.source, title="ssl-guard: unreadable sample"))
    return lines


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def step_summary(
    verdict: str,
    counts: dict[str, Any],
    entries: Sequence[Any],
    artifact_prefix: str = "",
    notes: Sequence[str] = (),
    table_limit: int = 200,
) -> str:
    """A Markdown step summary: the verdict, the counts and a table of flagged samples."""
    lines = [f"## ssl-guard check: {verdict}", ""]
    lines += ["| | |", "|---|---|"] + [f"| {_cell(k)} | {_cell(v)} |" for k, v in counts.items()] + [""]
    for note in notes:
        lines.append(f"> {_cell(note)}")
    if notes:
        lines.append("")
    if entries:
        lines += ["| shard / file | key | score | detector | reason |", "|---|---|---:|---|---|"]
        for entry in list(entries)[:table_limit]:
            lines.append(
                f"| `{_cell(artifact_prefix + entry.source)}` | `{_cell(entry.key)}` | {entry.score:.3f} | {_cell(entry.detector)} | {_cell(entry.reason)} |"
            )
        if len(entries) > table_limit:
            lines.append(f"\n{len(entries) - table_limit} more flagged samples are in the JSON/SARIF report.")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_step_summary(text: str) -> bool:
    """Append `text` to `$GITHUB_STEP_SUMMARY`; returns False when the variable is not set."""
    path = os.environ.get(SUMMARY_ENV)
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
    return True
