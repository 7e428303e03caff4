"""Decide stage (stage 7, docs/architecture.md): a calibrated threshold and the prevalence guard.

The classifier's probabilities are not calibrated by themselves (its positives are synthetic). The
threshold is therefore set on held-out images the classifier never trained on: the same images
without a trigger (negatives) and with a bank window pasted in (positives). It is the
(1 - target_fpr) quantile of the negatives, never below 0.5, and never below the scan-wide null
threshold: the probability a clean image of this scan's size exceeds by chance with probability
`alpha`, from a robust fit of the negatives' logits (`null_threshold`). Its recall on the
positives is reported. The prevalence guard then refuses to quarantine a large share of the data: a "trigger"
found in, say, a fifth of the images is a property of the data (a watermark, a frame, a logo),
not a rare poison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np

DEFAULT_TARGET_FPR = 0.01
DEFAULT_ALPHA = 0.01  # chance of one false flag by the classifier in the whole scan


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve (probability a positive outranks a negative, ties count half)."""
    pos = np.asarray(positives, np.float64)
    neg = np.asarray(negatives, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    ranks = np.concatenate([pos, neg]).argsort(kind="stable").argsort(kind="stable").astype(np.float64)
    # average the ranks of ties
    values = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    ranks = (sums / counts)[inverse]
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) - 1) / 2) / (len(pos) * len(neg)))


@dataclass
class Calibration:
    threshold: float
    recall: float  # share of held-out positives at or above the threshold
    false_positive_rate: float  # share of held-out negatives at or above it
    auroc: float
    positives: int
    negatives: int


def null_threshold(negatives: np.ndarray, scan_size: int, alpha: float = DEFAULT_ALPHA) -> float:
    """The probability above which an image of a scan of `scan_size` is flagged by chance with
    probability about `alpha` in the whole scan, from the held-out negatives' null.

    The negatives' logits are fitted by their median and MAD (robust to a few poisons among them);
    the threshold sits z = Φ⁻¹(1 − α/N) robust deviations above the median (Bonferroni over the
    scan, as `mine` sets its host threshold). A quantile of a few hundred negatives cannot say
    where one in ten thousand lies; a fixed false-positive rate (1% of 10,000 clean images is 100
    false flags) caps the precision at low poison rates.
    """
    neg = np.clip(np.asarray(negatives, np.float64), 1e-6, 1 - 1e-6)
    if len(neg) < 2:
        return 0.5
    logits = np.log(neg) - np.log1p(-neg)
    median = float(np.median(logits))
    spread = max(float(np.median(np.abs(logits - median))) * 1.4826, 1e-3)
    z = NormalDist().inv_cdf(1 - alpha / max(int(scan_size), 1))
    return float(1.0 / (1.0 + np.exp(-(median + z * spread))))


def calibrate_threshold(positives: np.ndarray, negatives: np.ndarray, target_fpr: float = DEFAULT_TARGET_FPR, scan_size: int | None = None, alpha: float = DEFAULT_ALPHA) -> Calibration:
    """Threshold on held-out probabilities: the (1 - target_fpr) quantile of the negatives, at
    least 0.5; with `scan_size`, also at least `null_threshold(negatives, scan_size, alpha)`."""
    pos = np.asarray(positives, np.float64)
    neg = np.asarray(negatives, np.float64)
    if len(neg):
        threshold = max(0.5, float(np.quantile(neg, 1 - target_fpr, method="higher")))
        # a probability equal to the quantile would still be flagged; step just above it
        threshold = float(np.nextafter(threshold, np.inf)) if threshold > 0.5 else threshold
        if scan_size is not None:
            threshold = max(threshold, null_threshold(neg, scan_size, alpha))
    else:
        threshold = 0.5
    recall = float((pos >= threshold).mean()) if len(pos) else float("nan")
    fpr = float((neg >= threshold).mean()) if len(neg) else float("nan")
    return Calibration(threshold, recall, fpr, auroc(pos, neg), len(pos), len(neg))


@dataclass
class Decision:
    flagged: np.ndarray  # (N,) bool
    threshold: float
    warnings: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)


def decide(probabilities: np.ndarray, threshold: float, verified_rows: np.ndarray, guard: float) -> Decision:
    """Flag images at or above `threshold` plus the hosts of verified trigger windows, unless that
    would flag more than `guard` of the data.

    probabilities: (N,) float; verified_rows: rows whose own window passed the flip test. When the
    flagged share exceeds the guard, only the verified hosts are kept (or nothing, if they alone
    exceed it), and a warning says so.
    """
    probs = np.asarray(probabilities)
    n = len(probs)
    flagged = probs >= threshold
    verified = np.asarray(verified_rows, np.int64)
    flagged[verified] = True
    warnings: list[str] = []
    details: dict[str, object] = {"flagged_by_threshold": int((probs >= threshold).sum()), "verified_hosts": int(len(verified))}
    if n and flagged.mean() > guard:
        share = flagged.mean()
        kept = np.zeros(n, bool)
        if len(verified) / n <= guard:
            kept[verified] = True
            action = f"only the {len(verified)} images whose own window passed the flip test are flagged"
        else:
            action = "nothing is flagged"
        warnings.append(
            f"prevalence guard: {share:.1%} of the images would be flagged, above the {guard:.0%} guard; "
            f"a pattern this common is more likely a property of the data than a poison, so {action}"
        )
        details["prevalence_guard"] = {"share": float(share), "guard": float(guard), "fired": True}
        flagged = kept
    else:
        details["prevalence_guard"] = {"share": float(flagged.mean()) if n else 0.0, "guard": float(guard), "fired": False}
    return Decision(flagged, float(threshold), warnings, details)
