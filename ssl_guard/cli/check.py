"""`ssl-guard check DATA...`: pass or fail a CI job on a dataset's quarantine.

Exit codes:
  0  clean: flagged samples within --fail-on (or --exit-zero);
  1  flagged samples exceed --fail-on, or the manifest is stale for DATA;
  2  usage, I/O or model error, or an incomplete scan (some input could not be read): a check that
     did not see all of its input never passes.

With --quarantine (a quarantine.json or a scan's run folder), the manifest is compared with DATA
and nothing is imported beyond pydantic: fast enough for pre-commit. Without it, a full scan runs
into --out (default: a new temporary folder, whose path is printed on stderr).
"""

from __future__ import annotations

import io
import json
import math
import sys
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from ssl_guard.cli import options

NAME = "check"


class Format(str, Enum):
    text = "text"
    json = "json"
    sarif = "sarif"
    github = "github"


@dataclass(frozen=True)
class FailOn:
    """The tolerated amount of flagged samples: a count (`"3"`) or a rate (`"0.5%"`, `"0.005"`)."""

    count: int | None = 0
    rate: float | None = None

    @classmethod
    def parse(cls, text: str) -> "FailOn":
        from ssl_guard.errors import ConfigError

        raw = text.strip()
        try:
            if raw.endswith("%"):
                rate = float(raw[:-1]) / 100.0
            elif "." in raw or "e" in raw.lower():
                rate = float(raw)
            else:
                count = int(raw)
                if count < 0:
                    raise ValueError
                return cls(count=count, rate=None)
        except ValueError:
            raise ConfigError(f"--fail-on {text!r} is neither a count nor a rate", "use e.g. 0, 5, 0.1% or 0.001") from None
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"--fail-on {text!r} is a rate outside [0, 100%]", "use e.g. 0.1% or 0.001")
        return cls(count=None, rate=rate)

    def exceeded(self, flagged: int, scanned: int) -> bool:
        if self.count is not None:
            return flagged > self.count
        return flagged / max(scanned, 1) > (self.rate or 0.0)

    def describe(self) -> str:
        return f"{self.count} samples" if self.count is not None else f"{self.rate:.4%} of scanned samples"


@dataclass
class Outcome:
    """What a check found and the exit code it implies."""

    verdict: str  # clean, poison found, stale, incomplete
    exit_code: int
    quarantine: Any  # ssl_guard.quarantine.Quarantine (entries already filtered by the baseline)
    fail_on: FailOn
    artifact_prefix: str = ""
    notes: list[str] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)
    run_dir: str | None = None

    def counts(self) -> dict[str, Any]:
        q = self.quarantine
        return {
            "scanned": q.n_scanned,
            "skipped": q.n_skipped,
            "flagged": q.n_flagged,
            "suppressed by baseline": len(q.suppressed),
            "fail on more than": self.fail_on.describe(),
            "threshold": q.threshold if q.threshold is not None and math.isfinite(q.threshold) else None,  # JSON has no inf
            "method": q.provenance.method,
            "encoder": q.provenance.encoder + (f"@{q.provenance.encoder_revision}" if q.provenance.encoder_revision else ""),
        }


def evaluate(quarantine: Any, fail_on: FailOn, exit_zero: bool = False, stale: str | None = None, incomplete: bool = False) -> tuple[str, int, list[str]]:
    """Verdict, exit code and notes for a (baseline-filtered) manifest. An incomplete scan wins."""
    notes: list[str] = []
    if quarantine.n_skipped or incomplete:
        what = f"{quarantine.n_skipped} samples could not be read" if quarantine.n_skipped else "part of the input could not be read"
        notes.append(f"incomplete scan: {what}, so the data was not fully checked")
        return "incomplete", 2, notes
    if stale:
        notes.append(stale)
        return "stale", 1, notes
    if quarantine.waiver_warning():
        notes.append(quarantine.waiver_warning())
    if fail_on.exceeded(quarantine.n_flagged, quarantine.n_scanned):
        return "poison found", 0 if exit_zero else 1, notes
    return ("poison found" if quarantine.n_flagged else "clean"), 0, notes


def artifact_prefix(root: str, base: Path | None = None) -> str:
    """The data root as a prefix relative to `base` (the repository, default cwd), posix, with "/"."""
    base = (base or Path.cwd()).resolve()
    root_path = Path(root)
    try:
        rel = root_path.resolve().relative_to(base).as_posix()
    except ValueError:
        rel = root_path.as_posix()
    return "" if rel in ("", ".") else rel.rstrip("/") + "/"


def _skipped_from(run_dir: Path | None) -> tuple[list[Any], list[str]]:
    """Unreadable samples listed in a run folder's report.json, when there is one."""
    if run_dir is None or not (run_dir / "report.json").is_file():
        return [], []
    from ssl_guard.errors import GuardError
    from ssl_guard.report.schema import Report

    try:
        return list(Report.load(run_dir).skipped), []
    except GuardError as error:
        return [], [f"could not list the unreadable samples: {error.message}"]


def render(outcome: Outcome, fmt: Format) -> str:
    """The report in `fmt` as text (for github: the annotation lines)."""
    q = outcome.quarantine
    if fmt is Format.json:
        payload = {
            "schema_version": 1,
            "verdict": outcome.verdict,
            "exit_code": outcome.exit_code,
            "counts": {"scanned": q.n_scanned, "skipped": q.n_skipped, "flagged": q.n_flagged, "suppressed": len(q.suppressed)},
            "fail_on": {"count": outcome.fail_on.count, "rate": outcome.fail_on.rate},
            "notes": outcome.notes,
            "run_dir": outcome.run_dir,
            "artifact_prefix": outcome.artifact_prefix,
            "provenance": q.provenance.model_dump(mode="json", exclude={"units"}),
            "entries": [e.model_dump(mode="json") for e in q.entries],
            "suppressed": [e.model_dump(mode="json") for e in q.suppressed],
            "skipped": [{"source": s.source, "key": s.key, "reason": s.reason} for s in outcome.skipped],
        }
        return json.dumps(payload, indent=2) + "\n"
    if fmt is Format.sarif:
        from ssl_guard.report.sarif import to_sarif

        log = to_sarif(
            q.entries,
            outcome.artifact_prefix,
            skipped=outcome.skipped,
            complete=outcome.verdict not in ("incomplete", "stale"),
            notes=outcome.notes,
            properties={"verdict": outcome.verdict, **{k.replace(" ", "_"): v for k, v in outcome.counts().items()}},
        )
        return json.dumps(log, indent=2) + "\n"
    if fmt is Format.github:
        from ssl_guard.report.github import annotation, annotations

        lines = [annotation("error", note, title="ssl-guard") for note in outcome.notes]
        lines += annotations(q.entries, outcome.artifact_prefix, outcome.skipped)
        return "\n".join(lines) + ("\n" if lines else "")
    return _render_text(outcome)


def _render_text(outcome: Outcome, top: int = 20) -> str:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    console = Console(record=True, width=120, file=io.StringIO(), force_terminal=False)
    q = outcome.quarantine
    colour = {"clean": "green", "poison found": "red", "stale": "yellow", "incomplete": "yellow"}[outcome.verdict]
    console.print(f"[bold {colour}]ssl-guard check: {outcome.verdict}[/] (exit {outcome.exit_code})")
    for name, value in outcome.counts().items():  # sample names and paths come from the data: never markup
        console.print(f"  {name}: {escape(str(value))}")
    for note in outcome.notes:
        console.print(f"  [yellow]note:[/] {escape(note)}")
    if q.entries:
        table = Table(title=f"flagged samples (top {min(top, len(q.entries))} of {len(q.entries)})")
        for column in ("source", "key", "score", "detector", "reason"):
            table.add_column(column, justify="right" if column == "score" else "left")
        for entry in sorted(q.entries, key=lambda e: -e.score)[:top]:
            table.add_row(*(Text(v) for v in (outcome.artifact_prefix + entry.source, entry.key, f"{entry.score:.3f}", entry.detector, entry.reason)))
        console.print(table)
    if outcome.run_dir:
        console.print(f"  run folder: {escape(outcome.run_dir)}")
    return console.export_text()


def _scan(data: list[str], out: Optional[Path], **kwargs: Any) -> tuple[Any, bool, Path]:
    """Run the full scan; any failure inside it becomes a GuardError (exit 2, never 1)."""
    import tempfile
    import traceback

    from ssl_guard.errors import GuardError

    if out is None:
        out = Path(tempfile.mkdtemp(prefix="ssl-guard-check-")) / "run"
        typer.echo(f"scanning into {out}", err=True)
    try:
        from ssl_guard.detect.pipeline import scan

        result = scan(data, out, **kwargs)
    except GuardError:
        raise
    except Exception as error:  # a model or I/O failure must exit 2, never look like a finding (1)
        traceback.print_exc(file=sys.stderr)
        raise GuardError(f"scan failed: {type(error).__name__}: {error}", "see the traceback above; the data was not checked") from None
    if result.quarantine is None:
        return None, False, Path(result.run_dir)
    incomplete = bool(result.incomplete) or result.n_skipped > 0 or result.quarantine.n_skipped > 0
    return result.quarantine, incomplete, Path(result.run_dir)


def command(
    data: options.DataPaths = options.DATA,
    quarantine: Optional[Path] = typer.Option(None, "--quarantine", "-q", help="quarantine.json (or a scan's run folder) to check DATA against; without it DATA is scanned."),
    fail_on: str = typer.Option("0", "--fail-on", help="Fail when flagged samples exceed this count (5) or rate (0.1% or 0.001)."),
    exit_zero: bool = typer.Option(False, "--exit-zero", help="Exit 0 even when flagged samples exceed --fail-on (stale or incomplete still fail)."),
    fmt_name: str = typer.Option("text", "--format", "-f", help="Output: text, json, sarif (2.1.0) or github (annotations + step summary)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the formatted output to this file instead of stdout."),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="Reviewed decisions (default: .ssl-guard-baseline.json when present)."),
    allow_stale: bool = typer.Option(False, "--allow-stale", help="Use a manifest even if DATA changed since the scan."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder for the scan (default: a new temporary folder)."),
    encoder: str = typer.Option("auto", "--encoder", help="Encoder for the scan: hub:org/name@rev, a folder, bootstrap or auto."),
    method: str = typer.Option("auto", "--method", help="Detector for the scan: auto, mine, additive, poisoncam, patchsearch or ensemble."),
    device: str = options.DEVICE,
    workers: int = options.WORKERS,
    seed: int = options.SEED,
    resume: bool = options.RESUME,
) -> None:
    """Check DATA for poisoned samples: exit 0 clean, 1 poison over --fail-on or stale manifest, 2 error or incomplete scan."""
    from ssl_guard.baseline import DEFAULT_BASELINE, Baseline
    from ssl_guard.errors import IncompleteScanError, PoisonFoundError, StaleManifestError
    from ssl_guard.quarantine import Quarantine, write_text_atomic

    from ssl_guard.errors import ConfigError

    try:  # validated here, not by typer, so that a wrong value is a one-line error with exit code 2
        fmt = Format(fmt_name)
    except ValueError:
        raise ConfigError(f"--format {fmt_name!r} is not one of text, json, sarif, github") from None
    limit = FailOn.parse(fail_on)
    if baseline is None and Path(DEFAULT_BASELINE).is_file():
        baseline = Path(DEFAULT_BASELINE)
    reviewed = Baseline.load(baseline) if baseline is not None else None

    stale: str | None = None
    incomplete = False
    run_dir: Path | None = None
    if quarantine is not None:
        run_dir = quarantine if quarantine.is_dir() else (quarantine.parent if (quarantine.parent / "report.json").is_file() else None)
        try:
            manifest = Quarantine.load(quarantine, data=data, allow_stale=allow_stale, baseline=reviewed)
        except StaleManifestError as error:
            # keep the old findings in the output: an empty SARIF upload would close open alerts
            stale = error.message
            manifest = Quarantine.load(quarantine, baseline=reviewed)
    else:
        raw, incomplete, run_dir = _scan(
            data, out, encoder=encoder, method=method, device=device, workers=workers, resume=resume, seed=seed, baseline=baseline
        )
        if raw is None:  # a follower rank under torchrun: rank 0 reports for all
            return
        manifest = raw.with_baseline(reviewed)

    verdict, code, notes = evaluate(manifest, limit, exit_zero, stale, incomplete)
    skipped, more_notes = _skipped_from(run_dir)
    # paths are shown relative to where DATA is now, not where the manifest was made (another machine)
    from ssl_guard.data import resolve_sources

    prefix = artifact_prefix(resolve_sources(data).root)
    outcome = Outcome(verdict, code, manifest, limit, prefix, notes + more_notes, skipped, str(run_dir) if run_dir else None)

    text = render(outcome, fmt)
    if fmt is Format.github:
        from ssl_guard.report.github import step_summary, write_step_summary

        summary = step_summary(outcome.verdict, outcome.counts(), manifest.entries, outcome.artifact_prefix, outcome.notes)
        if not write_step_summary(summary):
            text += summary
    if report is not None:
        write_text_atomic(report, text)
        typer.echo(f"ssl-guard check: {verdict}; report written to {report}", err=True)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    # non-zero exits go through GuardError: the CLI maps it to one line on stderr and its exit code
    if code == 2:
        raise IncompleteScanError(outcome.notes[0], "repair or remove the unreadable samples and scan again")
    if code == 1 and verdict == "stale":
        raise StaleManifestError(stale or "stale manifest", "scan the data again, or pass --allow-stale")
    if code == 1:
        raise PoisonFoundError(
            f"{manifest.n_flagged} flagged samples exceed --fail-on {limit.describe()}",
            "keep them out with GuardedDataset or `ssl-guard apply`, or mark reviewed ones with `ssl-guard review`",
        )
