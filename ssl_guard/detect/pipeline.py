"""`scan`: the whole guard, top to bottom (docs/architecture.md).

    sources ─► encoder ─► embed (per unit, resumable) ─► assemble ─► semantic clusters
            ─► detectors (mine, additive; poisoncam / patchsearch with a trained threat model) ─► combine
            ─► outputs: scores.csv, quarantine.json, report.json, report.html

Every stage records its input key in the run folder; a re-run with `resume=True` skips what is
finished and redoes what a changed input or setting invalidated. Under `torchrun`, each rank
embeds its own units (a strided split, each unit exactly once) and rank 0 runs the rest.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pydantic

from ssl_guard import __version__
from ssl_guard.config import DEFAULT_MINING_ENCODER, ScanConfig, semantic_cluster_count
from ssl_guard.data import resolve_sources, select_units
from ssl_guard.detect.cluster import spherical_kmeans
from ssl_guard.detect.distributed import barrier as _barrier
from ssl_guard.detect.distributed import gather_units as _gather_units
from ssl_guard.detect.distributed import init_distributed as _distributed
from ssl_guard.detect.embed import UNITS_DIR, assemble, embed_units, open_arrays
from ssl_guard.detect import registry
from ssl_guard.detect.registry import DetectorInputs
from ssl_guard.detect.result import Detection
from ssl_guard.detect.stages import array_stage, detection_stage, execute
from ssl_guard.errors import ConfigError, EmptyDatasetError, validation_summary
from ssl_guard.run import RunFolder, RunState, stable_hash


@dataclass
class ScanResult:
    """What a scan produced: counts, the manifest, and where the run folder is."""

    run_dir: Path
    n_samples: int
    n_skipped: int
    n_flagged: int
    quarantine: object
    incomplete: bool
    detection: Detection
    report: object = None
    seconds: dict[str, float] = field(default_factory=dict)


def scan(
    data: Sequence[str],
    out: str | Path,
    *,
    encoder: str = "auto",
    method: str = "auto",
    device: str = "auto",
    workers: int = 2,
    resume: bool = False,
    seed: int = 0,
    baseline: str | Path | None = None,
    progress: bool = True,
    **overrides,
) -> ScanResult:
    """Scan `data` for poisoned samples and write the run folder `out`.

    Args:
        data: image folders, shards, shard folders or brace patterns.
        out: the run folder; must be new unless `resume`.
        encoder: "auto" (a seeded random ResNet-18 for the semantic clusters), "bootstrap", "hub:org/name[@rev]", a folder, or "random:...".
        method: "auto" (`mine` for patches and `additive` for global triggers, plus `poisoncam`
            when the encoder is a trained SSL model), "mine", "additive", "poisoncam",
            "patchsearch" or "ensemble" (mine + additive + poisoncam).
        baseline: a reviewed-decisions file; its false positives stay out of the quarantine.
        overrides: any other `ScanConfig` field (e.g. `resolution`, `mine={...}`).
    Raises:
        GuardError subclasses for user errors (bad path, empty data, bad encoder, run folder in use).
    """
    import torch

    from ssl_guard.encoders import resolve_device

    section = None
    try:
        config = ScanConfig(encoder=encoder, method=method, workers=workers, seed=seed, **overrides)
        # the untyped sub-configs are checked now, not when their stage starts after the embed pass
        from ssl_guard.detect.poisoncam import ClusterMaskingConfig
        from ssl_guard.encoders.bootstrap import BootstrapConfig

        section = "cluster"
        ClusterMaskingConfig(**config.cluster)
        section = "bootstrap"
        BootstrapConfig(**{"resolution": config.resolution or 64, "seed": config.seed, "workers": config.workers, **config.bootstrap})
        section = None
    except pydantic.ValidationError as error:
        where, message = validation_summary(error, prefix=(section,) if section and error.title != "ScanConfig" else ())
        raise ConfigError(f"invalid scan setting {where}: {message}", "see `ssl-guard scan --help`") from None
    sources = resolve_sources(list(data))
    if not sources.units:
        raise EmptyDatasetError("the dataset holds no image or shard", "check the path: folders are searched recursively for images and .tar shards")
    rank, world = _distributed()
    # only rank 0 opens (and checks) the run folder before the barrier: a follower opening it
    # while rank 0 writes run.json could see a half-made folder
    run = RunFolder(Path(out), resume=resume) if rank == 0 else None
    target = resolve_device(device)
    torch.manual_seed(config.seed)
    timings: dict[str, tuple[float, int]] = {}
    bar = _progress(progress and rank == 0)
    with bar if bar is not None else nullcontext():
        if rank == 0:
            run.start(RunState(tool_version=__version__, data=[str(d) for d in data], config=config.model_dump(mode="json")))
        _barrier(world)
        if rank > 0:
            run = RunFolder(Path(out), resume=True)
        net = _encoder(config, run, data, target, rank, world)
        resolution = config.resolution or int(net.config.resolution)

        # embed: each rank its own units; a changed encoder or dataset starts the stage afresh
        from ssl_guard.quarantine import fingerprint_sources

        fingerprints = fingerprint_sources(sources)
        embed_key = stable_hash([f.model_dump() for f in fingerprints], net.spec, _weights_hash(net), resolution, config.max_pixels)
        if rank == 0:
            _reset_if_changed(run, embed_key)
        _barrier(world)
        if rank > 0:  # re-read: rank 0 may just have invalidated the finished stages
            run = RunFolder(Path(out), resume=True)
        clock = time.perf_counter()
        if not run.done("embed", embed_key):
            mine_units = select_units(len(sources.units), rank, world)
            advance = _task(bar, "embed", None)
            embed_units(run, sources, mine_units, net, resolution, config.batch_size, config.workers, target, config.max_pixels, advance)
            _barrier(world)
            _gather_units(run, len(sources.units), rank, world)
            if rank != 0:
                return _follower_result(run)
            arrays = assemble(run, len(sources.units), resolution, int(net.config.embed_dim))
            run.finish("embed", embed_key, time.perf_counter() - clock, len(arrays))
        elif rank != 0:
            return _follower_result(run)
        else:
            arrays = open_arrays(run)
        timings["embed"] = (run.record("embed").seconds, len(arrays))
        if len(arrays) == 0:
            raise EmptyDatasetError(f"no readable image in {len(sources.units)} unit(s); {len(arrays.skipped)} sample(s) could not be read", "see skipped.csv in the run folder")

        # semantic clusters: the targeted/untargeted test of each pattern reads them
        semantic_key = stable_hash(embed_key, config.semantic_clusters, config.seed)
        semantic = execute(run, array_stage(run, "semantic", semantic_key, lambda: spherical_kmeans(arrays.embeddings, config.semantic_clusters or semantic_cluster_count(len(arrays)), seed=config.seed).assignments.astype(np.int32)), len(arrays), timings)

        # detectors: each registered one the method selects, run as a stage with its own key
        chosen = registry.selected(config.method, _is_trained(net))
        native, native_key = None, None
        if "mine" in chosen:
            native, native_key = _native_view(run, sources, arrays, embed_key, resolution, config, bar, timings)
        inputs = DetectorInputs(arrays, semantic, net, config, target, bar, resolution, native)
        detections: list[Detection] = []
        for name in chosen:
            found = registry.detector(name)
            key = stable_hash(semantic_key, name, found.settings(config), resolution, *((native_key,) if name == "mine" and native_key else ()))
            detections.append(execute(run, detection_stage(run, f"detect-{name}", key, lambda found=found: found.run(inputs)), len(arrays), timings))
        detection = combine(detections)

        from ssl_guard.detect.outputs import write_outputs

        quarantine, report = write_outputs(run, sources, fingerprints, arrays, detection, net, config, resolution, timings, baseline)
    return ScanResult(
        run_dir=run.path,
        n_samples=len(arrays),
        n_skipped=len(arrays.skipped),
        n_flagged=len(quarantine.entries),
        quarantine=quarantine,
        incomplete=bool(arrays.skipped),
        detection=detection,
        report=report,
        seconds={k: v[0] for k, v in timings.items()},
    )


# ---------------------------------------------------------------------------------------------
# Encoder and detectors


def _encoder(config: ScanConfig, run: RunFolder, data: Sequence[str], device, rank: int, world: int):
    """The threat model: loaded, random, or bootstrapped into RUN_DIR/encoder (rank 0 trains)."""
    from ssl_guard.encoders import load_encoder

    spec = config.encoder
    if spec == "auto":
        spec = _at_resolution(DEFAULT_MINING_ENCODER, config.resolution or 64)
    if spec != "bootstrap":
        return load_encoder(spec, device)
    from ssl_guard.encoders.bootstrap import BootstrapConfig, bootstrap

    folder = run / "encoder"
    settings = BootstrapConfig(**{"resolution": config.resolution or 64, "seed": config.seed, "workers": config.workers, **config.bootstrap})
    if rank == 0 and not (folder / "model.safetensors").is_file():
        bootstrap(list(data), folder, settings, device=device, resume=(folder / "checkpoint").is_dir(), progress=True)
    _barrier(world)
    return load_encoder(str(folder), device)


def _reset_if_changed(run: RunFolder, embed_key: str) -> None:
    """Drop unit files and every finished stage when the data or the encoder changed; unit files
    of an interrupted run with the same inputs are kept (that is the shard-level resume)."""
    marker = run / UNITS_DIR / "key.txt"
    # a killed run can leave half-written temporary unit files; nothing reads them. Rank 0 clears
    # them here, before the barrier, while no rank is writing
    for stale in (run / UNITS_DIR).glob(".*.npz.*.tmp"):
        stale.unlink(missing_ok=True)
    if marker.is_file() and marker.read_text().strip() == embed_key:
        return
    shutil.rmtree(run / UNITS_DIR, ignore_errors=True)
    for stage in list(run.state.stages):
        run.invalidate(stage)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(embed_key)


def _is_trained(net) -> bool:
    return bool(getattr(net.config, "ssl_method", None))


def _at_resolution(spec: str, resolution: int) -> str:
    """A `random:` encoder spec with its resolution set to the scan's."""
    import re

    if not spec.startswith("random"):
        return spec
    if "resolution=" in spec:
        return re.sub(r"resolution=\d+", f"resolution={resolution}", spec)
    return spec + ("&" if "?" in spec else "?") + f"resolution={resolution}"


def combine(detections: list[Detection]) -> Detection:
    """One verdict from several detectors: flagged if any fired; each score is first mapped so
    that its detector's threshold sits at 0.5, and the highest wins; `details["detector"]` names,
    per sample, the detectors that flagged it (or the one that scored highest)."""
    if len(detections) == 1:
        only = detections[0]
        only.details["detector"] = np.array([only.method] * len(only.scores), dtype=object)
        return only
    n = len(detections[0].scores)
    mapped = np.stack([_calibrated(d) for d in detections])
    best = mapped.argmax(axis=0)
    flagged = np.zeros(n, bool)
    names = []
    for i in range(n):
        fired = [d.method for d in detections if d.flagged[i]]
        names.append("+".join(fired) if fired else detections[best[i]].method)
    for d in detections:
        flagged |= d.flagged
    boxes = np.full((n, 4), -1, np.int32)
    for d in reversed(detections):  # the first detector's box wins where several fired
        boxes = np.where(d.flagged[:, None], d.boxes, boxes)
    merged = Detection(
        method="+".join(d.method for d in detections),
        scores=mapped.max(axis=0).astype(np.float32),
        flagged=flagged,
        boxes=boxes,
        threshold=0.5,
        bank=[p for d in detections for p in d.bank],
        maps={k: v for d in detections for k, v in d.maps.items()},
        seconds={f"{d.method}:{k}": v for d in detections for k, v in d.seconds.items()},
        warnings=[f"{d.method}: {w}" for d in detections for w in d.warnings],
        details={"detector": np.array(names, dtype=object), "per_detector": {d.method: _summary(d) for d in detections}},
    )
    return merged


def _summary(d: Detection) -> dict:
    return {"flagged": int(d.flagged.sum()), "threshold": float(d.threshold), "bank": len(d.bank)}


def _calibrated(d: Detection) -> np.ndarray:
    """Monotone map of a detector's scores to [0, 1] with its threshold at 0.5."""
    s = d.scores.astype(np.float64)
    if len(s) == 0:
        return s
    lo, hi, t = float(s.min()), float(s.max()), float(d.threshold)
    if not np.isfinite(t):
        return np.clip(0.5 * (s - lo) / max(hi - lo, 1e-12), 0, 0.5)
    below = 0.5 * (s - lo) / max(t - lo, 1e-12)
    above = 0.5 + 0.5 * (s - t) / max(hi - t, 1e-12)
    return np.clip(np.where(s < t, below, above), 0, 1)


def _weights_hash(net) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Distributed (torchrun): ranks split the units (ssl_guard/detect/distributed.py); rank 0 runs the rest


def _follower_result(run: RunFolder) -> ScanResult:
    """What a non-zero rank returns: it embedded its units; rank 0 owns the outputs."""
    return ScanResult(run_dir=run.path, n_samples=0, n_skipped=0, n_flagged=0, quarantine=None, incomplete=False, detection=Detection.empty("follower", 0))


# ---------------------------------------------------------------------------------------------
# Progress


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    class _Rate(TextColumn):
        def __init__(self) -> None:
            super().__init__("")

        def render(self, task):  # items per second, with the unit the stage counts
            from rich.text import Text

            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f}/s" if speed else "", style="cyan")

    return Progress(SpinnerColumn(), TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(), console=Console(stderr=True), transient=False)


def _native_view(run, sources, arrays, embed_key: str, resolution: int, config, bar, timings):
    """The scan's native view (`ssl_guard.detect.native`) and its stage key, or (None, None) when
    its photos share one size; decoded once and kept in the run folder."""
    from ssl_guard.data import native_scale
    from ssl_guard.detect.embed import build_native_view, open_native_view
    from ssl_guard.detect.native import NativeView

    layout = native_scale(arrays.sizes, resolution)
    if layout is None:
        return None, None
    key = stable_hash(embed_key, layout.factor, layout.canvas)
    if not run.done("native", key):
        clock = time.perf_counter()
        build_native_view(run, sources, arrays, layout, config.batch_size, config.workers, config.max_pixels, _task(bar, "native view", len(arrays)))
        run.finish("native", key, time.perf_counter() - clock, len(arrays), factor=layout.factor, canvas=layout.canvas)
    timings["native"] = (run.record("native").seconds, len(arrays))
    return NativeView(open_native_view(run), layout, list(arrays.sizes)), key


def _task(bar, name: str, total: int | None):
    if bar is None:
        return lambda k: None
    task = bar.add_task(name, total=total)
    return lambda k: bar.advance(task, k)
