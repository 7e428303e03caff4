"""Eval metrics against hand-computed cases, and the run/truth matching rules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ssl_guard.attacks import TruthRow, write_truth
from ssl_guard.errors import RunDirError, ScoresError, TruthError
from ssl_guard.evaluation import (
    auprc,
    auroc,
    effective_ks,
    evaluate,
    evaluate_run,
    precision_at_k,
    prf,
    read_scores,
    write_eval,
)

LABELS = np.array([1, 1, 0, 0], bool)


def test_perfect_scores():
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    assert auroc(scores, LABELS) == 1.0
    assert auprc(scores, LABELS) == 1.0
    assert precision_at_k(scores, LABELS, 2) == 1.0
    assert precision_at_k(scores, LABELS, 4) == 0.5


def test_inverted_scores():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    assert auroc(scores, LABELS) == 0.0
    # thresholds 4, 3 find no poison; 2 gives precision 1/3 at recall 1/2; 1 gives 2/4 at recall 1
    assert auprc(scores, LABELS) == pytest.approx(0.5 * (1 / 3) + 0.5 * 0.5)
    assert precision_at_k(scores, LABELS, 2) == 0.0


def test_all_tied_scores_get_chance_credit():
    scores = np.zeros(4)
    assert auroc(scores, LABELS) == 0.5
    assert auprc(scores, LABELS) == 0.5  # one threshold: precision = prevalence
    assert precision_at_k(scores, LABELS, 1) == 0.5  # expected over the order of the tie


def test_partial_tie_by_hand():
    scores = np.array([3.0, 2.0, 2.0, 1.0])
    labels = np.array([1, 0, 1, 0], bool)
    # pairs (poison, clean): 3>2, 3>1, 2=2 (half), 2>1 -> 3.5 / 4
    assert auroc(scores, labels) == pytest.approx(0.875)
    # top 2 = the 3 plus one of the two tied 2s (one of which is a poison): (1 + 1/2) / 2
    assert precision_at_k(scores, labels, 2) == pytest.approx(0.75)
    # thresholds 3 (P=1, R=1/2) and 2 (P=2/3, R=1)
    assert auprc(scores, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_metrics_ignore_row_order():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    labels = rng.random(200) < 0.1
    perm = rng.permutation(200)
    for k in (1, 5, 17, 200):
        assert precision_at_k(scores, labels, k) == pytest.approx(precision_at_k(scores[perm], labels[perm], k))
    assert auroc(scores, labels) == pytest.approx(auroc(scores[perm], labels[perm]))
    assert auprc(scores, labels) == pytest.approx(auprc(scores[perm], labels[perm]))


def test_random_scores_sit_near_chance_and_auroc_matches_pair_counting():
    rng = np.random.default_rng(1)
    scores = rng.random(400)
    labels = rng.random(400) < 0.25
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(scores, labels) == pytest.approx(pairs)
    assert abs(auroc(scores, labels) - 0.5) < 0.1
    assert abs(auprc(scores, labels) - labels.mean()) < 0.1


def test_one_class_only_gives_undefined_areas():
    assert np.isnan(auroc(np.arange(3.0), np.zeros(3, bool)))
    assert np.isnan(auprc(np.arange(3.0), np.zeros(3, bool)))
    report = evaluate(np.arange(3.0), np.zeros(3, bool), np.zeros(3, bool))
    assert report["auroc"] is None and report["precision_at_k"]["poisons"] is None and report["precision_at_k"]["5"] == 0.0


def test_prf_by_hand():
    counts = prf(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool))
    assert (counts.tp, counts.fp, counts.fn) == (2, 1, 1)
    assert counts.precision == pytest.approx(2 / 3) and counts.recall == pytest.approx(2 / 3) and counts.f1 == pytest.approx(2 / 3)
    nothing = prf(np.zeros(3, bool), np.array([1, 0, 0], bool))
    assert nothing.precision is None and nothing.recall == 0.0 and nothing.f1 == 0.0


def test_k_is_clipped_to_the_dataset_and_includes_the_poison_count():
    assert effective_ks(30, 4) == {"5": 5, "10": 10, "20": 20, "50": 30, "100": 30, "500": 30, "poisons": 4}
    report = evaluate(np.arange(30.0), np.zeros(30, bool), np.arange(30) >= 26)
    assert report["precision_at_k"]["poisons"] == 1.0 and report["precision_at_k"]["500"] == pytest.approx(4 / 30)


# ---------------------------------------------------------------------------------------------
# Runs and truth


def make_truth(path, n=10, poisons=(0, 1)):
    rows = [TruthRow("poisoned-000000.tar", f"k{i}", i in poisons, "patch" if i in poisons else "", "c" if i in poisons else "", None, "c", "t" if i in poisons else "") for i in range(n)]
    write_truth(path, rows)


def make_run(folder, scores, flagged, keys=None):
    folder.mkdir(exist_ok=True)
    keys = keys or [f"k{i}" for i in range(len(scores))]
    lines = ["source,key,score,flagged"] + [f"poisoned-000000.tar,{k},{s},{int(f)}" for k, s, f in zip(keys, scores, flagged)]
    (folder / "scores.csv").write_text("\n".join(lines) + "\n")


def test_evaluate_run_matches_ids_not_rows(tmp_path):
    make_truth(tmp_path / "t.csv")
    keys = [f"k{i}" for i in range(10)][::-1]  # rows in another order than the truth
    scores = [float(int(k[1:]) < 2) for k in keys]
    make_run(tmp_path / "run", scores, [s > 0 for s in scores], keys)
    report = evaluate_run(tmp_path / "run", tmp_path / "t.csv")
    assert report["auroc"] == 1.0 and report["precision_at_k"]["poisons"] == 1.0
    assert report["recall"] == 1.0 and report["precision"] == 1.0 and report["recall_by_trigger"] == {"patch:t": 1.0}


def test_a_run_missing_samples_is_an_error(tmp_path):
    make_truth(tmp_path / "t.csv")
    make_run(tmp_path / "run", [1.0] * 9, [0] * 9)
    with pytest.raises(TruthError, match="no score for 1"):
        evaluate_run(tmp_path / "run", tmp_path / "t.csv")


def test_a_run_with_unknown_samples_is_an_error(tmp_path):
    make_truth(tmp_path / "t.csv", n=3)
    make_run(tmp_path / "run", [1.0] * 4, [0] * 4)
    with pytest.raises(TruthError, match="does not know"):
        evaluate_run(tmp_path / "run", tmp_path / "t.csv")


@pytest.mark.parametrize(
    "body, message",
    [("source,key,score\n", "lacks"), ("source,key,score,flagged\na,b,nan,0\n", "finite"), ("source,key,score,flagged\na,b,1,yes\n", "not 0 or 1"),
     ("source,key,score,flagged\na,b,1,0\na,b,2,0\n", "twice")],
)
def test_malformed_scores_are_refused(tmp_path, body, message):
    (tmp_path / "scores.csv").write_text(body)
    with pytest.raises(ScoresError, match=message):
        read_scores(tmp_path / "scores.csv")


def test_eval_json_is_kept_for_same_inputs_and_never_silently_replaced(tmp_path):
    make_truth(tmp_path / "t.csv")
    make_run(tmp_path / "run", list(range(10)), [0] * 10)
    first = evaluate_run(tmp_path / "run", tmp_path / "t.csv")
    assert write_eval(tmp_path / "run", first) == "written"
    assert write_eval(tmp_path / "run", evaluate_run(tmp_path / "run", tmp_path / "t.csv")) == "unchanged"
    make_run(tmp_path / "run", list(range(10))[::-1], [0] * 10)
    second = evaluate_run(tmp_path / "run", tmp_path / "t.csv")
    with pytest.raises(RunDirError, match="other inputs") as refused:
        write_eval(tmp_path / "run", second)
    assert "--force" in refused.value.hint
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["auroc"] == first["auroc"]
    assert write_eval(tmp_path / "run", second, force=True) == "replaced"
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["auroc"] == second["auroc"]
