"""The `additive` detector chained: features of a mined sample, groups, then every image scored."""

from __future__ import annotations

import time

import numpy as np
import pydantic
import torch

from ssl_guard.detect.additive.features import normalized_residuals, views
from ssl_guard.detect.additive.groups import Group, grow, lookalike_ratio, mirror_threshold, neighbours, project, robust_z, seed_order, trimmed_similarity
from ssl_guard.detect.mine.scoring import default_min_hosts
from ssl_guard.detect.result import Detection, TriggerPattern


class AdditiveConfig(pydantic.BaseModel):
    """Settings of the `additive` detector (docs/additive.md gives the reasons for each default)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    levels: int = pydantic.Field(4, ge=1, le=6, description="octaves of the residual pyramid")
    eps: float = pydantic.Field(0.25, gt=0, description="grey levels added to the local band energy before dividing (near uint8 rounding noise)")
    analysis_resolution: int = pydantic.Field(64, ge=16, le=256, description="images larger than this are area-resized to it first (memory: N x 4 x 3 x side^2 / 3 floats)")
    neighbours: int = pydantic.Field(10, ge=2, le=64, description="nearest images per image")
    seeds: int = pydantic.Field(40, ge=1, description="seed groups grown, in order of their triangles")
    fdr: float = pydantic.Field(0.05, gt=0, lt=1, description="largest estimated share of false hosts among a pattern's hosts (mirrored null)")
    min_hosts: int | None = pydantic.Field(None, ge=3, description="fewest hosts a pattern needs; default 0.1% of the data, at least 5")
    mining_images: int = pydantic.Field(10_000, ge=100, description="images whose features are held in memory to find groups; the rest are only scored")
    prevalence_guard: float = pydantic.Field(0.2, gt=0, le=1, description="a pattern in more than this share of the data is reported, not quarantined")
    max_lookalike_ratio: float = pydantic.Field(0.5, ge=0, description="images just under the threshold beyond the mirrored null, per host; above it, a natural continuum, reported and not quarantined (`mine`'s rule and value)")
    batch_size: int = pydantic.Field(512, ge=1)
    seed: int = 0

    def resolved(self, n: int) -> AdditiveConfig:
        values = self.model_dump()
        if values["min_hosts"] is None:
            values["min_hosts"] = default_min_hosts(n, self.mining_images)
        return AdditiveConfig(**values)


def _features(images: np.ndarray, rows: np.ndarray, config: AdditiveConfig, device: torch.device, advance=None) -> np.ndarray:
    """Features of `rows` (not yet centred), in batches: (len(rows), D) float32."""
    out = []
    for at in range(0, len(rows), config.batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[rows[at : at + config.batch_size]]))
        if batch.shape[-1] > config.analysis_resolution:
            batch = torch.nn.functional.interpolate(batch.float(), size=config.analysis_resolution, mode="area")
        with torch.no_grad():
            out.append(normalized_residuals(batch, config.levels, config.eps, device).cpu().numpy())
        if advance is not None:
            advance(len(out[-1]))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _unit(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Rows centred on the mined mean and scaled to unit length. A row that is empty in this view
    (the chroma of a greyscale photo) stays zero: centred, all such rows would share the direction
    of minus the mean and form a group of their own (on the dev split, the 2% greyscale photos of
    Imagenette did)."""
    empty = np.abs(features).max(axis=1) < 1e-3
    centred = features - mean
    centred[empty] = 0.0
    norms = np.linalg.norm(centred, axis=1, keepdims=True)
    return (centred / np.maximum(norms, 1e-6)).astype(np.float32)


def _controls(members: np.ndarray, clusters: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """One non-member per member, from the member's semantic cluster where it has another image
    (else any non-member): photos with the hosts' content but not their trigger."""
    n = len(clusters) if clusters is not None else 0
    outside = np.setdiff1d(np.arange(n if n else members.max() + 1), members)
    picks = []
    for m in members:
        pool = outside[clusters[outside] == clusters[m]] if clusters is not None else outside
        pool = pool if len(pool) else outside
        picks.append(int(rng.choice(pool)) if len(pool) else int(m))
    return np.array(picks, np.int64)


def _pool(raw: np.ndarray, mean: np.ndarray, all_views: list, members: np.ndarray, clusters: np.ndarray | None, config: AdditiveConfig, rounds: int = 2):
    """Weights, per-view references and standardisations of a group pooled over the views that
    partition the feature vector (not "all"), and the pooled score of every mined row.

    A row's projection in a view is its trimmed mean similarity to the members, minus the same to
    controls: a photo of the hosts' semantic cluster per host (`_controls`). The poisons of a
    targeted attack share their class's content as well as the trigger, so a clean photo of that
    content resembles them a little; it resembles the controls as much, and the difference keeps
    only the trigger (dev split: stripes at alpha 0.125 had 9 such photos among 48 flagged).
    Mined rows are cross-fitted: compared only with members and controls of the other fold.
    Each view's projections are standardised (median, MAD) and weighted by the median standardised
    projection of the members, so views where the hosts do not stand out weigh nothing. The members
    are then re-chosen by the mirrored threshold on the pooled score, `rounds` times.
    """
    parts = [(v, columns) for v, (name, columns) in enumerate(all_views) if name != "all"]
    rng = np.random.default_rng(config.seed)
    fold = rng.permutation(len(raw)) % 2
    n = len(raw)
    for _ in range(rounds):
        controls = _controls(members, clusters, rng) if clusters is not None else rng.choice(np.setdiff1d(np.arange(n), members), len(members))
        weights, references, locations, scales, zs = [], [], [], [], []
        for v, columns in parts:
            unit = _unit(raw[:, columns], mean[columns])
            hosts, others = unit[members], unit[controls]
            values = trimmed_similarity(unit, hosts, exclude=fold[:, None] == fold[members][None, :])
            values -= trimmed_similarity(unit, others, exclude=fold[:, None] == fold[controls][None, :])
            location = float(np.median(values))
            scale = 1.4826 * float(np.median(np.abs(values - location))) or float(values.std()) or 1.0
            z = (values - location) / scale
            weights.append(max(0.0, float(np.median(z[members]))))
            references.append((hosts, others))
            locations.append(location)
            scales.append(scale)
            zs.append(z)
        w = np.array(weights)
        norm = float(np.sqrt((w**2).sum())) or 1.0
        combined = sum(wi * zi for wi, zi in zip(w, zs)) / norm
        z = robust_z(combined)
        threshold, hosts_found, _ = mirror_threshold(z, config.fdr, config.min_hosts)
        if not np.isfinite(threshold):
            break
        members = np.nonzero(z >= threshold)[0]
    return (w / norm, [(v, r) for (v, _), r in zip(parts, references)], locations, scales, combined)


def _pooled_score(batch: np.ndarray, mean: np.ndarray, all_views: list, weights: np.ndarray, references: list, locations: list, scales: list) -> np.ndarray:
    """The pooled score of `_pool` for rows outside the mined sample (raw features `batch`)."""
    total = np.zeros(len(batch))
    for w, (v, (hosts, others)), location, scale in zip(weights, references, locations, scales):
        if w == 0:
            continue
        columns = all_views[v][1]
        unit = _unit(batch[:, columns], mean[columns])
        total += w * (trimmed_similarity(unit, hosts) - trimmed_similarity(unit, others) - location) / scale
    return total


def _batches(images: np.ndarray, rows: np.ndarray, size: int = 512):
    """`images[rows]` (rows sorted) in batches of `size`, so a large host set is never held at once."""
    rows = np.sort(rows)
    for at in range(0, len(rows), size):
        yield images[rows[at : at + size]]


def mean_difference(images: np.ndarray, hosts: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The estimated trigger in pixels: mean host image minus mean reference image, (3, R, R)
    float64, both means read in batches (an empty set's mean is taken as 0)."""

    def mean_of(rows: np.ndarray) -> np.ndarray:
        total = np.zeros(images.shape[1:], np.float64)
        for batch in _batches(images, rows):
            total += batch.astype(np.float64).sum(0)
        return total / max(len(rows), 1)

    return mean_of(hosts) - mean_of(reference)


def _delta_image(delta: np.ndarray) -> tuple[np.ndarray, float]:
    """`delta` (`mean_difference`) amplified to fill 0-255 around mid-grey; returns (3, R, R)
    uint8 and the amplification used."""
    peak = float(np.abs(delta).max()) or 1.0
    gain = 127.0 / peak
    return np.clip(128 + gain * delta, 0, 255).round().astype(np.uint8), gain


SATURATED = (2, 253)  # uint8 values at or beyond these are clipped: no overlay can be read there


def flat_clipped(batch: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) uint8 -> bool: pixels clipped at one end together with their whole 3 x 3
    neighbourhood (in that channel). A flat surround or a bar is clipped in runs; an overlay added
    to content near the limits (CTRL's ± pattern, noise) clips scattered pixels only."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch))
    out = torch.zeros(tensor.shape, dtype=torch.bool)
    for clipped in (tensor <= SATURATED[0], tensor >= SATURATED[1]):
        unclipped_near = torch.nn.functional.max_pool2d((~clipped).float(), 3, stride=1, padding=1) > 0
        out |= clipped & ~unclipped_near
    return out.numpy()


def saturation_excess(images: np.ndarray, hosts: np.ndarray, reference: np.ndarray, rng: np.random.Generator, draws: int = 200, delta: np.ndarray | None = None) -> dict[str, float]:
    """Whether a pattern's hosts are saturated where the pattern lives, against their own clusters.

    An overlay does not create flat clipped areas: a blend (1 − α)·x + α·p pulls a clipped 0 or 255
    towards the pattern, and x + δ (CTRL, noise) clips content near the limits only at scattered
    pixels, where δ is positive. Photos that share a *layout* do the opposite: a product shot on
    white or a letterboxed frame carries its "signal" (the flat surround and its edge at the same
    place) on clipped runs (`flat_clipped`). Each image's share of such pixels is weighted by
    where the estimated signal (mean host minus mean reference, squared) is strong, and the hosts'
    mean share is compared with the 99th percentile of the same mean over `draws` random samples
    of as many reference images (same-cluster non-hosts): a null measured on the scan. Measured
    (bench/RESULTS.md, "Photos that share a layout"): the two false patterns on clean Imagenette
    train 0.562 and 0.346 against null lines 0.173 and 0.116; the dev global zoo's true patterns
    0.000-0.022 against 0.060-0.135. `delta`: the `mean_difference` of these rows, when the
    caller has it already.
    """
    if len(hosts) == 0 or len(reference) < len(hosts):
        return {"saturated_share": float("nan"), "saturated_null": float("nan"), "layout": 0.0}
    weight = (mean_difference(images, hosts, reference) if delta is None else delta) ** 2
    weight /= float(weight.sum()) or 1.0

    def shares(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([(flat_clipped(batch) * weight).sum((1, 2, 3)) for batch in _batches(images, rows)])

    host_share, reference_share = shares(hosts), shares(reference)
    null = float(np.quantile([rng.choice(reference_share, len(hosts), replace=False).mean() for _ in range(draws)], 0.99))
    share = float(host_share.mean())
    return {"saturated_share": share, "saturated_null": null, "layout": float(share > null)}


def spectrum_image(pattern: np.ndarray) -> np.ndarray:
    """Log magnitude of the 2-D Fourier transform of a pattern's luminance, centred, as (R, R) uint8."""
    x = pattern.astype(np.float64)
    y = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    magnitude = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(y - y.mean()))))
    top = float(magnitude.max()) or 1.0
    return (255 * magnitude / top).round().astype(np.uint8)


def histogram_image(histogram: dict, side: int) -> np.ndarray:
    """(3, side, side) uint8 bar plot of `_histogram`: the positive side's counts in red, the
    mirrored negative side in grey over them, the threshold as a blue line; counts on a log scale."""
    image = np.full((3, side, side), 255, np.uint8)
    edges = np.asarray(histogram["edges"])
    pos, neg = np.log1p(histogram["positive"]), np.log1p(histogram["negative"])
    top = max(float(pos.max()), float(neg.max()), 1e-6)
    bins = len(pos)
    for k in range(bins):
        x0, x1 = int(k * side / bins), max(int(k * side / bins) + 1, int((k + 1) * side / bins) - 1)
        hp, hn = int(round(pos[k] / top * (side - 2))), int(round(neg[k] / top * (side - 2)))
        image[:, side - hp :, x0:x1] = np.array([220, 40, 40], np.uint8)[:, None, None]
        image[:, side - hn :, x0:x1] = np.array([140, 140, 140], np.uint8)[:, None, None]
    t = histogram["threshold"]
    if np.isfinite(t) and edges[-1] > 0:
        x = min(side - 1, int(t / edges[-1] * side))
        image[:, :, x] = np.array([30, 60, 220], np.uint8)[:, None]
    return image


def evidence_panel(pattern: np.ndarray, histogram: dict) -> np.ndarray:
    """The bank image of a global pattern: the estimated delta (amplified), its spectrum, and the
    hosts' projections against the mirrored null, side by side as (3, R, 3R) uint8."""
    side = pattern.shape[-1]
    spectrum = np.repeat(spectrum_image(pattern)[None], 3, axis=0)
    return np.concatenate([pattern, spectrum, histogram_image(histogram, side)], axis=2)


def detect_additive(images: np.ndarray, semantic: np.ndarray | None = None, config: AdditiveConfig | None = None, device: str | torch.device = "cpu", progress=None) -> Detection:
    """Run the `additive` detector over a scan's image cache (N, 3, R, R) uint8.

    Returns a `Detection` whose score is a sample's standardised projection on its pattern divided
    by the pattern's threshold (flagged above 1); with no pattern accepted, the projection on the
    strongest candidate, with an infinite threshold.
    """
    from ssl_guard.detect.mine.scoring import host_concentration, prevalence_guard

    device = torch.device(device)
    n = len(images)
    config = (config or AdditiveConfig()).resolved(n)
    if n < 8:
        return Detection.empty("additive", n)
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    rng = np.random.default_rng(config.seed)

    def stage(name: str, total: int):
        task = progress.add_task(name, total=total) if progress is not None else None
        return (lambda k: progress.advance(task, k)) if task is not None else (lambda k: None)

    clock = time.perf_counter()
    mined = np.sort(rng.choice(n, min(n, config.mining_images), replace=False))
    raw = _features(images, mined, config, device, stage("additive: features", n))
    mean = raw.mean(0)
    side = min(images.shape[-1], config.analysis_resolution)
    seconds["features"] = time.perf_counter() - clock

    # each view searched on its own: neighbours, seeds by triangles, groups grown to a fixed point
    clock = time.perf_counter()
    accepted: list[tuple[int, Group]] = []
    candidates: list[dict] = []
    strongest: tuple[int, Group] | None = None
    strongest_projection = None
    mined_projections: list[np.ndarray] = []
    all_views = views(side, config.levels)
    advance = stage("additive: groups", len(all_views))
    for v, (name, columns) in enumerate(all_views):
        unit = _unit(raw[:, columns], mean[columns])
        sims, idx = neighbours(unit, config.neighbours)
        used = np.zeros(len(mined), bool)
        tried = 0
        for seed in seed_order(sims, idx):
            if tried >= config.seeds:
                break
            if used[seed]:
                continue
            tried += 1
            group = grow(unit, int(seed), idx[seed], config.fdr, config.min_hosts)
            used[seed] = True
            used[group.members] = True
            found = bool(np.isfinite(group.threshold)) and group.hosts >= config.min_hosts
            if strongest is None or group.hosts > strongest[1].hosts:
                strongest = (v, group)
                if not accepted:
                    strongest_projection = project(unit, group.direction, member_rows=group.members)
            if found and any(len(np.intersect1d(group.members, a.members)) > 0.5 * min(len(group.members), len(a.members)) for _, a in accepted):
                continue  # the same signal reached from another seed or view
            if found:
                accepted.append((v, group))
                mined_projections.append(project(unit, group.direction, member_rows=group.members))
            candidates.append({"view": name, "seed": int(mined[seed]), "hosts": group.hosts, "mirrored": group.mirrored, "threshold": group.threshold, "steps": group.steps, "verdict": "accepted" if found else "no excess over the mirrored null"})
        advance(1)
        del unit
    seconds["groups"] = time.perf_counter() - clock

    # an accepted group is re-scored on every view at once, each weighted by how far its hosts
    # stand out there: a trigger spread over several octaves pools their evidence
    clock = time.perf_counter()
    clusters = None if semantic is None else np.asarray(semantic)[mined]
    pooled = [_pool(raw, mean, all_views, group.members, clusters, config) for _, group in accepted]
    for p, (weights, directions, locations, scales, values) in enumerate(pooled):
        mined_projections[p] = values
    seconds["pool"] = time.perf_counter() - clock
    del raw
    details: dict = {"candidates": [c for c in candidates if c["verdict"] == "accepted" or c["hosts"] > 0], "grown": len(candidates), "mined_images": int(len(mined)), "views": [name for name, _ in all_views]}

    # every image projected on each pattern: mined rows from the search, the rest in batches
    clock = time.perf_counter()
    if accepted:
        patterns = accepted
    else:
        patterns = [strongest] if strongest is not None else []
        mined_projections = [strongest_projection] if strongest is not None else []
    projections = np.zeros((n, len(patterns)), np.float64)
    for p, values in enumerate(mined_projections):
        projections[mined, p] = values
    rest = np.setdiff1d(np.arange(n), mined)
    advance = stage("additive: score", len(rest)) if len(rest) else None
    for at in range(0, len(rest), config.batch_size):
        rows = rest[at : at + config.batch_size]
        batch = _features(images, rows, config, device)
        for p, (v, group) in enumerate(patterns):
            if accepted:
                weights, directions, locations, scales, _ = pooled[p]
                projections[rows, p] = _pooled_score(batch, mean, all_views, weights, directions, locations, scales)
            else:
                columns = all_views[v][1]
                projections[rows, p] = _unit(batch[:, columns], mean[columns]) @ group.direction
        if advance is not None:
            advance(len(rows))
    z = np.stack([robust_z(projections[:, p]) for p in range(len(patterns))], 1) if patterns else np.zeros((n, 0))
    seconds["score"] = time.perf_counter() - clock

    if not accepted:
        detection = Detection.empty("additive", n)
        if patterns:
            detection.scores = z[:, 0].astype(np.float32)
        detection.warnings.append("no shared additive signal stands out of the mirrored null: nothing quarantined")
        detection.seconds, detection.details = seconds, details
        return detection

    # each pattern's threshold on the whole scan's projections; scores relative to it
    bank, relative, histograms = [], np.zeros_like(z), []
    base_reference = rng.choice(n, min(n, 2000), replace=False)
    for p, (v, group) in enumerate(accepted):
        threshold, hosts, mirrored = _whole_scan_threshold(z[:, p], config)
        held = bool(np.isfinite(threshold))
        if not held:
            # the mined sample's excess over the mirrored null did not hold on the whole scan: no
            # threshold qualifies there, so the pattern is reported (scored at the sample's
            # threshold, for ranking) and not quarantined
            threshold = float(group.threshold)
        relative[:, p] = z[:, p] / threshold
        host_rows = np.nonzero(z[:, p] >= threshold)[0]
        # the reference: non-hosts of the hosts' semantic clusters (the same content without the
        # trigger), else a random sample
        if semantic is not None:
            labels = np.asarray(semantic)
            same = np.setdiff1d(np.nonzero(np.isin(labels, labels[host_rows]))[0], host_rows)
            reference = rng.choice(same, min(len(same), 2000), replace=False) if len(same) >= len(host_rows) else base_reference
        else:
            reference = base_reference
        delta = mean_difference(images, host_rows, reference)
        pixels, gain = _delta_image(delta)
        evidence = {"view": float(v), "threshold_z": threshold, "hosts": float(len(host_rows)), "fdr": config.fdr, "mirrored_above_threshold": float(mirrored), "amplification": gain, "held_on_scan": float(held), "lookalike_ratio": lookalike_ratio(z[:, p], threshold)}
        evidence.update(saturation_excess(images, host_rows, reference, np.random.default_rng([config.seed, p]), delta=delta))
        histograms.append(_histogram(z[:, p], threshold))
        pixels = evidence_panel(pixels, histograms[-1])
        if semantic is not None and len(host_rows):
            evidence.update(host_concentration(host_rows, semantic, rng))
        resolution = images.shape[-1]
        bank.append(TriggerPattern(pixels=pixels, host=int(host_rows[np.argmax(z[host_rows, p])]) if len(host_rows) else 0, box=(0, 0, resolution, resolution), score=float(np.median(relative[host_rows, p])) if len(host_rows) else 0.0, hosts=int(len(host_rows)), targeted=None if "targeted" not in evidence else bool(evidence["targeted"]), evidence=evidence))
    which = relative.argmax(1)
    scores = relative[np.arange(n), which].astype(np.float32)
    flagged = scores >= 1.0
    raw_flagged = flagged
    flagged, shares, guard_warnings = prevalence_guard(flagged, which, len(accepted), config.prevalence_guard)
    warnings.extend(guard_warnings)
    for p, pattern in enumerate(bank):
        # the patterns reported and not quarantined, each with the reason
        evidence, refusal = pattern.evidence, None
        if not evidence["held_on_scan"]:
            refusal = f"pattern {p}: found in the mined sample, but on the whole scan no threshold leaves its hosts above the mirrored null at fdr {config.fdr}; not quarantined"
        elif evidence["lookalike_ratio"] > config.max_lookalike_ratio:
            refusal = f"pattern {p}: the band just under its threshold holds {evidence['lookalike_ratio']:.2f} images per host beyond the mirrored null (at most {config.max_lookalike_ratio:g}): photos sharing a natural property form a continuum there, copies of one added signal stand apart; not quarantined"
        elif evidence.get("layout"):
            refusal = f"pattern {p} is carried by clipped pixels (saturated share {evidence['saturated_share']:.3f}, above the null's {evidence['saturated_null']:.3f}): photos sharing a layout (a white or black surround), not an overlay; not quarantined"
        if refusal is not None:
            flagged &= which != p
            warnings.append(refusal)
    for p, share in enumerate(shares):
        bank[p].evidence["flagged_share"] = share
        bank[p].hosts = int((raw_flagged & (which == p)).sum())
    details["pattern_of_sample"] = which
    details["histograms"] = histograms
    boxes = np.full((n, 4), -1, np.int32)
    side = images.shape[-1]
    boxes[flagged] = (0, 0, side, side)  # a global trigger covers the whole image
    return Detection("additive", scores, flagged, boxes, 1.0, bank, {}, seconds, warnings, details)


def _whole_scan_threshold(z: np.ndarray, config: AdditiveConfig) -> tuple[float, int, int]:
    """A pattern's threshold measured again on the whole scan's scores (`mirror_threshold`)."""
    return mirror_threshold(z, config.fdr, config.min_hosts)


def _histogram(z: np.ndarray, threshold: float, bins: int = 24) -> dict[str, list[float] | float]:
    """The projections' magnitudes on each side of zero, binned alike: the hosts stand above the
    threshold on the positive side, the negative side is the mirrored null."""
    top = max(float(np.abs(z).max()), threshold * 1.2, 1.0)
    edges = np.linspace(0, top, bins + 1)
    pos, _ = np.histogram(z[z > 0], edges)
    neg, _ = np.histogram(-z[z < 0], edges)
    return {"edges": edges.tolist(), "positive": pos.tolist(), "negative": neg.tolist(), "threshold": float(threshold)}
