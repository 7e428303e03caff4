"""Iterative cluster pruning: the schedule, on plain arrays with a fake scorer."""

from __future__ import annotations

import numpy as np

from ssl_guard.detect.search import Candidate, clusters_to_drop, iterative_search, planned_candidates


def _members(sizes):
    out, start = [], 0
    for s in sizes:
        out.append(np.arange(start, start + s))
        start += s
    return out


def _scorer(poison_rows, calls):
    def score(rows, clusters):
        calls.append(len(rows))
        return [Candidate(int(r), int(c), 0, (0, 0, 1, 1), 1.0 if r in poison_rows else 0.0, 0.0) for r, c in zip(rows, clusters)]

    return score


def test_poisoned_cluster_survives_and_is_searched_deepest():
    members = _members([40] * 20)
    poison = set(range(80, 120))  # all of cluster 2
    calls: list[int] = []
    result = iterative_search(members, _scorer(poison, calls), per_round=2, prune_fraction=0.25, rng=np.random.default_rng(0))
    per_cluster = np.bincount([c.cluster for c in result.candidates], minlength=20)
    assert per_cluster.argmax() == 2
    assert result.cluster_scores[2] == 1.0
    # only a small fraction of the 800 images is scored, and each round is one batched call
    assert len(result.candidates) <= planned_candidates(np.full(20, 40), 2, 0.25) < 200
    assert len(calls) == result.rounds
    assert result.surviving_per_round[0] == 20 and result.surviving_per_round[-1] == 1
    # every image is scored at most once
    rows = [c.row for c in result.candidates]
    assert len(rows) == len(set(rows))


def test_small_clusters_run_out_without_error():
    members = _members([1, 3, 0, 2])
    result = iterative_search(members, _scorer(set(), []), per_round=2, prune_fraction=0.25)
    assert sorted(c.row for c in result.candidates) == list(range(6)) or len(result.candidates) <= 6
    assert result.surviving_per_round[0] == 3  # the empty cluster is never searched


def test_no_clusters_no_rounds():
    result = iterative_search([], _scorer(set(), []))
    assert result.candidates == [] and result.rounds == 0


def test_drop_count_keeps_pruning_below_four_clusters():
    assert clusters_to_drop(100, 0.25) == 25
    assert clusters_to_drop(3, 0.25) == 1
    assert clusters_to_drop(1, 0.25) == 0
    assert planned_candidates(np.array([50] * 50), 2, 0.25) < 8.5 * 50 + 1
