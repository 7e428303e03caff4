"""`ssl-guard poison`: write a poisoned copy of a dataset, with its ground truth kept outside it."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ssl_guard.cli.options import DATA, SEED

NAME = "poison"


def command(
    src: List[str] = DATA,
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the poisoned shards (must not exist or be empty)."),
    truth: Path = typer.Option(..., "--truth", help="Ground-truth CSV to write, outside --out (a scan must not see it)."),
    attack: str = typer.Option("patch", "--attack", help="patch, blend or frequency."),
    target_class: str = typer.Option(..., "--target-class", help="Class the poisons are drawn from: folder name or .cls value."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Poisons as a share of the whole dataset, in (0, 1]; train split only."),
    split: str = typer.Option("train", "--split", help="train: poison --rate of the data; val: trigger every image."),
    trigger: Optional[List[Path]] = typer.Option(None, "--trigger", help="Patch trigger image; repeat for several triggers. Default: a generated one."),
    trigger_width: float = typer.Option(0.19, "--trigger-width", help="Patch trigger width as a fraction of the image side (0.19: ~12 px at a 64 px scan)."),
    alpha: float = typer.Option(0.1, "--alpha", help="Blend: weight of the pattern, in (0, 1]."),
    pattern: Optional[Path] = typer.Option(None, "--pattern", help="Blend: pattern image. Default: seeded coarse noise."),
    magnitude: float = typer.Option(100.0, "--magnitude", help="Frequency: value added to each chosen chroma DCT coefficient."),
    window: int = typer.Option(32, "--window", help="Frequency: DCT block side in source pixels."),
    coefficients: str = typer.Option("15,15 31,31", "--coefficients", help="Frequency: DCT (row,col) indices, space-separated."),
    samples_per_shard: int = typer.Option(1000, "--samples-per-shard", help="Samples per output shard."),
    image_format: str = typer.Option("jpg", "--format", help="jpg (quality 95, 4:4:4) or png (lossless)."),
    shuffle: bool = typer.Option(True, "--shuffle/--no-shuffle", help="Shuffle folder sources into the shards (seeded)."),
    seed: int = SEED,
) -> None:
    """Write a poisoned copy of SRC as WebDataset shards in --out and its ground truth to --truth."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from ssl_guard.attacks import poison_dataset
    from ssl_guard.attacks.factory import build_attack

    built = build_attack(
        attack,
        seed=seed,
        triggers=trigger or [],
        trigger_width=trigger_width,
        alpha=alpha,
        pattern=pattern,
        magnitude=magnitude,
        window=window,
        coefficients=coefficients,
    )
    console = Console(stderr=True, soft_wrap=True)
    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task("poisoning", total=None)
        summary = poison_dataset(
            src,
            out,
            truth,
            built,
            target_class=target_class,
            rate=rate,
            split=split,
            seed=seed,
            samples_per_shard=samples_per_shard,
            image_format=image_format,
            shuffle=shuffle,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    quality = f", mean PSNR {summary.mean_psnr:.1f} dB" if summary.mean_psnr is not None else ""
    console.print(
        f"wrote {summary.samples} samples ({summary.poisoned} poisoned by {summary.attack}, target {summary.target}{quality}) "
        f"in {len(summary.shards)} shard(s) to {summary.out}; truth: {summary.truth} ({summary.seconds:.1f} s)"
    )
    if summary.skipped:
        console.print(f"[yellow]{len(summary.skipped)} unreadable source sample(s) left out, e.g. {summary.skipped[0].id.source}: {summary.skipped[0].reason}")
    for warning in summary.warnings:
        console.print(f"[yellow]warning: {warning}")
