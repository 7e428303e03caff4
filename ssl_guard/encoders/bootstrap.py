"""Bootstrap a threat-model encoder on the data itself with SimCLR.

PoisonCAM and PatchSearch read the backdoor out of an encoder that was pre-trained on the poisoned
data; when the user has none, this trains one the same way an attacker's victim would: SimCLR
(Chen et al., ICML 2020) with its augmentations (`augment.py`), NT-Xent loss and a projection head
(`simclr.py`), SGD with momentum, linear warm-up then cosine decay. SimCLR rather than MoCo v2:
its whole training state is one network and its optimizer, so an interruption resumes exactly
from one checkpoint and `init` from a Hub encoder needs no key encoder or queue to warm up; see
docs/bootstrap.md.

Data flow: `resolve_sources` → per epoch, units reshuffled (folder files regrouped at random, shard
order permuted) → `stream_batches` decodes each image to a square 1.5× the training side → a shuffle
buffer → fixed-size batches → two augmented views each, on the training device.

The run folder `out` ends up as an encoder folder (`config.json`, `model.safetensors`, `README.md`)
plus `checkpoint/` (written after every epoch; `resume=True` continues from it, and returns the
encoder at once when the run had finished).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

import numpy as np
import pydantic
import torch

from ssl_guard.data import Skipped, Sources, Unit, fingerprint_unit, iter_raw_samples, resolve_sources, stream_batches
from ssl_guard.encoders.augment import simclr_view
from ssl_guard.encoders.backbones import Encoder, EncoderConfig, build_encoder
from ssl_guard.encoders.checkpoint import load_checkpoint, mark_finished, read_state, save_checkpoint
from ssl_guard.encoders.decoded_cache import DecodedCache
from ssl_guard.encoders.devices import resolve_device
from ssl_guard.encoders.hub import encoder_files, load_encoder, write_atomic
from ssl_guard.encoders.simclr import ProjectionHead, nt_xent
from ssl_guard.errors import ConfigError, EmptyDatasetError, RunDirError

CHECKPOINT_DIR = "checkpoint"
CACHE_DIR = "cache"
DECODE_SCALE = 1.5  # decode side / training side: room for random crops to keep detail
FILES_PER_GROUP = 256
# options that may differ when a run is resumed: they change speed, not what is learned
RESUME_FREE = ("workers", "max_minutes")


class BootstrapConfig(pydantic.BaseModel):
    """SimCLR bootstrap settings; the defaults are the measured CPU trade-off (docs/bootstrap.md).

    `lr` is the learning rate for a batch of 256, scaled linearly with `batch_size` (SimCLR's default setting).
    `arch`, `width`, `stem` and `resolution` default to the `init` encoder's when `init` is given.
    `crop_scale_min` is the smallest area fraction of SimCLR's random crop (the largest is 1).
    `cache` keeps the first epoch's decoded images in `out/cache` and trains the later epochs from
    them without decoding (`decoded_cache.py`); the folder is deleted when the run finishes.
    `max_minutes` bounds the wall time: after each epoch the remaining epochs are re-planned so the
    cosine schedule ends within it; a run that exceeds it mid-epoch stops there.
    """

    model_config = pydantic.ConfigDict(extra="forbid")

    epochs: int = pydantic.Field(10, ge=1)
    batch_size: int = pydantic.Field(256, ge=2)
    lr: float = pydantic.Field(0.3, gt=0)
    momentum: float = pydantic.Field(0.9, ge=0, lt=1)
    weight_decay: float = pydantic.Field(5e-4, ge=0)
    warmup: float = pydantic.Field(0.1, ge=0, lt=1)
    temperature: float = pydantic.Field(0.2, gt=0)
    projection_dim: int = pydantic.Field(128, ge=2)
    jitter_strength: float = pydantic.Field(0.5, ge=0, le=2)
    crop_scale_min: float = pydantic.Field(0.2, gt=0, le=1)
    resolution: int = pydantic.Field(64, ge=16, le=1024)
    arch: Literal["resnet10", "resnet18", "resnet34"] = "resnet18"
    width: int = pydantic.Field(32, ge=4, le=512)
    stem: Literal["imagenet", "cifar"] = "imagenet"
    shuffle_buffer: int = pydantic.Field(4096, ge=0)
    init: str | None = None
    seed: int = 0
    workers: int = pydantic.Field(2, ge=0)
    cache: bool = True
    max_minutes: float | None = pydantic.Field(None, gt=0)


# ---------------------------------------------------------------------------------------------
# Data


def survey(sources: Sources) -> tuple[int, str]:
    """(number of samples, data fingerprint) of `sources`.

    Folder files are counted from the listing; shards by reading their members (no decoding). The
    fingerprint is a sha256 over every unit's `fingerprint_unit`, so it changes when any byte does.
    """
    count = 0
    digest = hashlib.sha256()
    for unit in sources.units:
        if unit.kind == "files":
            count += len(unit.files)
        else:
            count += sum(1 for raw in iter_raw_samples(unit) if raw.data is not None)
        digest.update(f"{unit.name}\0{fingerprint_unit(unit)}\n".encode())
    return count, digest.hexdigest()[:32]


def shuffled_units(sources: Sources, rng: np.random.Generator, files_per_group: int = FILES_PER_GROUP) -> tuple[Unit, ...]:
    """The units of `sources` for one epoch: folder files regrouped at random, all units permuted.

    Folder units hold files in sorted (often class-sorted) order; regrouping them gives each batch
    a mix of the whole folder. Shards are kept whole (WebDataset shards are written shuffled) and
    only their order changes.
    """
    by_root: dict[str, list[str]] = {}
    shards: list[Unit] = []
    for unit in sources.units:
        if unit.kind == "files":
            by_root.setdefault(unit.root, []).extend(unit.files)
        else:
            shards.append(unit)
    groups: list[Unit] = []
    for root, files in sorted(by_root.items()):
        order = rng.permutation(len(files))
        for start in range(0, len(files), files_per_group):
            chosen = tuple(files[i] for i in order[start : start + files_per_group])
            groups.append(Unit(name=f"shuffled#{len(groups):05d}", kind="files", root=root, files=chosen))
    units = groups + shards
    return tuple(units[i] for i in rng.permutation(len(units)))


def _draw(pool: list[np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    chosen = sorted(rng.choice(len(pool), size=size, replace=False).tolist(), reverse=True)
    batch = np.stack([pool[i] for i in chosen])
    for i in chosen:  # swap-remove, highest index first so pending indices stay valid
        pool[i] = pool[-1]
        pool.pop()
    return batch


def epoch_batches(
    sources: Sources,
    decode_resolution: int,
    batch_size: int,
    rng: np.random.Generator,
    workers: int = 2,
    shuffle_buffer: int = 4096,
    skipped: list[Skipped] | None = None,
    decoded: Callable[[np.ndarray], None] | None = None,
) -> Iterator[np.ndarray]:
    """One epoch of shuffled training batches.

    Yields `(batch_size, 3, S, S)` uint8 arrays (S = `decode_resolution`); the remainder smaller
    than a batch is dropped, except when the whole epoch holds less than one batch (then it is the
    only batch, if it has at least 2 images). Unreadable samples are appended to `skipped`;
    `decoded`, when given, receives every decoded `(b, 3, S, S)` block as it arrives (the cache).
    """
    units = shuffled_units(sources, rng)
    stream = stream_batches(Sources(sources.root, units), decode_resolution, batch_size=min(batch_size, 64), workers=workers)
    pool: list[np.ndarray] = []
    capacity = max(shuffle_buffer, batch_size)
    # start drawing after two batches and let the buffer grow to its capacity over the first
    # steps, so an epoch does not wait for a full buffer to be decoded before its first step
    threshold = min(capacity, 2 * batch_size)
    emitted = False
    for unit_batch in stream:
        if skipped is not None:
            skipped.extend(unit_batch.skipped)
        if decoded is not None and len(unit_batch.images):
            decoded(unit_batch.images)
        pool.extend(unit_batch.images)
        while len(pool) >= threshold:
            emitted = True
            yield _draw(pool, batch_size, rng)
            threshold = min(capacity, threshold + max(1, batch_size // 4))
    while len(pool) >= batch_size:
        emitted = True
        yield _draw(pool, batch_size, rng)
    if not emitted and len(pool) >= 2:
        yield _draw(pool, len(pool), rng)


# ---------------------------------------------------------------------------------------------
# Schedule


def learning_rate(step: int, total_steps: int, peak: float, warmup: float) -> float:
    """Linear warm-up over the first `warmup` fraction of steps, then cosine decay to 0."""
    warmup_steps = max(1, int(round(warmup * total_steps))) if warmup > 0 else 0
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# Model set-up


def _encoder_config(config: BootstrapConfig) -> tuple[EncoderConfig, Encoder | None]:
    """The encoder's config, and the init encoder when `config.init` is given."""
    if config.init is None:
        values = dict(arch=config.arch, width=config.width, stem=config.stem, resolution=config.resolution, ssl_method="simclr")
        return EncoderConfig(**values), None
    init = load_encoder(config.init, device="cpu")
    explicit = config.model_fields_set
    for name in ("arch", "width", "stem"):
        if name in explicit and getattr(config, name) != getattr(init.config, name):
            raise ConfigError(
                f"--{name} {getattr(config, name)} disagrees with the init encoder's {getattr(init.config, name)}",
                "drop the option: the architecture comes from --init",
            )
    resolution = config.resolution if "resolution" in explicit else init.config.resolution
    encoder_config = init.config.model_copy(update={"resolution": resolution, "ssl_method": "simclr", "training": {}})
    return EncoderConfig.model_validate(encoder_config.model_dump()), init


def _parameter_groups(modules: Sequence[torch.nn.Module], weight_decay: float) -> list[dict[str, Any]]:
    # weight decay on weights only: decaying BatchNorm scales and biases only fights the normalisation
    decay, no_decay = [], []
    for module in modules:
        for parameter in module.parameters():
            (decay if parameter.ndim > 1 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def training_threads(workers: int) -> int | None:
    """Torch CPU threads for training next to `workers` decoding processes, or None to leave as is.

    Torch defaults to one thread per core, and the decoding workers need cores too; the
    oversubscribed threads then spin-wait on each other. Measured on 2 shared cores at 32 px,
    2 threads beside 2 workers gave 21 images/s and 1 thread 70 (bench/RESULTS.md). An explicit
    OMP_NUM_THREADS is left alone.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, min(torch.get_num_threads(), _cores() - workers))


def _run_config_differences(saved: dict[str, Any], config: BootstrapConfig) -> list[str]:
    current = config.model_dump(mode="json")
    return [f"{key} {saved.get(key)!r} (now {current[key]!r})" for key in current if key not in RESUME_FREE and saved.get(key) != current[key]]


# ---------------------------------------------------------------------------------------------
# The training loop


def bootstrap(
    data: Sequence[str],
    out: Path,
    config: BootstrapConfig,
    device: str | torch.device = "auto",
    resume: bool = False,
    progress: bool = True,
) -> Encoder:
    """Train an encoder on `data` with SimCLR and save it as an encoder folder at `out`.

    Args:
        data: image folders, shards or patterns (as `resolve_sources` takes them).
        out: the run folder; must be new or empty unless `resume`.
        config: training settings.
        device: "auto" (CUDA when present), "cpu", "cuda", ...
        resume: continue from `out/checkpoint` (a missing checkpoint starts a new run in an empty
            or absent `out`; a finished run is returned as it is).
        progress: show a rich progress bar on stderr.
    Returns:
        the trained encoder, in eval mode on `device`, with `spec` = `out`.
    Raises:
        RunDirError: `out` in use, or a checkpoint from other settings or other data.
        EmptyDatasetError: fewer than 2 readable images.
        ConfigError, EncoderError: bad options, an unloadable `init`.
    """
    out = Path(out)
    target = resolve_device(device)
    checkpoint_dir = out / CHECKPOINT_DIR
    state = read_state(checkpoint_dir) if resume and checkpoint_dir.is_dir() else None
    if state is None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        if resume:
            raise RunDirError(f"{out} holds no bootstrap checkpoint to resume", "choose a new --out, or remove that folder")
        raise RunDirError(f"{out} already exists", "pass --resume to continue that run, or choose a new --out")
    if state is not None:
        differences = _run_config_differences(state["config"], config)
        if differences:
            raise RunDirError(f"{out} was started with other settings: {', '.join(differences)}", "resume with the same options, or choose a new --out")

    sources = resolve_sources(data)
    images, fingerprint = survey(sources)
    if state is not None and state["data_fingerprint"] != fingerprint:
        raise RunDirError(f"the data differs from the data {out} was trained on", "resume with the same data, or choose a new --out")
    if images < 2:
        raise EmptyDatasetError(f"{len(sources)} source unit(s) hold {images} image(s); contrastive training needs at least 2", "pass a dataset with images")
    if state is not None and state.get("finished"):
        return load_encoder(str(out), device=target)

    if state is None:
        encoder_config, init = _encoder_config(config)
        encoder = Encoder(encoder_config, spec=str(out))
        if init is not None:
            encoder.load_state_dict(init.state_dict())
            init_provenance = {"init": init.spec, "init_revision": init.revision}
        else:
            encoder.load_state_dict(build_encoder(encoder_config, seed=config.seed).state_dict())
            init_provenance = {"init": None, "init_revision": None}
    else:
        encoder_config = EncoderConfig.model_validate(state["encoder_config"])
        encoder = Encoder(encoder_config, spec=str(out))
        init_provenance = {"init": state.get("init"), "init_revision": state.get("init_revision")}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed + 1)
        head = ProjectionHead(encoder_config.embed_dim, encoder_config.embed_dim, config.projection_dim)
    # channels-last convolutions: 1.29x faster training steps at width 16, 64 px, on the 2-core
    # CPU (docs/bootstrap.md); saved tensors are made contiguous, so the files do not change
    encoder.to(target, memory_format=torch.channels_last)
    head.to(target)
    optimizer = torch.optim.SGD(_parameter_groups([encoder, head], config.weight_decay), lr=config.lr, momentum=config.momentum)
    batch_size = min(config.batch_size, images)
    run = _Run(
        sources=sources,
        encoder=encoder,
        head=head,
        optimizer=optimizer,
        config=config,
        device=target,
        checkpoint_dir=checkpoint_dir,
        cache_dir=out / CACHE_DIR,
        images=images,
        fingerprint=fingerprint,
        batch_size=batch_size,
        steps_per_epoch=max(1, images // batch_size),
        record={
            "config": config.model_dump(mode="json"),
            "encoder_config": encoder_config.model_dump(mode="json"),
            "data_fingerprint": fingerprint,
            "images": images,
            "batch_size": batch_size,
            "device": str(target),
            **init_provenance,
        },
    )
    counters = _Counters(planned=config.epochs)
    if state is not None:
        state = load_checkpoint(checkpoint_dir, run.modules, optimizer)
        counters = _Counters(state["epochs_done"], state["step"], state["planned_epochs"], state["seconds"], state["losses"])

    threads_before = torch.get_num_threads()
    try:
        _train(run, counters, progress)
    finally:
        torch.set_num_threads(threads_before)

    training = {
        "method": "simclr",
        "data_fingerprint": fingerprint,
        "data_images": images,
        "data_skipped": counters.skipped_count,
        "epochs": counters.epoch,
        "steps": counters.step,
        "batch_size": batch_size,
        "lr": config.lr,
        "temperature": config.temperature,
        "minutes": round(counters.seconds / 60, 2),
        "seed": config.seed,
        "device": str(target),
        "final_loss": counters.losses[-1] if counters.losses else None,
        "stopped_by_time_budget": counters.stopped_by_budget,
        **init_provenance,
    }
    encoder.config = encoder_config.model_copy(update={"training": training})
    encoder.to(memory_format=torch.contiguous_format).eval()  # as a loaded encoder is
    for name, payload in encoder_files(encoder).items():
        write_atomic(out / name, payload)
    mark_finished(checkpoint_dir)
    shutil.rmtree(out / CACHE_DIR, ignore_errors=True)
    return encoder


@dataclass
class _Run:
    """What stays fixed during a bootstrap run."""

    sources: Sources
    encoder: Encoder
    head: ProjectionHead
    optimizer: torch.optim.Optimizer
    config: BootstrapConfig
    device: torch.device
    checkpoint_dir: Path
    cache_dir: Path
    images: int  # the survey's count: an upper bound on what decodes
    fingerprint: str
    batch_size: int
    steps_per_epoch: int
    record: dict[str, Any]  # written into every checkpoint's state

    @property
    def modules(self) -> dict[str, torch.nn.Module]:
        return {"encoder": self.encoder, "head": self.head}


@dataclass
class _Counters:
    """What a checkpoint restores: progress through the schedule."""

    epoch: int = 0
    step: int = 0
    planned: int = 1
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    stopped_by_budget: bool = False
    skipped: list[Skipped] = field(default_factory=list)  # this epoch's, while it decodes
    skipped_count: int = 0  # unreadable samples in the data, as the last full decode found them


def mixed_precision(device: torch.device):
    """The forward pass's precision context: bf16 autocast on CUDA (about twice the throughput of
    float32 on recent GPUs, with float32's exponent range, so no loss scaling is needed); on any
    other device a no-op, so the CPU path computes in float32 as before. The loss is computed in
    float32 either way."""
    if torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _train(run: _Run, counters: _Counters, progress: bool) -> None:
    """The epoch loop: train, checkpoint after every epoch, honour the time budget."""
    config, encoder, head, optimizer = run.config, run.encoder, run.head, run.optimizer
    resolution = encoder.config.resolution
    decode_resolution = int(math.ceil(resolution * DECODE_SCALE))
    peak_lr = config.lr * run.batch_size / 256
    budget = config.max_minutes * 60 if config.max_minutes else None
    crop_scale = (config.crop_scale_min, 1.0)
    bar = _progress_bar(progress)
    task = bar.add_task("", total=counters.planned * run.steps_per_epoch, completed=counters.step, loss=float("nan"), rate=0.0)
    with bar:
        while counters.epoch < counters.planned and not counters.stopped_by_budget:
            started = time.perf_counter()
            seen = 0
            epoch_losses: list[float] = []
            # each epoch's randomness depends only on (seed, epoch): a resumed run replays it exactly
            generator = torch.Generator().manual_seed(config.seed * 1_000_003 + counters.epoch)
            rng = np.random.default_rng([config.seed, counters.epoch])
            encoder.train()
            head.train()
            bar.update(task, description=f"epoch {counters.epoch + 1}/{counters.planned}")
            batches, cache = _epoch_source(run, decode_resolution, rng, counters)
            for batch in batches:
                pixels = torch.from_numpy(batch).to(run.device, non_blocking=True)
                views = torch.cat([simclr_view(pixels, resolution, generator, config.jitter_strength, crop_scale) for _ in range(2)])
                views = views.contiguous(memory_format=torch.channels_last)
                with mixed_precision(run.device):
                    projections = head(encoder.pooled(views))
                loss = nt_xent(*projections.float().chunk(2), temperature=config.temperature)
                if not torch.isfinite(loss):
                    raise ConfigError(f"the loss diverged (it is {loss.item()}) at step {counters.step}", "lower --lr or raise --temperature")
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(counters.step, counters.planned * run.steps_per_epoch, peak_lr, config.warmup)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                counters.step += 1
                seen += len(batch)
                epoch_losses.append(float(loss.detach()))
                elapsed = time.perf_counter() - started
                bar.update(task, completed=counters.step, loss=epoch_losses[-1], rate=seen / max(elapsed, 1e-9))
                if budget is not None and counters.seconds + elapsed > budget:
                    counters.stopped_by_budget = True
                    break
            batches.close()  # stops the decoding workers when the epoch was cut short
            decoded_this_epoch = cache is not None or not config.cache  # else the cache served it
            if cache is not None and not counters.stopped_by_budget:
                cache.commit(skipped=len(counters.skipped))  # the whole epoch was decoded into it
            if decoded_this_epoch:
                counters.skipped_count = len(counters.skipped)
            counters.seconds += time.perf_counter() - started
            counters.epoch += 1
            counters.losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
            if budget is not None and not counters.stopped_by_budget and counters.epoch < counters.planned:
                # re-plan so that the cosine schedule ends within the budget
                affordable = int((budget - counters.seconds) // (counters.seconds / counters.epoch))
                counters.planned = max(counters.epoch, min(config.epochs, counters.epoch + affordable))
                counters.stopped_by_budget = counters.planned < config.epochs and counters.planned == counters.epoch
                bar.update(task, total=counters.planned * run.steps_per_epoch)
            state = dict(
                run.record,
                epochs_done=counters.epoch,
                step=counters.step,
                planned_epochs=counters.planned,
                seconds=counters.seconds,
                losses=counters.losses,
                finished=False,
            )
            save_checkpoint(run.checkpoint_dir, run.modules, optimizer, state)


def _epoch_source(run: _Run, decode_resolution: int, rng: np.random.Generator, counters: _Counters):
    """This epoch's batches, and the cache they are being decoded into (None when not building one).

    With `config.cache`, a committed cache of this data serves the epoch with no decoding workers,
    so training takes every core; otherwise the epoch decodes (training takes the cores the
    workers leave) and, with `config.cache`, fills a new cache on the way.
    """
    config = run.config
    cached = DecodedCache.open_committed(run.cache_dir, decode_resolution, run.fingerprint) if config.cache else None
    if cached is not None:
        counters.skipped_count = cached.skipped
        if run.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(_cores())
        return cached.batches(run.batch_size, rng), None
    counters.skipped = []
    threads = training_threads(config.workers) if run.device.type == "cpu" else None
    if threads is not None:
        torch.set_num_threads(threads)
    building = DecodedCache.create(run.cache_dir, run.images, decode_resolution, run.fingerprint) if config.cache else None
    batches = epoch_batches(
        run.sources,
        decode_resolution,
        run.batch_size,
        rng,
        config.workers,
        config.shuffle_buffer,
        counters.skipped,
        decoded=building.append if building is not None else None,
    )
    return batches, building


def _progress_bar(enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]bootstrap[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("{task.fields[rate]:.0f} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


__all__ = ["BootstrapConfig", "bootstrap", "epoch_batches", "learning_rate", "shuffled_units", "survey"]
