"""`ssl-guard bootstrap DATA... --out DIR`: train a threat-model encoder on the data with SimCLR."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ssl_guard.cli.options import DATA, DEVICE, SEED, WORKERS

NAME = "bootstrap"


def command(
    data: List[str] = DATA,
    out: Path = typer.Option(..., "--out", "-o", help="Encoder folder to create (config.json + model.safetensors, and checkpoint/); must be new unless --resume."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Passes over the data (default 10)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=2, help="Images per step; each gives two views (default 256)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="SGD learning rate for a batch of 256, scaled linearly (default 0.3)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="NT-Xent temperature (default 0.2)."),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Training side in pixels (default 64, or the --init encoder's)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="resnet10, resnet18 or resnet34 (default resnet18)."),
    width: Optional[int] = typer.Option(None, "--width", help="Base channel width; 64 is the standard ResNet (default 32)."),
    stem: Optional[str] = typer.Option(None, "--stem", help="imagenet (7x7/2 + max-pool) or cifar (3x3/1) (default imagenet)."),
    init: Optional[str] = typer.Option(None, "--init", help="Start from this encoder (hub:org/name[@rev] or a folder) instead of random weights."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-time budget; the schedule is re-planned to end within it."),
    jitter_strength: Optional[float] = typer.Option(None, "--jitter-strength", help="Colour-jitter strength s (default 0.5, SimCLR's CIFAR setting)."),
    crop_scale_min: Optional[float] = typer.Option(None, "--crop-scale-min", help="Smallest area fraction of the random crop (default 0.2)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Decode the data once into OUT/cache and train later epochs from it (deleted when done)."),
    seed: int = SEED,
    workers: int = WORKERS,
    device: str = DEVICE,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (a finished one is left as it is)."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", help="Upload the encoder to this Hub repository (user/name) when done."),
    private: bool = typer.Option(False, "--private", help="Create the --push-to-hub repository as private."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar on stderr."),
) -> None:
    """Train a threat-model encoder on DATA itself (SimCLR), saved as an encoder folder."""
    import pydantic

    from ssl_guard.errors import ConfigError, validation_summary

    options = dict(
        epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature, resolution=resolution, arch=arch,
        width=width, stem=stem, init=init, max_minutes=max_minutes, jitter_strength=jitter_strength, crop_scale_min=crop_scale_min,
    )
    # only what the user set, so that unset architecture options can come from --init
    values = {key: value for key, value in options.items() if value is not None}
    values.update(seed=seed, workers=workers, cache=cache)

    from ssl_guard.encoders.bootstrap import BootstrapConfig, bootstrap

    try:
        config = BootstrapConfig(**values)
    except pydantic.ValidationError as error:
        where, message = validation_summary(error, default="option")
        raise ConfigError(f"--{where.split('.')[0].replace('_', '-')}: {message}", "see ssl-guard bootstrap --help") from None
    if push_to_hub is not None:
        from ssl_guard.encoders.hub import hub_offline, parse_hub_spec
        from ssl_guard.errors import EncoderError

        # a push that cannot happen fails now, not after training
        parse_hub_spec(f"hub:{push_to_hub}")
        if "/" not in push_to_hub:
            raise ConfigError(f"--push-to-hub {push_to_hub!r} has no namespace", "write it as user/name or org/name")
        if hub_offline():
            raise EncoderError("--push-to-hub needs the network but HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE, or push later with ssl_guard.encoders.push_encoder")
    try:
        encoder = bootstrap(data, out, config, device=device, resume=resume, progress=progress)
    except KeyboardInterrupt:
        typer.echo(f"interrupted; the last finished epoch is saved: continue with `ssl-guard bootstrap ... --out {out} --resume`", err=True)
        raise typer.Exit(130) from None
    training = encoder.config.training
    loss = training.get("final_loss")
    loss_text = f"{loss:.3f}" if isinstance(loss, (int, float)) else "n/a"
    typer.echo(
        f"encoder saved to {out}: {encoder.config.arch} width {encoder.config.width} at {encoder.config.resolution} px, "
        f"{training.get('epochs')} epochs, {training.get('steps')} steps, {training.get('minutes')} min, final loss {loss_text}"
    )
    if push_to_hub is not None:
        from ssl_guard.encoders import push_encoder

        url = push_encoder(out, push_to_hub, private=private)
        typer.echo(f"pushed to {url}")
