"""Cluster-activation detectors: PoisonCAM (arXiv 2312.07955) and the PatchSearch baseline (CVPR 2023).

`detect_clusters` runs stages 3-7 of the pipeline (docs/architecture.md) on embeddings the pipeline has already computed:

    cluster (cluster.py) -> search: localize (masking.py | gradcam.py) + flip test (flip.py),
    pruned cluster by cluster (search.py) -> classify all (classifier.py) -> decide (decide.py)

The two methods differ only in the localizer: PoisonCAM occludes a grid of windows and reads the
drop of the cluster activation; PatchSearch takes Grad-CAM of the cluster logit. Clusters, flip
test, classifier and decision are shared, so the two compare on identical inputs.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ssl_guard.detect import classifier as clf
from ssl_guard.detect.cluster import ClusterHead, default_clusters, mean_embedding, reference_rows, spherical_kmeans
from ssl_guard.detect.decide import calibrate_threshold, decide
from ssl_guard.detect.flip import flip_test
from ssl_guard.detect.gradcam import DEFAULT_STAGE, gradcam_windows, stage_module
from ssl_guard.detect.masking import box_masks, cluster_activation_masking, default_stride, default_windows, fill_images, window_boxes
from ssl_guard.detect.result import Detection, TriggerPattern
from ssl_guard.detect.search import Candidate, iterative_search, planned_candidates
from ssl_guard.errors import ConfigError

if TYPE_CHECKING:
    from rich.progress import Progress

Method = Literal["poisoncam", "patchsearch"]


def default_flip_refs(n: int, clusters: int) -> int:
    """Flip-test references: four per cluster, 32 to 1,000, never more than n.

    PatchSearch uses 1,000 (one per cluster); the CPU-scaled anchor setting is 200 for 50 clusters.
    A flip rate over fewer than ~32 references is too coarse to separate a trigger from chance.
    """
    return int(min(n, max(32, min(1000, 4 * clusters))))


class ClusterMaskingConfig(BaseModel):
    """Settings of `detect_clusters`. `None` means derived from the dataset size and resolution by
    `resolved(n, resolution)`; every derived value is reported in the detection's details."""

    model_config = ConfigDict(extra="forbid")

    clusters: int | None = Field(None, ge=1, description="k-means clusters; default ~n/100, 1,000 at most")
    kmeans_iters: int = Field(20, ge=1)
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the cluster activation")
    windows: list[float] | None = Field(None, description="masking window sides, fractions of the image side")
    stride: float | None = Field(None, gt=0, le=1, description="masking stride, fraction of the side")
    fill: Literal["blur", "mean"] = Field("blur", description="what an occluded window shows")
    flip_refs: int | None = Field(None, ge=1, description="flip-test reference images")
    flip_floor: float = Field(0.2, ge=0, le=1, description="least flip rate that verifies a window")
    flip_outlier: float = Field(6.0, ge=0, description="robust z-score over the first round a verified window must reach")
    search_per_round: int = Field(2, ge=1)
    prune_fraction: float = Field(0.25, gt=0, lt=1)
    bank_size: int = Field(20, ge=1)
    classifier_models: int = Field(5, ge=1)
    classifier_steps: int | None = Field(None, ge=1)
    classifier_batch: int = Field(32, ge=2)
    classifier_width: int = Field(16, ge=4)
    drop_floor: float = Field(0.1, ge=0, le=1, description="least activation drop when the window is occluded")
    control_ratio: float = Field(0.5, ge=0, le=1, description="a verified window flips at least 1/ratio times its control window")
    target_fpr: float = Field(0.01, gt=0, lt=1, description="held-out false-positive rate the threshold is set to, at most")
    alpha: float = Field(0.01, gt=0, lt=1, description="chance of one false flag by the classifier in the whole scan (the threshold is also at least the negatives' Bonferroni null)")
    min_classifier_recall: float = Field(0.5, ge=0, le=1, description="held-out recall the classifier needs before its flags are used")
    min_classifier_auroc: float = Field(0.9, ge=0, le=1, description="held-out AUROC the classifier needs before its flags are used")
    fail_rate_guard: float = Field(0.2, gt=0, le=1, description="largest share of the data that may be flagged")
    gradcam_stage: int = Field(DEFAULT_STAGE, ge=1, description="encoder stage Grad-CAM reads (patchsearch)")
    max_batch: int = Field(512, ge=1, description="images per forward pass")
    max_maps: int = Field(64, ge=0, description="activation maps kept for the report")
    seed: int = 0

    @field_validator("windows")
    @classmethod
    def _windows_in_range(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and (not v or any(not 0 < w <= 1 for w in v)):
            raise ValueError("windows must be a non-empty list of fractions in (0, 1]")
        return v

    def resolved(self, n: int, resolution: int) -> "ClusterMaskingConfig":
        """A copy with every `None` filled in for `n` images of side `resolution`."""
        clusters = min(self.clusters, n) if self.clusters else default_clusters(n)
        windows = self.windows or default_windows(resolution)
        stride = self.stride or default_stride(resolution, windows)
        return self.model_copy(
            update={
                "clusters": max(1, clusters),
                "windows": windows,
                "stride": stride,
                "flip_refs": min(n, self.flip_refs) if self.flip_refs else default_flip_refs(n, clusters),
                "classifier_steps": self.classifier_steps or clf.default_steps(n),
            }
        )


def detect_clusters(
    images: np.ndarray,
    embeddings: np.ndarray,
    encoder: torch.nn.Module,
    config: ClusterMaskingConfig,
    method: Method = "poisoncam",
    device: str | torch.device = "cpu",
    progress: "Progress | None" = None,
) -> Detection:
    """Find poisoned rows of `images` with cluster activation masking (or Grad-CAM, `patchsearch`).

    images:     (N, 3, R, R) uint8, typically a read-only memmap; only the rows needed are read.
    embeddings: (N, D) float16, L2-normalised rows of `encoder(images / 255)`.
    encoder:    torch Module, (B, 3, R, R) float in [0, 1] -> (B, D); `feature_maps(x, stages)`
                is needed for `patchsearch`.
    Returns a `Detection` whose scores are the poison classifier's probabilities (1.0 for images
    whose own window passed the flip test) or, when no window passed, the flip rates of the
    searched images (0 elsewhere) with nothing flagged.
    """
    if method not in ("poisoncam", "patchsearch"):
        raise ConfigError(f"unknown cluster detector {method!r}", "use poisoncam or patchsearch")
    n = _check_inputs(images, embeddings, encoder)
    if n == 0:
        det = Detection.empty(method, 0)
        det.warnings.append("empty dataset: nothing to scan")
        return det
    resolution = int(images.shape[-1])
    cfg = config.resolved(n, resolution)
    run = _Run(images, cfg, method, torch.device(device), progress)
    with _eval_on(encoder, run.device):
        return run.detect(embeddings, encoder)


def _check_inputs(images: np.ndarray, embeddings: np.ndarray, encoder: torch.nn.Module) -> int:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
        raise ConfigError(f"images must be (N, 3, R, R), got {tuple(images.shape)}", "embed the dataset again with this version")
    if images.dtype != np.uint8:
        raise ConfigError(f"images must be uint8, got {images.dtype}", "embed the dataset again with this version")
    if embeddings.ndim != 2 or len(embeddings) != len(images):
        raise ConfigError(
            f"{len(embeddings)} embeddings for {len(images)} images",
            "the run folder is inconsistent; rerun the embed stage",
        )
    expected = getattr(getattr(encoder, "config", None), "resolution", None)
    if expected is not None and len(images) and int(expected) != images.shape[-1]:
        raise ConfigError(
            f"images are {images.shape[-1]} px but the encoder expects {expected} px",
            "embed the dataset at the encoder's resolution",
        )
    return len(images)


@contextmanager
def _eval_on(encoder: torch.nn.Module, device: torch.device):
    """Put the encoder in eval mode on `device` for the call, then restore its mode and device."""
    was_training = encoder.training
    home = next((p.device for p in encoder.parameters()), device)
    encoder.eval().to(device)
    try:
        yield
    finally:
        encoder.to(home).train(was_training)


@dataclass
class _Verified:
    threshold: float
    null_median: float
    null_mad: float


class _Run:
    """State of one `detect_clusters` call: the images, the resolved config, timers and counters."""

    def __init__(self, images: np.ndarray, cfg: ClusterMaskingConfig, method: Method, device: torch.device, progress) -> None:
        self.images = images
        self.cfg = cfg
        self.method = method
        self.device = device
        self.progress = progress
        self.n = len(images)
        self.resolution = int(images.shape[-1])
        self.seconds = {"cluster": 0.0, "localize": 0.0, "flip": 0.0, "classify": 0.0, "decide": 0.0}
        self.forwards = {"localize": 0, "flip": 0}
        self.localized = 0
        self.warnings: list[str] = []
        self.details: dict[str, object] = {}
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)

    # ---------------------------------------------------------------- data access

    def load(self, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), 3, R, R) float in [0, 1] on the device, in the order of `rows`."""
        rows = np.asarray(rows, np.int64)
        order = np.argsort(rows, kind="stable")
        data = torch.from_numpy(np.ascontiguousarray(self.images[rows[order]]))
        x = data.to(self.device).float().div_(255)
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        return x[torch.as_tensor(inverse, device=self.device)]

    def _task(self, name: str, total: int):
        return self.progress.add_task(name, total=total) if self.progress is not None else None

    def _advance(self, task, amount: int = 1) -> None:
        if task is not None:
            self.progress.advance(task, amount)

    # ---------------------------------------------------------------- stages

    def detect(self, embeddings: np.ndarray, encoder: torch.nn.Module) -> Detection:
        cfg = self.cfg
        t0 = time.perf_counter()
        task = self._task("cluster", 1)
        # clustered and read around the data's mean embedding (ClusterHead explains why)
        centre = mean_embedding(embeddings)
        clustering = spherical_kmeans(embeddings, cfg.clusters, cfg.kmeans_iters, cfg.seed, centre=centre)
        self._advance(task)
        self.seconds["cluster"] = time.perf_counter() - t0
        sizes = clustering.sizes()
        nonempty = int((sizes > 0).sum())
        self.details.update(
            method=self.method,
            clusters=int(clustering.k),
            nonempty_clusters=nonempty,
            largest_cluster=int(sizes.max()),
            windows_px=[round(w * self.resolution) for w in cfg.windows],
            stride_px=max(1, round(cfg.stride * self.resolution)),
            fill=cfg.fill,
            config=cfg.model_dump(),
        )
        if nonempty < 2:
            self.warnings.append(
                "the embeddings form a single cluster: cluster activation masking needs at least two "
                "clusters, so nothing was searched or flagged (low confidence: the data may be too small or uniform)"
            )
            return self._finish(np.zeros(self.n, np.float32), np.zeros(self.n, bool), np.full((self.n, 4), -1, np.int32), float("inf"), [], {})

        self.head = ClusterHead(encoder, clustering.centroids, cfg.temperature, centre=centre).to(self.device).eval()
        self.details["mean_embedding_norm"] = float(np.linalg.norm(centre))
        if self.method == "poisoncam":
            self.boxes = window_boxes(self.resolution, cfg.windows, cfg.stride)
            self.details["windows_per_image"] = int(len(self.boxes))
        else:
            self.stage = stage_module(encoder, cfg.gradcam_stage, self.resolution)
            self.gradcam_window = max(1, round(max(cfg.windows) * self.resolution))
            self.details["gradcam"] = {"stage": cfg.gradcam_stage, "window_px": self.gradcam_window}

        t0 = time.perf_counter()
        ref_rows = reference_rows(clustering, cfg.flip_refs)
        # kept as uint8: the flip test converts them chunk by chunk
        self.refs = torch.from_numpy(np.array(self.images[ref_rows])).to(self.device)
        self.ref_clusters = torch.cat(
            [self.head.assign(self.refs[i : i + cfg.max_batch].float() / 255) for i in range(0, len(self.refs), cfg.max_batch)]
        ).cpu().numpy()
        self.forwards["flip"] += len(ref_rows)
        self.seconds["flip"] += time.perf_counter() - t0
        self.details["flip_refs"] = int(len(ref_rows))

        planned = planned_candidates(sizes, cfg.search_per_round, cfg.prune_fraction)
        search_task = self._task(f"search ({self.method})", planned)
        search = iterative_search(
            clustering.members(),
            self.score_rows,
            cfg.search_per_round,
            cfg.prune_fraction,
            self.rng,
            on_round=lambda _r, scored: self._advance(search_task, scored),
        )
        if search_task is not None:
            self.progress.update(search_task, total=len(search.candidates), completed=len(search.candidates))
        cands = search.candidates
        verification = self.verification(cands)
        reached = [c for c in cands if c.score >= verification.threshold]
        passed = [c for c in reached if c.drop >= cfg.drop_floor]
        controls = self.control_rates(passed)
        verified = [c for c, ctrl in zip(passed, controls) if ctrl <= cfg.control_ratio * c.score]
        verified.sort(key=lambda c: -c.score)
        self.control = {c.row: float(ctrl) for c, ctrl in zip(passed, controls)}
        verified = self.consistent(verified)
        self.details.update(
            candidates_scored=len(cands),
            candidates_share=len(cands) / self.n,
            search_rounds=search.rounds,
            surviving_per_round=search.surviving_per_round,
            verification={
                "threshold": verification.threshold,
                "first_round_median": verification.null_median,
                "first_round_mad": verification.null_mad,
                "reached_flip_rate": len(reached),
                "rejected_by_drop": len(reached) - len(passed),
                "rejected_by_control": len(passed) - len(verified),
                "verified": len(verified),
                "best_flip_rate": max((c.score for c in cands), default=0.0),
            },
        )

        boxes = np.full((self.n, 4), -1, np.int32)
        maps_by_row: dict[int, np.ndarray] = {}
        for c in cands:
            boxes[c.row] = c.box
            if c.map is not None:
                maps_by_row[c.row] = c.map

        if not verified:
            self.warnings.append(
                f"no candidate passed the flip test (best flip rate {self.details['verification']['best_flip_rate']:.2f}, "
                f"needed {verification.threshold:.2f}; {len(reached)} reached it but failed the activation-drop or "
                "control-window check): nothing flagged. Either the data holds no patch trigger "
                "or the encoder has not learned it (a short CPU bootstrap does not; see docs/poisoncam.md)"
            )
            scores = np.zeros(self.n, np.float32)
            for c in cands:
                scores[c.row] = c.score
            return self._finish(scores, np.zeros(self.n, bool), boxes, verification.threshold, [], self._top_maps(scores, maps_by_row))

        bank_cands = verified[: cfg.bank_size]
        bank_pixels = [self._cut(c) for c in bank_cands]
        probs, calibration = self.classify(cands, verified, bank_pixels, clustering.assignments)

        t0 = time.perf_counter()
        verified_rows = np.array(sorted({c.row for c in verified}), np.int64)
        trusted = calibration.recall >= cfg.min_classifier_recall and calibration.auroc >= cfg.min_classifier_auroc
        threshold = calibration.threshold if trusted else float("inf")
        decision = decide(probs, threshold, verified_rows, cfg.fail_rate_guard)
        self.warnings.extend(decision.warnings)
        self.details.update(decision.details)
        self.details["calibration"] = {**calibration.__dict__, "trusted": trusted}
        if not trusted:
            self.warnings.append(
                f"the poison classifier did not validate (held-out recall {calibration.recall:.0%} at threshold "
                f"{calibration.threshold:.3f}, AUROC {calibration.auroc:.2f}; needed {cfg.min_classifier_recall:.0%} and "
                f"{cfg.min_classifier_auroc:.2f}): only the {len(verified_rows)} images whose own window passed the "
                "flip test are flagged; the scores still rank the rest"
            )
        scores = probs.astype(np.float32)
        scores[verified_rows] = 1.0
        self.seconds["decide"] += time.perf_counter() - t0

        self._localize_flagged(decision.flagged, boxes, maps_by_row, clustering.assignments)
        flagged_per_cluster = np.bincount(clustering.assignments[decision.flagged], minlength=clustering.k)
        bank = [
            TriggerPattern(
                pixels=np.array(self.images[c.row, :, c.box[1] : c.box[3], c.box[0] : c.box[2]]),
                host=c.row,
                box=tuple(int(v) for v in c.box),
                score=float(c.score),
                hosts=int(flagged_per_cluster[c.cluster]),
                evidence={
                    "flip_rate": float(c.score),
                    "control_flip_rate": self.control[c.row],
                    "activation_drop": float(c.drop),
                    "cluster": float(c.cluster),
                    "round": float(c.round),
                },
            )
            for c, px in zip(bank_cands, bank_pixels)
        ]
        return self._finish(scores, decision.flagged, boxes, decision.threshold, bank, self._top_maps(scores, maps_by_row))

    def score_rows(self, rows: np.ndarray, clusters: np.ndarray) -> list[Candidate]:
        """Localize then flip-test the given rows (one search round), batched."""
        t0 = time.perf_counter()
        x = self.load(rows)
        owners = torch.as_tensor(clusters, device=self.device)
        boxes, maps, drops = self.localize(x, owners)
        t1 = time.perf_counter()
        self.seconds["localize"] += t1 - t0
        patches = [x[i, :, b[1] : b[3], b[0] : b[2]] for i, b in enumerate(boxes)]
        flips = flip_test(self.head, patches, clusters, self.refs, self.ref_clusters, self.generator, self.cfg.max_batch)
        self.forwards["flip"] += flips.forwards
        self.seconds["flip"] += time.perf_counter() - t1
        return [
            Candidate(int(r), int(c), 0, tuple(int(v) for v in boxes[i]), float(flips.rates[i]), float(drops[i]), maps[i].astype(np.float16))
            for i, (r, c) in enumerate(zip(rows, clusters))
        ]

    def localize(self, x: torch.Tensor, clusters: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (B, 4), maps (B, R, R) and the activation drop of occluding each box (B,)."""
        self.localized += len(x)
        if self.method == "poisoncam":
            res = cluster_activation_masking(self.head, x, clusters, self.boxes, self.cfg.fill, self.cfg.max_batch)
            self.forwards["localize"] += res.forwards
            return res.boxes, res.maps, res.box_drop
        cam = gradcam_windows(self.head, self.stage, x, clusters, self.gradcam_window, self.cfg.max_batch)
        # The drop of occluding the Grad-CAM window is reported as evidence for both methods alike.
        with torch.no_grad():
            base = self.head.activation(x, clusters)
            masks = box_masks(cam.boxes, self.resolution, x.device)
            occluded = torch.where(masks[:, None], fill_images(x, self.cfg.fill), x)
            drop = (base - self.head.activation(occluded, clusters)).cpu().numpy()
        self.forwards["localize"] += cam.forwards + 2 * len(x)
        return cam.boxes, cam.maps, drop

    def verification(self, cands: list[Candidate]) -> _Verified:
        """Least flip rate that verifies a window (besides an activation drop of `drop_floor` when
        the window is occluded, and a control window that flips far less): `flip_floor`, raised to the first round's median
        plus `flip_outlier` robust deviations. The first round samples every cluster alike, so it is
        mostly clean windows even when some clusters are poisoned."""
        first = np.array([c.score for c in cands if c.round == 0]) if cands else np.zeros(1)
        median = float(np.median(first))
        mad = float(np.median(np.abs(first - median)) * 1.4826)
        return _Verified(max(self.cfg.flip_floor, median + self.cfg.flip_outlier * mad), median, mad)

    def consistent(self, verified: list[Candidate]) -> list[Candidate]:
        """The verified windows that are copies of each other, or the strongest one if none are.

        A trigger's windows, cut from unrelated poisons, show the same pixels; a clean window that
        passed the flip test (an image of the poison's cluster whose content pulls references in)
        is a copy of nothing. Each verified window is matched as a template (`mine`'s normalised
        residual, best position) in a random probe of the scan and in the other verified
        windows' images; a window is a copy of the template when its residual lies below the
        probe's own null threshold (Bonferroni over the scan at `alpha`, `mine.scoring`). Windows
        linked by a copy either way form groups, and every group of two or more is kept (several
        triggers give several groups). When no window is a copy of another (the loose masking
        boxes take in host background; jittered copies), only the window with the highest flip
        rate is kept: clean windows passed the flip test more often than trigger windows did. Measured on
        the backdoored reference encoder (docs/poisoncam.md): at 1% poisons 9 of 14 verified
        windows were clean images of the poison cluster, and a classifier trained on them flagged
        264 clean images; at 0.5%, 11 of 13 were clean and the two trigger windows, first by flip
        rate, did not match each other.
        """
        if len(verified) < 3:
            return verified
        from scipy.sparse.csgraph import connected_components

        from ssl_guard.detect.mine.scoring import null_threshold as residual_null
        from ssl_guard.detect.mine.scoring import residuals

        t0 = time.perf_counter()
        rows = np.array([c.row for c in verified], np.int64)
        sample = np.sort(self.rng.choice(self.n, size=min(self.n, 3000), replace=False))
        probe = np.concatenate([np.setdiff1d(sample, rows), rows])
        sampled = len(probe) - len(rows)
        # every template matched in one pass over the probe (each image read once)
        residual, _ = residuals(self.images, probe, [self._cut(c) for c in verified], self.cfg.max_batch, self.device)
        linked = np.array([residual[sampled:, t] < residual_null(residual[:sampled, t], self.cfg.alpha, total=self.n)["threshold"] for t in range(len(verified))])
        linked = linked | linked.T
        np.fill_diagonal(linked, False)
        _, label = connected_components(linked, directed=False)
        sizes = np.bincount(label)
        groups = [np.flatnonzero(label == g) for g in np.flatnonzero(sizes >= 2)]
        members = sorted(int(i) for g in groups for i in g)
        kept = [verified[i] for i in members] if members else verified[:1]
        self.details["bank_consistency"] = {"verified": len(verified), "copy_groups": [len(g) for g in groups], "kept": len(kept), "seconds": time.perf_counter() - t0}
        self.seconds["decide"] += time.perf_counter() - t0
        return kept

    def control_rates(self, passed: list[Candidate]) -> list[float]:
        """Flip rate of a control window for each candidate: same size, same image, a random spot
        not overlapping the candidate's box. A trigger flips far more than the rest of its image;
        a window that flips only because its whole image pulls toward the cluster (colour, layout)
        flips about as much as its control, and is rejected."""
        if not passed:
            return []
        t0 = time.perf_counter()
        x = self.load(np.array([c.row for c in passed]))
        patches = []
        for i, c in enumerate(passed):
            x0, y0, x1, y1 = c.box
            h, w = y1 - y0, x1 - x0
            r = self.resolution
            ys, xs = np.meshgrid(np.arange(r - h + 1), np.arange(r - w + 1), indexing="ij")
            apart = (xs + w <= x0) | (xs >= x1) | (ys + h <= y0) | (ys >= y1)
            spots = np.argwhere(apart) if apart.any() else np.argwhere(np.ones_like(apart))
            cy, cx = spots[self.rng.integers(len(spots))]
            patches.append(x[i, :, cy : cy + h, cx : cx + w])
        flips = flip_test(self.head, patches, np.array([c.cluster for c in passed]), self.refs, self.ref_clusters, self.generator, self.cfg.max_batch)
        self.forwards["flip"] += flips.forwards
        self.seconds["flip"] += time.perf_counter() - t0
        return [float(v) for v in flips.rates]

    def classify(self, cands, verified, bank_pixels, assignments):
        """Train the ensemble on rows believed clean and return (N,) probabilities and the calibration."""
        cfg = self.cfg
        t0 = time.perf_counter()
        excluded = np.zeros(self.n, bool)
        # Leave out what the search found suspicious: verified hosts, the top 10% of scored images
        # (PatchSearch), and the whole clusters hosting a verified window while that leaves half the
        # data, so the negatives hold as few unflagged poisons as possible.
        scored = sorted(cands, key=lambda c: -c.score)
        for c in scored[: max(1, len(scored) // 10)] + verified:
            excluded[c.row] = True
        suspect_clusters = np.isin(assignments, [c.cluster for c in verified])
        if (~(excluded | suspect_clusters)).sum() >= self.n / 2:
            excluded |= suspect_clusters
        pool = np.flatnonzero(~excluded)
        if len(pool) < 4:
            pool = np.arange(self.n)
            self.warnings.append("too few images outside the suspect clusters to train the poison classifier on clean negatives; trained on all images")
        held = self.rng.choice(pool, size=int(min(512, max(2, len(pool) // 5))), replace=False)
        train = np.setdiff1d(pool, held)
        if len(train) == 0:
            train = held
        steps = cfg.classifier_steps
        task = self._task("train classifier", cfg.classifier_models * steps)
        nets = clf.train_classifiers(
            self.load,
            train,
            bank_pixels,
            self.resolution,
            models=cfg.classifier_models,
            steps=steps,
            batch=cfg.classifier_batch,
            width=cfg.classifier_width,
            seed=cfg.seed,
            device=self.device,
            on_step=lambda: self._advance(task),
        )
        t1 = time.perf_counter()
        task = self._task("classify", self.n)
        probs = np.empty(self.n, np.float32)
        for start in range(0, self.n, cfg.max_batch):
            stop = min(self.n, start + cfg.max_batch)
            x = torch.from_numpy(np.array(self.images[start:stop])).to(self.device).float().div_(255)
            probs[start:stop] = clf.predict(nets, x, self.resolution).cpu().numpy()
            self._advance(task, stop - start)
        t2 = time.perf_counter()
        self.seconds["classify"] += t2 - t0
        self.details["classifier"] = {
            "models": cfg.classifier_models,
            "steps": steps,
            "train_pool": int(len(train)),
            "held_out": int(len(held)),
            "bank": len(bank_pixels),
            "train_seconds": t1 - t0,
            "predict_seconds": t2 - t1,
        }
        held_x = self.load(np.sort(held))
        variants = clf.bank_variants(bank_pixels, self.resolution)
        positives = clf.paste_bank(held_x, variants, torch.ones(len(held_x), dtype=torch.bool, device=self.device), self.generator)
        neg = clf.predict(nets, held_x, self.resolution).cpu().numpy()
        pos = clf.predict(nets, positives, self.resolution).cpu().numpy()
        calibration = calibrate_threshold(pos, neg, cfg.target_fpr, scan_size=self.n, alpha=cfg.alpha)
        self.seconds["decide"] += time.perf_counter() - t2
        return probs, calibration

    def _localize_flagged(self, flagged: np.ndarray, boxes: np.ndarray, maps: dict[int, np.ndarray], assignments: np.ndarray) -> None:
        """Give flagged images the search never scored a box too (at most 256, for the report)."""
        todo = np.flatnonzero(flagged & (boxes[:, 0] < 0))[:256]
        t0 = time.perf_counter()
        for start in range(0, len(todo), 64):
            rows = todo[start : start + 64]
            x = self.load(rows)
            b, m, _ = self.localize(x, torch.as_tensor(assignments[rows], device=self.device))
            boxes[rows] = b
            for r, mm in zip(rows, m):
                maps[int(r)] = mm.astype(np.float16)
        self.seconds["localize"] += time.perf_counter() - t0
        self.details["localized_flagged"] = int(len(todo))

    def _cut(self, c: Candidate) -> torch.Tensor:
        x0, y0, x1, y1 = c.box
        return self.load(np.array([c.row]))[0, :, y0:y1, x0:x1]

    def _top_maps(self, scores: np.ndarray, maps: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        ranked = sorted(maps, key=lambda r: -float(scores[r]))[: self.cfg.max_maps]
        return {int(r): maps[r] for r in ranked}

    def _finish(self, scores, flagged, boxes, threshold, bank, maps) -> Detection:
        localize_s = self.seconds["localize"]
        self.details.update(
            forwards=dict(self.forwards),
            localized_images=self.localized,
            localize_ms_per_image=(1000 * localize_s / self.localized) if self.localized else None,
            flip_ms_per_candidate=(1000 * self.seconds["flip"] / self.details.get("candidates_scored", 1)) if self.details.get("candidates_scored") else None,
        )
        if self.method == "poisoncam":
            self.details["masking_ms_per_image"] = self.details["localize_ms_per_image"]
        return Detection(
            method=self.method,
            scores=np.asarray(scores, np.float32),
            flagged=np.asarray(flagged, bool),
            boxes=np.asarray(boxes, np.int32),
            threshold=float(threshold),
            bank=bank,
            maps=maps,
            seconds=dict(self.seconds),
            warnings=list(self.warnings),
            details=self.details,
        )
