"""`ssl-guard eval`: score a scan run against ground truth, optionally with the backdoor's effect."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ssl_guard.cli.options import DEVICE, WORKERS

NAME = "eval"


def command(
    run_dir: Path = typer.Argument(..., help="Scan run folder holding scores.csv."),
    truth: Path = typer.Option(..., "--truth", help="Ground-truth CSV written by `ssl-guard poison`."),
    force: bool = typer.Option(False, "--force", help="Replace an eval.json computed from other inputs."),
    encoder: Optional[str] = typer.Option(None, "--encoder", help="Also measure the backdoor's effect on this encoder (hub:org/name, folder, random)."),
    probe: str = typer.Option("knn", "--probe", help="Probe on the encoder's embeddings: knn (weighted 20-NN) or linear."),
    probe_train: Optional[List[str]] = typer.Option(None, "--probe-train", help="Clean labelled data the probe is fitted on."),
    probe_val: Optional[List[str]] = typer.Option(None, "--probe-val", help="Clean labelled validation data (clean accuracy)."),
    triggered: Optional[List[str]] = typer.Option(None, "--triggered", help="Triggered validation split (`ssl-guard poison --split val`)."),
    target_class: Optional[str] = typer.Option(None, "--target-class", help="Attack's target class; default: the truth's target."),
    knn_k: int = typer.Option(20, "--knn-k", min=1, help="Neighbours of the k-NN probe."),
    device: str = DEVICE,
    workers: int = WORKERS,
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images per encoder forward."),
) -> None:
    """Score RUN_DIR/scores.csv against --truth; print a table and write RUN_DIR/eval.json.

    eval.json is written when absent; when present it is kept if it was computed from the same
    inputs (same scores.csv, truth and probe settings) and replaced only with --force otherwise.
    """
    from rich.console import Console

    from ssl_guard.errors import ConfigError
    from ssl_guard.evaluation import evaluate_run, write_eval

    report = evaluate_run(run_dir, truth)
    if encoder is not None:
        if not (probe_train and probe_val and triggered):
            raise ConfigError("--encoder needs --probe-train, --probe-val and --triggered", "pass the clean train, clean val and triggered val data")
        from ssl_guard.attacks import read_truth
        from ssl_guard.probe import measure_backdoor

        target = target_class or _truth_target(read_truth(truth))
        effect = measure_backdoor(
            encoder, probe_train, probe_val, triggered, target, probe=probe, k=knn_k, device=device, workers=workers, batch_size=batch_size
        )
        report["backdoor"] = effect.as_dict()
        report["inputs"]["probe"] = effect.settings
    state = write_eval(run_dir, report, force=force)
    console = Console(soft_wrap=True)
    console.print(render_table(report))
    if "backdoor" in report:
        console.print(render_backdoor(report["backdoor"]))
    note = {"written": "wrote", "replaced": "replaced", "unchanged": "kept (same inputs)"}[state]
    console.print(f"{note} {Path(run_dir) / 'eval.json'}")


def _truth_target(rows) -> str:
    from ssl_guard.errors import ConfigError

    targets = sorted({row.target for row in rows if row.poisoned and row.target})
    if len(targets) != 1:
        raise ConfigError(f"the truth names {len(targets)} target classes", "pass --target-class")
    return targets[0]


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_table(report: dict):
    from rich.table import Table

    table = Table(title=f"{report['samples']} samples, {report['poisons']} poisons, {report['flagged']} flagged")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in report["precision_at_k"].items():
        label = f"precision@{report['k'][name]}" + (" (#poisons)" if name == "poisons" else "")
        if name != "poisons" and report["k"][name] != int(name):
            label += f" (k={name} clipped)"
        table.add_row(label, _fmt(value))
    for name in ("auroc", "auprc", "precision", "recall", "f1"):
        table.add_row(name.upper() if name.startswith("au") else f"flagged {name}", _fmt(report[name]))
    for name, value in report.get("recall_by_trigger", {}).items():
        table.add_row(f"recall of {name}", _fmt(value))
    return table


def render_backdoor(effect: dict):
    from rich.table import Table

    table = Table(title=f"backdoor effect ({effect['probe']} probe, target {effect['target']})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("clean accuracy", _fmt(effect["clean_accuracy"]))
    table.add_row("attack success rate (triggered non-target -> target)", _fmt(effect["attack_success_rate"]))
    table.add_row("target false positives (triggered)", f"{effect['target_false_positives']} / {effect['non_target']}")
    table.add_row("clean non-target -> target", _fmt(effect["clean_to_target_rate"]))
    return table
