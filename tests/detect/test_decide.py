"""Calibrated threshold and the prevalence guard."""

from __future__ import annotations

import numpy as np

from ssl_guard.detect.decide import auroc, calibrate_threshold, decide, null_threshold


def test_auroc_known_values():
    assert auroc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert auroc(np.array([0.1]), np.array([0.9])) == 0.0
    assert auroc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5


def test_threshold_holds_target_false_positive_rate():
    rng = np.random.default_rng(0)
    neg = rng.beta(2, 8, 1000)
    pos = rng.beta(8, 2, 200)
    cal = calibrate_threshold(pos, neg, target_fpr=0.01)
    assert cal.false_positive_rate <= 0.01
    assert cal.threshold >= 0.5
    assert cal.recall > 0.5 and cal.auroc > 0.95


def test_threshold_never_below_one_half():
    cal = calibrate_threshold(np.array([0.3, 0.4]), np.array([0.01, 0.02]))
    assert cal.threshold == 0.5 and cal.recall == 0.0


def test_flags_threshold_and_verified_hosts():
    probs = np.array([0.1, 0.9, 0.2, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    d = decide(probs, 0.5, np.array([3]), guard=0.2)
    assert d.flagged.tolist() == [False, True, False, True] + [False] * 6
    assert not d.warnings


def test_prevalence_guard_keeps_only_verified_hosts():
    probs = np.full(10, 0.9)
    d = decide(probs, 0.5, np.array([2]), guard=0.2)
    assert d.flagged.sum() == 1 and d.flagged[2]
    assert "prevalence guard" in d.warnings[0]
    assert d.details["prevalence_guard"]["fired"]


def test_prevalence_guard_flags_nothing_when_verified_hosts_are_too_many():
    d = decide(np.full(10, 0.9), 0.5, np.arange(5), guard=0.2)
    assert not d.flagged.any()
    assert "nothing is flagged" in d.warnings[0]


def test_null_threshold_keeps_false_flags_rare_in_a_large_scan():
    """A 1% false-positive rate flags ~100 of 10,000 clean images; the scan-wide null flags about
    none of them while still passing clear poisons."""
    rng = np.random.default_rng(0)
    logits = lambda k: rng.normal(-1.5, 1.0, k)  # noqa: E731 clean images' classifier logits
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    neg = sigmoid(logits(512))
    pos = sigmoid(rng.normal(8.0, 1.0, 200))
    fixed = calibrate_threshold(pos, neg, target_fpr=0.01)
    scan = calibrate_threshold(pos, neg, target_fpr=0.01, scan_size=10_000, alpha=0.01)
    clean_scan = sigmoid(logits(10_000))
    assert (clean_scan >= fixed.threshold).sum() > 40
    assert (clean_scan >= scan.threshold).sum() <= 2
    assert scan.threshold >= fixed.threshold and scan.recall > 0.99
    # a larger scan needs a higher threshold for the same risk
    assert null_threshold(neg, 100_000) > null_threshold(neg, 1_000)
