"""The `mine` detector: the steps chained, from the scan's image cache to a `Detection`."""

from __future__ import annotations

import time

import numpy as np
import pydantic
import torch

from ssl_guard.detect.mine.agreement import pair_agreement, resampling_tolerance
from ssl_guard.detect.mine.candidates import best_pair_in, group_alignment, triangle_groups
from ssl_guard.detect.mine.descriptors import describe
from ssl_guard.detect.mine.edits import as_float
from ssl_guard.detect.mine.extraction import Pattern, refine, seed_box, seed_template
from ssl_guard.detect.mine.matching import neighbour_pairs
from ssl_guard.detect.mine.plates import Regions, flat_step, plate_groups, smooth_regions
from ssl_guard.detect.mine.scoring import (
    SCALES,
    ProbeCache,
    acceptable,
    border_cut,
    default_min_hosts,
    drop_thin_patterns,
    expected_host_count,
    form_flags,
    flat_noise_floor,
    host_concentration,
    host_threshold,
    has_structure,
    keep_agreeing,
    match_maps,
    null_threshold,
    one_photo_repeated,
    positions_in,
    thumbnails,
    pattern_verdict,
    prevalence_guard,
    residuals,
    scaled,
    screen_threshold,
    variant_threshold,
)
from ssl_guard.detect.result import Detection, TriggerPattern


class MineConfig(pydantic.BaseModel):
    """Settings of the `mine` detector (docs/mine.md gives the reasons for each default)."""

    model_config = pydantic.ConfigDict(extra="forbid")

    keypoints_per_image: int = pydantic.Field(64, ge=4, le=512, description="corners kept per image (docs/mine.md: 64 puts a trigger among them more often than 32 on the dev split)")
    patch: int = pydantic.Field(7, ge=3, le=15, description="side of the colour patch each descriptor samples, px")
    dims: int = pydantic.Field(48, ge=8, le=675, description="whitened descriptor dimensions")
    neighbours: int = pydantic.Field(4, ge=1, le=64, description="nearest keypoints in other images per keypoint (with 64 corners, the pair budget of 32 x 8)")
    window: float = pydantic.Field(0.14, gt=0, le=0.5, description="half-side of the agreement window, share of the scan side")
    mining_images: int = pydantic.Field(20_000, ge=100, description="images sampled for mining; the rest are only scored")
    probe_images: int = pydantic.Field(3_000, ge=100, description="random images each candidate template is matched in while it is tested (with its group's own)")
    screen_images: int = pydantic.Field(750, ge=0, description="images of that sample a seed is first matched in, to reject it early when even a looser line finds too few hosts (a cost budget; 0: no screen)")
    max_candidates: int = pydantic.Field(12, ge=1, description="candidate groups extracted and tested")
    plate_candidates: int = pydantic.Field(4, ge=0, description="candidate groups of repeated smooth regions (plates, gradients) tested besides them")
    min_hosts: int | None = pydantic.Field(None, ge=3, description="fewest hosts a pattern needs; default 0.1% of the data, at least 5")
    alpha: float = pydantic.Field(0.01, gt=0, lt=1, description="chance of one false host per pattern and scan (the null's Bonferroni level)")
    max_lookalike_ratio: float = pydantic.Field(0.5, ge=0, description="images in the band just above the threshold per host; above it, a natural continuum")
    prevalence_guard: float = pydantic.Field(0.2, gt=0, le=1, description="a pattern in more than this share of the data is reported, not quarantined")
    batch_size: int = pydantic.Field(256, ge=1)
    report_maps: int = pydantic.Field(48, ge=0, description="match maps kept for the report's top suspects")
    seed: int = 0

    def resolved(self, n: int) -> MineConfig:
        """Fill the size-derived defaults for a dataset of `n` images."""
        values = self.model_dump()
        if values["min_hosts"] is None:
            values["min_hosts"] = default_min_hosts(n, self.mining_images)
        return MineConfig(**values)


# the most memory verification's cached sample may take (`ProbeCache`; 3,000 images at 64 px
# take 295 MB, on a 108-px native canvas 840 MB)
CACHE_BYTES = 1 << 30


def _test_pattern(images: np.ndarray, probe: np.ndarray, sampled: int, total: int, template: torch.Tensor, config: MineConfig, device: torch.device, tolerance: float, photos: np.ndarray | None = None, cache: ProbeCache | None = None, known: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """Match `template` in the images `probe` (its first `sampled` rows a random sample of the
    scan, the rest the candidate group's images); the null is fitted on the random sample only.

    Both matched forms (`scoring.matched_form`: pixels as they are, and smoothed) are tested; the
    smoothed one is kept when its null leaves more hosts below the threshold and the template
    stays acceptable in that form (threshold under 1, look-alike band no fuller than allowed).
    `null["smoothed"]` says which. `known`: rows, residuals and corners already computed for
    this template (by `_screen`), which are not matched again."""
    smoothed = form_flags(template)
    residual = np.empty((len(probe), len(smoothed)), np.float32)
    corner = np.empty((len(probe), len(smoothed), 2), np.int32)
    where = positions_in(known[0], probe) if known is not None else np.full(len(probe), -1)
    seen = where >= 0
    if seen.any():
        residual[seen], corner[seen] = known[1][where[seen]], known[2][where[seen]]
    if not seen.all():
        residual[~seen], corner[~seen] = residuals(images, probe[~seen], [template] * len(smoothed), config.batch_size, device, smoothed=smoothed, photos=photos, cache=cache)
    forms = []
    for f in range(len(smoothed)):
        column = residual[:, f]
        null = null_threshold(column[:sampled], config.alpha, total, others=column[sampled:])
        if null["threshold"] > flat_noise_floor(template, tolerance, smoothed[f]) and has_structure(template, tolerance):
            # a smooth template (a gradient, a plate): a flat patch of its mean colour, plus the
            # scan's resampling noise, would pass the line, so a host must also agree with the
            # template pixel for pixel
            for _ in range(3):
                kept = keep_agreeing(images, probe, column, corner[:, f], template, tolerance, null["threshold"])
                if np.array_equal(np.isinf(kept), np.isinf(column)):
                    break
                column = kept
                null = null_threshold(column[:sampled], config.alpha, total, others=column[sampled:])
            null["structured"] = 1.0
        forms.append(({**null, "smoothed": float(f)}, column, corner[:, f]))

    limit = config.max_lookalike_ratio
    if len(forms) == 2 and acceptable(forms[1][0], limit) and (not acceptable(forms[0][0], limit) or forms[1][0]["hosts"] > forms[0][0]["hosts"]):
        return forms[1]
    return forms[0]


def _screen(images: np.ndarray, probe: np.ndarray, sampled: int, total: int, full_sample: int, template: torch.Tensor, config: MineConfig, device: torch.device, photos: np.ndarray | None = None, cache: ProbeCache | None = None) -> tuple[bool, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Whether a seed template may have the 3 hosts its full test needs (`_test_pattern`).

    `probe`: its first `sampled` rows a random subset of the full test's sample of `full_sample`
    images, the rest the candidate group's images. In each matched form the line is the looser
    `scoring.screen_threshold`, no pixel-agreement test is applied (it only removes hosts), and
    the subset's hosts are scaled up to the full sample. False (reject) only when no form reaches
    3. Also returns the rows, residuals and corners it computed, which the full test reuses.

    The screen is a sampling shortcut, not a bound: hosts in the part of the sample it does not
    match are unseen. A seed that its group matches fewer than 3 times and that has h hosts in
    the rest of the sample is rejected when none of them falls in the subset, with probability
    about (1 − sampled / full_sample)^h: 0.42 for h = 3 at the defaults, 0.013 for h = 15 (a
    trigger at 0.5% of the data), 2e-4 for h = 30. A group whose own copies match the seed (3 or
    more) is never rejected."""
    smoothed = form_flags(template)
    residual, corner = residuals(images, probe, [template] * len(smoothed), config.batch_size, device, smoothed=smoothed, photos=photos, cache=cache)
    passed = False
    for f in range(len(smoothed)):
        column = residual[:, f]
        line = screen_threshold(column[:sampled], config.alpha, total, full_sample)
        found = (column[:sampled] < line).sum() * full_sample / max(1, sampled) + (column[sampled:] < line).sum()
        passed = passed or found >= 3
    return passed, (probe, residual, corner)


def count_mined_hosts(images: np.ndarray, probe_hosts: np.ndarray, mined: np.ndarray, probe: np.ndarray, template: torch.Tensor, null: dict[str, float], tolerance: float, config: MineConfig, device: torch.device, photos: np.ndarray | None = None) -> int:
    """A template's hosts among all the mined images, under its verification line: the probe's
    hosts that are mined, plus the mined images outside the probe, matched now in the form the
    test kept (and, for a smooth template, agreeing pixel for pixel as there).

    Verification extrapolates a pattern's host count from its probe (`expected_host_count`).
    With few copies in a large scan that estimate is noisy and low: 50 copies in 50,000 images
    leave about 3 in the 3,000-image probe and 20 among the 20,000 mined images, of which a
    candidate group may hold only a few (test `opaque-cifar-train-0.1pct`: groups of 6-15 with
    3-4 hosts found, refused as "fewer than 20 hosts"). Counting among the mined images, a random
    sample of the scan, replaces that guess with a measurement; it runs only for a template
    that the count alone refuses."""
    rest = np.setdiff1d(mined, probe)
    counted = int(np.isin(probe_hosts, mined).sum())
    if len(rest) == 0:
        return counted
    residual, corner = residuals(images, rest, [template], config.batch_size, device, smoothed=[bool(null.get("smoothed", 0.0))], photos=photos)
    column = residual[:, 0]
    if null.get("structured"):
        column = keep_agreeing(images, rest, column, corner[:, 0], template, tolerance, null["threshold"])
    return counted + int((column < null["threshold"]).sum())


def _inside_frame(corners: np.ndarray, h: int, w: int, size: int) -> np.ndarray:
    """Which h x w windows, top-left `corners` (y, x), lie wholly inside a `size`-px image."""
    return (corners[:, 0] >= 0) & (corners[:, 1] >= 0) & (corners[:, 0] + h <= size) & (corners[:, 1] + w <= size)


def _seeds(images: np.ndarray, group: np.ndarray, points, a: np.ndarray, b: np.ndarray, shift: np.ndarray, evidence: np.ndarray, region: np.ndarray):
    """A group's seed templates, best first: the block its members share once aligned to one hub
    image (`group_alignment`; the hub's own copy over it), then the agreeing regions of its three
    strongest pairs (one pair's agreement, which can take in background both happen to share).
    `shift`: (n, 2) the translation of each correspondence, point b minus point a."""
    image_a, image_b = points.image[a], points.image[b]
    hub, members, offsets = group_alignment(group, image_a, image_b, shift, evidence)
    if len(members) >= 3:
        inside = np.nonzero(((image_a == hub) & np.isin(image_b, group)) | ((image_b == hub) & np.isin(image_a, group)))[0]
        pair = inside[np.argmax(evidence[inside])]
        kp = a[pair] if image_a[pair] == hub else b[pair]
        template = seed_template(images, hub, float(points.x[kp]), float(points.y[kp]), region[pair])
        if template is not None:
            size = images.shape[-1]
            x0, y0, _, _ = seed_box(size, float(points.x[kp]), float(points.y[kp]), region[pair])
            corners = np.round(np.stack([y0 + offsets[:, 1], x0 + offsets[:, 0]], 1)).astype(np.int64)
            inside_frame = _inside_frame(corners, *template.shape[1:], size)
            if inside_frame[0] and inside_frame.sum() >= 3:  # the hub (first member) among them
                yield "aligned", refine(images, members[inside_frame], corners[inside_frame], template, copy_of=0)
    for pair in best_pair_in(group, image_a, image_b, evidence, 3):
        yield "pair", seed_template(images, int(image_a[pair]), float(points.x[a[pair]]), float(points.y[a[pair]]), region[pair])


def _plate_seeds(images: np.ndarray, regions: Regions, members: np.ndarray):
    """A plate group's seed templates: the block its members share once their smooth regions are
    centred on the first (the cluster's centre), that region's image over it, and the region's
    own box in that image."""
    box = regions.box[members]
    x, y, w, h = (int(v) for v in box[0])
    template = as_float(images[regions.image[members[0]] : regions.image[members[0]] + 1, :, y : y + h, x : x + w])[0].contiguous()
    size = images.shape[-1]
    # each member's top-left corner of the hub's box, with the regions' centres put together
    corners = np.round(np.stack([box[:, 1] + box[:, 3] / 2 - h / 2, box[:, 0] + box[:, 2] / 2 - w / 2], 1)).astype(np.int64)
    inside_frame = _inside_frame(corners, h, w, size)
    if inside_frame[0] and inside_frame.sum() >= 3:
        yield "plate-aligned", refine(images, regions.image[members][inside_frame], corners[inside_frame], template, copy_of=0)
    yield "plate", template


def detect_mine(images: np.ndarray, semantic: np.ndarray | None = None, config: MineConfig | None = None, device: str | torch.device = "cpu", progress=None, photo_side: int | None = None, photos: np.ndarray | None = None) -> Detection:
    """Run the `mine` detector over a scan's image cache.

    Args:
        images: (N, 3, R, R) uint8 (np.memmap), the scan-resolution images.
        semantic: (N,) int semantic cluster of each image, for the targeted / untargeted readout;
            None skips it.
        progress: optional rich Progress; one task per step.
        photo_side: the side, in pixels of `images`, that settings given as a share of the side
            (`window`) refer to; default the images' side. The native view of photos of mixed
            sizes (`ssl_guard.detect.native`) passes the scan resolution: its canvas is larger
            than the median photo, which the resolution measures.
        photos: (N, 4) x0, y0, w, h of each photo on its canvas (the native view); keypoints are
            taken on the photo only, not on the reflected padding, and a pattern is matched only
            at windows on the photo (`scoring.on_photo`).

    Returns:
        a `Detection`; a sample's score is 1 at an exact copy of a bank pattern, 0.5 at the
        pattern's null threshold (flagged above it), 0 at twice the threshold's residual.
    """
    device = torch.device(device)
    n = len(images)
    config = (config or MineConfig()).resolved(n)
    if n == 0:
        return Detection.empty("mine", 0)
    seconds: dict[str, float] = {}
    warnings: list[str] = []
    rng = np.random.default_rng(config.seed)
    resolution = images.shape[-1]

    def stage(name: str, total: int):
        task = progress.add_task(name, total=total) if progress is not None else None
        return (lambda k: progress.advance(task, k)) if task is not None else (lambda k: None)

    clock = time.perf_counter()
    mined = np.sort(rng.choice(n, min(n, config.mining_images), replace=False))
    points = describe(images, mined, config.keypoints_per_image, config.patch, config.dims, stage("mine: keypoints", len(mined)), photos)
    seconds["keypoints"] = time.perf_counter() - clock

    clock = time.perf_counter()
    a, b, _ = neighbour_pairs(points, config.neighbours)
    seconds["matching"] = time.perf_counter() - clock

    clock = time.perf_counter()
    tolerance = resampling_tolerance(images, rng.choice(n, min(n, 512), replace=False))
    half = max(3, int(round(config.window * (photo_side or resolution))))
    evidence, region = pair_agreement(images, points, a, b, tolerance, half, advance=stage("mine: agreement", len(a)))
    seconds["agreement"] = time.perf_counter() - clock

    clock = time.perf_counter()
    image_a, image_b = points.image[a], points.image[b]
    shift = np.stack([points.x[b] - points.x[a], points.y[b] - points.y[a]], 1)
    groups = triangle_groups(image_a, image_b, evidence, n, budget=len(mined), min_size=3)
    seconds["groups"] = time.perf_counter() - clock
    # smooth regions that repeat exactly: the candidates of triggers with few corners of their own
    clock = time.perf_counter()
    # (an even subsample of the mined images: the random stream, and with it the probe, stays as
    # it was without this step)
    plates: list[tuple[np.ndarray, np.ndarray]] = []
    if config.plate_candidates:
        flat = flat_step(images, mined[:: max(1, len(mined) // 256)])
        regions = smooth_regions(images, mined, flat, 4, 2 * half)
        plates = plate_groups(regions, 255 * tolerance, 3, top=config.plate_candidates)
    seconds["plates"] = time.perf_counter() - clock
    clock = time.perf_counter()
    advance = stage("mine: verify", min(len(groups), config.max_candidates) + len(plates))
    sample = np.sort(rng.choice(n, min(n, config.probe_images), replace=False))
    # every template tested is matched against this sample: its float and smoothed pixels are
    # made once (same results; bench/RESULTS.md, "Verification's sample made once"), unless they
    # would take more than CACHE_BYTES
    cache = ProbeCache(images, sample, device, config.batch_size) if ProbeCache.nbytes(len(sample), images.shape[1:]) <= CACHE_BYTES else None
    # a seed is first matched in an even subset of that sample (itself random), and rejected
    # there when even a looser line finds too few hosts (`_screen`)
    screened = sample[:: max(1, -(-len(sample) // config.screen_images))] if 0 < config.screen_images < len(sample) else None
    accepted: list[tuple[Pattern, dict[str, float]]] = []
    report: list[dict] = []
    covered: set[int] = set()
    cells = None  # the scan's thumbnails, made when a first pattern is accepted
    # candidates to test, strongest first; a group that yields a pattern is tested again on the
    # members that pattern does not explain (`remainder`), since chance edges can join the hosts
    # of two triggers into one group; those retries are outside the `max_candidates` budget (at
    # most one per accepted pattern)
    queue: list[tuple[np.ndarray, bool, np.ndarray | None]] = [(g, False, None) for g in groups[: config.max_candidates]]
    queue += [(np.unique(rows), False, members) for rows, members in plates]
    while queue:
        group, remainder, plate = queue.pop(0)
        if not remainder:
            advance(1)
        if len(covered.intersection(group.tolist())) > 0.5 * len(group):
            continue  # a part of a pattern already in the bank
        verdict, evidence_row, pattern = "no seed region", {"group": float(len(group)), "remainder": float(remainder), "plate": float(plate is not None)}, None
        probe = np.concatenate([sample, np.setdiff1d(group, sample)])
        seeds = _plate_seeds(images, regions, plate) if plate is not None else _seeds(images, group, points, a, b, shift, evidence, region)
        for kind, template in seeds:
            if template is None:
                continue
            known = None
            if screened is not None:
                passed, known = _screen(images, np.concatenate([screened, np.setdiff1d(group, screened)]), len(screened), n, len(sample), template, config, device, photos, cache)
                if not passed:
                    verdict = "seed matches too few images (screened on a subset of the probe)"
                    continue
            null, residual, corner = _test_pattern(images, probe, len(sample), n, template, config, device, tolerance, photos, cache, known)
            hosts = residual < null["threshold"]
            if hosts.sum() < 3:
                verdict = "seed matches too few images"
                continue
            # refine on the hosts found, re-match, and repeat while the host set grows: each
            # pass sees more copies, so the shared block and its median sharpen
            refined, distinct = None, False
            for _ in range(3):
                better = refine(images, probe[hosts], corner[hosts], template if refined is None else refined)
                if better is None:
                    break
                distinct = True  # the hosts agree on a block and not around it
                trial_null, trial_residual, trial_corner = _test_pattern(images, probe, len(sample), n, better, config, device, tolerance, photos, cache)
                trial_hosts = trial_residual < trial_null["threshold"]
                if trial_hosts.sum() < 3 or (refined is not None and trial_hosts.sum() <= hosts.sum()):
                    break
                refined, null, residual, corner, hosts = better, trial_null, trial_residual, trial_corner, trial_hosts
            if refined is None:
                if not distinct:
                    verdict = "hosts agree around the seed as much as on it"
                    continue
                # the hosts share a block, but its median matches fewer of them than the seed
                # did (copies of a fine texture at other sub-pixel phases blur in the median):
                # the seed, as tested, is the candidate
                refined = template
            h, w = refined.shape[1:]
            boxes = np.stack([corner[hosts, 1], corner[hosts, 0], corner[hosts, 1] + w, corner[hosts, 0] + h], 1).astype(np.int32)
            pattern = Pattern(refined, probe[hosts], boxes)
            evidence_row = {"group": float(len(group)), "remainder": float(remainder), "plate": float(plate is not None), **null, "height": float(h), "width": float(w), "tolerance": tolerance, "host_residual": float(np.median(residual[hosts])) if hosts.any() else float("nan")}
            # hosts in the whole scan (seen, the sample's share, the mined images' share)
            expected_hosts = expected_host_count(probe[hosts], int(hosts[: len(sample)].sum()), len(sample), n, mined)
            evidence_row["expected_hosts"] = expected_hosts
            evidence_row["aligned_seed"] = float(kind in ("aligned", "plate-aligned"))
            verdict = pattern_verdict(expected_hosts, null, config.min_hosts, config.max_lookalike_ratio)
            if verdict.startswith("fewer than") and acceptable(null, config.max_lookalike_ratio):
                # only the host count, extrapolated from the probe, refuses it: count the hosts
                # among all the mined images instead (`count_mined_hosts`)
                counted = count_mined_hosts(images, probe[hosts], mined, probe, refined, null, tolerance, config, device, photos)
                expected_hosts = max(expected_hosts, counted * n / len(mined))
                evidence_row.update(expected_hosts=expected_hosts, mined_hosts_counted=float(counted))
                verdict = pattern_verdict(expected_hosts, null, config.min_hosts, config.max_lookalike_ratio)
            if verdict == "accepted":
                break
        if verdict == "accepted":
            # natural near-duplicates (one photo several times in a dataset) share every patch
            if cells is None:
                cells = thumbnails(images)
            repeated = one_photo_repeated(pattern.hosts, pattern.boxes, cells, resolution, semantic, config.alpha, pool=probe)
            evidence_row.update(repeated)
            if repeated["repeated"]:
                verdict = "rejected: the hosts are copies of one photo (alike outside the match too), not unrelated images"
        if semantic is not None and pattern is not None and len(pattern.hosts):
            evidence_row.update(host_concentration(pattern.hosts, semantic, rng))
        report.append({**evidence_row, "verdict": verdict})
        if verdict == "accepted":
            accepted.append((pattern, evidence_row))
            covered.update(pattern.hosts.tolist())
            rest = np.setdiff1d(group, np.fromiter(covered, np.int64, len(covered)))
            if not remainder and len(rest) >= 3:
                queue.insert(0, (rest, True, None))
    del cache
    seconds["verify"] = time.perf_counter() - clock
    details = {"candidates": report, "keypoints": len(points), "pairs": len(a), "mined_images": len(mined), "tolerance": tolerance}

    if not accepted:
        detection = Detection.empty("mine", n, threshold=0.5)
        detection.warnings.append("no repeated pattern passed verification: nothing quarantined")
        detection.seconds, detection.details = seconds, details
        return detection

    clock = time.perf_counter()
    templates = [p.template for p, _ in accepted]
    smoothed = [bool(e.get("smoothed", 0.0)) for _, e in accepted]
    # each pattern at its own scale, at `SCALES`, and without its one-pixel border (`border_cut`,
    # where the pattern has one), matched in one pass over the scan; a form's name is its scale,
    # or "cut"
    forms: list[tuple[torch.Tensor, int, float | str]] = [(t, t_index, 1.0) for t_index, t in enumerate(templates)]
    forms += [(scaled(t, s), t_index, s) for t_index, t in enumerate(templates) for s in SCALES]
    forms += [(cut, t_index, "cut") for t_index, t in enumerate(templates) if (cut := border_cut(t, smoothed[t_index])) is not None]
    variants = np.bincount([f[1] for f in forms[len(accepted):]], minlength=len(accepted))
    residual, corner = residuals(images, np.arange(n), [f[0] for f in forms], config.batch_size, device, stage("mine: score", n), smoothed=[smoothed[f[1]] for f in forms], photos=photos)
    # a smooth pattern's line can reach a flat patch's residual of 1: there, as in verification,
    # only windows that agree with the template pixel for pixel are hosts (`keep_agreeing`)
    for t, (_, row) in enumerate(accepted):
        if row.get("structured"):
            residual[:, t] = keep_agreeing(images, np.arange(n), residual[:, t], corner[:, t], templates[t], tolerance, row["threshold"])
    # the Bonferroni line of verification, widened to the Bayes line between the hosts and the
    # null now that every image is scored (`scoring.host_threshold`); for a smooth pattern (its
    # null's line reached its flat-noise floor in verification) the windows the wider line takes
    # in must agree too
    for t, (_, row) in enumerate(accepted):
        row.update(host_threshold(residual[:, t], row["threshold"]))
        if row.get("structured"):
            residual[:, t] = keep_agreeing(images, np.arange(n), residual[:, t], corner[:, t], templates[t], tolerance, row["threshold"])
    lines = np.zeros(len(forms), np.float32)  # 0: a variant not kept
    lines[: len(accepted)] = [e["threshold"] for _, e in accepted]
    for f in range(len(accepted), len(forms)):
        t = forms[f][1]
        # the false-host budget α is shared by a pattern's variants
        kept = variant_threshold(residual[:, f], residual[:, t] < lines[t], config.alpha / variants[t], config.max_lookalike_ratio)
        if kept is not None:
            lines[f] = kept["threshold"]
            name = "threshold_cut" if forms[f][2] == "cut" else f"threshold_at_scale_{forms[f][2]:g}"
            accepted[t][1][name] = kept["threshold"]
            if accepted[t][1].get("structured"):
                # a smooth pattern's scaled template: the same agreement test
                residual[:, f] = keep_agreeing(images, np.arange(n), residual[:, f], corner[:, f], forms[f][0], tolerance, float(lines[f]))
    form_relative = np.where(lines[None, :] > 0, np.clip(1.0 - residual / (2 * np.maximum(lines, 1e-9)[None, :]), 0.0, 1.0), 0.0)
    owner = np.array([f[1] for f in forms])
    best_form = np.stack([np.where(owner == t, form_relative, -1.0).argmax(axis=1) for t in range(len(accepted))], 1)
    relative = np.take_along_axis(form_relative, best_form, axis=1)
    # the host count was extrapolated from a sample during verification; the scan's own count is
    # now known, and a pattern with fewer than `min_hosts` there is a near-duplicate, not a
    # trigger: it is dropped, and its images are scored by the patterns left
    alive, counts, thin_warnings = drop_thin_patterns(relative, config.min_hosts)
    warnings.extend(thin_warnings)
    relative = np.where(alive[None, :], relative, 0.0)
    which = relative.argmax(axis=1)
    scores = relative[np.arange(n), which].astype(np.float32)
    flagged = scores > 0.5
    used = best_form[np.arange(n), which]
    y, x = corner[np.arange(n), used, 0], corner[np.arange(n), used, 1]
    sizes = np.array([f[0].shape[1:] for f in forms])[used]
    boxes = np.stack([x, y, x + sizes[:, 1], y + sizes[:, 0]], 1).astype(np.int32)
    for (_, row), found in zip(accepted, counts):
        row["scan_hosts"] = float(found)
    raw_flagged = flagged
    flagged, shares, guard_warnings = prevalence_guard(flagged, which, len(accepted), config.prevalence_guard)
    warnings.extend(guard_warnings)
    boxes[~flagged] = -1
    bank = []
    for t, (pattern, row) in enumerate(accepted):
        row["flagged_share"] = shares[t]
        bank.append(TriggerPattern(
            pixels=(pattern.template.clamp(0, 1) * 255).round().byte().cpu().numpy(),
            host=int(pattern.hosts[0]),
            box=tuple(int(v) for v in pattern.boxes[0]),
            score=float(1.0 - row["host_residual"] / max(row["threshold"], 1e-6) / 2),
            hosts=int((raw_flagged & (which == t)).sum()),
            targeted=None if "targeted" not in row else bool(row["targeted"]),
            evidence=row,
        ))
    # each map shows the form (pattern and scale) the sample's score came from
    maps = match_maps(images, np.argsort(-scores, kind="stable")[: config.report_maps], [f[0] for f in forms], used, lines, device, [smoothed[f[1]] for f in forms], photos)
    seconds["score"] = time.perf_counter() - clock
    details["pattern_of_sample"] = which
    return Detection("mine", scores, flagged, boxes, 0.5, bank, maps, seconds, warnings, details)
