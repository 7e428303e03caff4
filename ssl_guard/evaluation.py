"""Scoring a scan run against the ground truth of a poisoned dataset.

The scan contract: every scan writes `RUN_DIR/scores.csv` with one row per sample,
`source,key,score,flagged` (higher score = more likely poisoned; flagged 0/1), and
`RUN_DIR/quarantine.json` with the flagged samples. Evaluation reads only scores.csv and matches
it to the truth on `(source, key)`; a sample the truth has and the run lacks (or the reverse) is
an error, never a silently partial score.

Metrics (pure numpy functions, ties handled explicitly):
- `precision_at_k`: PatchSearch's metric (share of true poisons among the k highest scores),
  *expected over a uniformly random order of tied scores*: samples above the k-th score count
  fully, and the tie group at the boundary contributes its share of poisons times the number of
  its members that fit. The result depends only on the scores, never on row order or ids.
- `auroc`: the Mann-Whitney statistic with mid-ranks, i.e. a tied (poison, clean) pair earns 1/2.
- `auprc`: average precision, sum over distinct score thresholds of (recall step) x precision,
  each tie group taken as one threshold (the step-wise convention of scikit-learn's
  `average_precision_score`).
- `prf`: precision, recall and F1 of the flagged set.

`eval.json` (schema_version 1): `samples`, `poisons`, `flagged`; `precision_at_k` keyed "5", "10",
"20", "50", "100", "500" and "poisons", with the k actually used in `k` (clipped to the number of
samples); `auroc`, `auprc`; `precision`, `recall`, `f1`, `tp`, `fp`, `fn` of the flagged set;
`recall_by_trigger` ("attack:trigger" -> share flagged); `inputs` (sha256 of scores.csv and the
truth, and the probe settings when there is one); `backdoor` when an encoder was probed
(`ssl_guard.probe.BackdoorEffect`). An undefined value (e.g. AUROC without poisons) is null.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssl_guard.attacks.truth import TruthRow, read_truth
from ssl_guard.errors import DataNotFoundError, RunDirError, ScoresError, TruthError

TOP_KS = (5, 10, 20, 50, 100, 500)
EVAL_SCHEMA_VERSION = 1
SCORE_COLUMNS = ("source", "key", "score", "flagged")


# ---------------------------------------------------------------------------------------------
# Metrics


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).astype(bool).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in length")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return scores, labels


def precision_at_k(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Expected share of poisons among the `k` highest `scores` (ties in random order).

    Args:
        scores: (N,) float, higher = more suspicious.
        labels: (N,) bool, True = poisoned.
        k: 1 <= k <= N.
    """
    scores, labels = _check(scores, labels)
    if not 1 <= k <= len(scores):
        raise ValueError(f"k={k} is outside 1..{len(scores)}")
    threshold = np.sort(scores)[::-1][k - 1]
    above = scores > threshold
    tied = scores == threshold
    slots = k - int(above.sum())  # members of the boundary tie group that fit in the top k
    expected = float(labels[above].sum()) + slots * float(labels[tied].sum()) / float(tied.sum())
    return expected / k


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve; a tied (poison, clean) pair counts 1/2. NaN with one class only."""
    scores, labels = _check(scores, labels)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _midranks(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def _midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values` (ascending), ties sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), np.float64)
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + 1 + end) / 2.0
    return ranks


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision: sum over distinct thresholds of (recall gained) x precision there.

    A tie group is one threshold (all its members enter together). NaN without any poison.
    """
    scores, labels = _check(scores, labels)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    ordered_scores, ordered_labels = scores[order], labels[order]
    # index of the last member of each tie group in descending order
    group_ends = np.flatnonzero(np.r_[ordered_scores[1:] != ordered_scores[:-1], True])
    true_positives = np.cumsum(ordered_labels)[group_ends]
    taken = group_ends + 1
    precision = true_positives / taken
    recall_gain = np.diff(np.r_[0, true_positives]) / positives
    return float(np.sum(recall_gain * precision))


@dataclass(frozen=True)
class FlagCounts:
    tp: int
    fp: int
    fn: int
    precision: float | None  # None when nothing is flagged
    recall: float | None  # None when there is no poison
    f1: float | None  # None when both are undefined; 0 when there is no true positive


def prf(flagged: np.ndarray, labels: np.ndarray) -> FlagCounts:
    """Precision, recall and F1 of the flagged set `flagged` (N,) bool against `labels` (N,) bool."""
    flagged = np.asarray(flagged).astype(bool).reshape(-1)
    labels = np.asarray(labels).astype(bool).reshape(-1)
    if flagged.shape != labels.shape:
        raise ValueError(f"flagged {flagged.shape} and labels {labels.shape} differ in length")
    tp = int(np.sum(flagged & labels))
    fp = int(np.sum(flagged & ~labels))
    fn = int(np.sum(~flagged & labels))
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None and recall is None:
        f1 = None
    elif tp == 0:
        f1 = 0.0
    else:
        f1 = 2 * precision * recall / (precision + recall)
    return FlagCounts(tp, fp, fn, precision, recall, f1)


# ---------------------------------------------------------------------------------------------
# Reading a run and matching it to the truth


@dataclass
class RunScores:
    """A run's scores.csv: ids in file order with their scores (N,) float64 and flags (N,) bool."""

    ids: list[tuple[str, str]]
    scores: np.ndarray
    flagged: np.ndarray


def read_scores(path: str | Path) -> RunScores:
    """Read a scan's `scores.csv`.

    Raises:
        DataNotFoundError: no such file.
        ScoresError: a missing column, a non-finite score, a flag other than 0/1/true/false, or a
            sample listed twice.
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"{path} does not exist", "a scan run folder holds scores.csv; check RUN_DIR")
    ids: list[tuple[str, str]] = []
    scores: list[float] = []
    flags: list[bool] = []
    seen: set[tuple[str, str]] = set()
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SCORE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ScoresError(f"{path} lacks the column(s) {', '.join(missing)}", f"scores.csv has the header {','.join(SCORE_COLUMNS)}")
        for line, record in enumerate(reader, start=2):
            ident = (record["source"], record["key"])
            if ident in seen:
                raise ScoresError(f"{path}:{line}: sample {ident[0]} {ident[1]} is listed twice")
            seen.add(ident)
            try:
                score = float(record["score"])
            except (TypeError, ValueError):
                score = float("nan")
            if not math.isfinite(score):
                raise ScoresError(f"{path}:{line}: score {record['score']!r} is not a finite number")
            flag = (record["flagged"] or "").strip().lower()
            if flag not in ("0", "1", "true", "false"):
                raise ScoresError(f"{path}:{line}: flagged is {record['flagged']!r}, not 0 or 1")
            ids.append(ident)
            scores.append(score)
            flags.append(flag in ("1", "true"))
    if not ids:
        raise ScoresError(f"{path} holds no sample")
    return RunScores(ids, np.array(scores, np.float64), np.array(flags, bool))


def match_truth(run: RunScores, truth: list[TruthRow]) -> np.ndarray:
    """(N,) bool poisoned labels for the run's rows.

    Raises:
        TruthError: the run lacks samples of the truth, or holds samples the truth does not know.
    """
    poisoned = {(row.source, row.key): row.poisoned for row in truth}
    missing = set(poisoned) - set(run.ids)
    if missing:
        example = min(missing)
        raise TruthError(
            f"the run has no score for {len(missing)} of the truth's {len(poisoned)} samples, e.g. {example[0]} {example[1]}",
            "score the whole dataset the truth describes (was the scan interrupted, or run on another copy?)",
        )
    extra = [ident for ident in run.ids if ident not in poisoned]
    if extra:
        raise TruthError(
            f"the run scores {len(extra)} sample(s) the truth does not know, e.g. {extra[0][0]} {extra[0][1]}",
            "pass the truth CSV written with this dataset",
        )
    return np.array([poisoned[ident] for ident in run.ids], bool)


# ---------------------------------------------------------------------------------------------
# The whole evaluation


def effective_ks(n: int, poisons: int) -> dict[str, int]:
    """The k of each precision@k, named as requested ("5", ..., "500", "poisons"), clipped to n.

    "poisons" is 0 for a dataset without poison (its precision is then undefined).
    """
    ks = {str(k): min(k, n) for k in TOP_KS}
    ks["poisons"] = min(poisons, n)
    return ks


def evaluate(scores: np.ndarray, flagged: np.ndarray, labels: np.ndarray) -> dict:
    """All metrics of one run as a JSON-ready dict (undefined values are None)."""
    scores, labels = _check(scores, labels)
    n, poisons = len(scores), int(labels.sum())
    ks = effective_ks(n, poisons)
    counts = prf(flagged, labels)

    def defined(value: float) -> float | None:
        return None if math.isnan(value) else value

    return {
        "samples": n,
        "poisons": poisons,
        "flagged": int(np.asarray(flagged, bool).sum()),
        "precision_at_k": {name: precision_at_k(scores, labels, k) if k else None for name, k in ks.items()},
        "k": ks,
        "auroc": defined(auroc(scores, labels)),
        "auprc": defined(auprc(scores, labels)),
        "precision": counts.precision,
        "recall": counts.recall,
        "f1": counts.f1,
        "tp": counts.tp,
        "fp": counts.fp,
        "fn": counts.fn,
    }


def recall_by_trigger(run: RunScores, truth: list[TruthRow]) -> dict[str, float]:
    """Share of each trigger's poisons that the run flagged (several triggers may share a dataset)."""
    flagged = dict(zip(run.ids, run.flagged))
    totals: dict[str, list[int]] = {}
    for row in truth:
        if row.poisoned:
            name = f"{row.attack}:{row.trigger}" if row.trigger else row.attack
            hit_total = totals.setdefault(name, [0, 0])
            hit_total[0] += int(flagged[(row.source, row.key)])
            hit_total[1] += 1
    return {name: hits / total for name, (hits, total) in sorted(totals.items())}


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def evaluate_run(run_dir: str | Path, truth_path: str | Path) -> dict:
    """Score `run_dir/scores.csv` against `truth_path`: the body of `eval.json` (without probe)."""
    from ssl_guard import __version__

    run_dir, truth_path = Path(run_dir), Path(truth_path)
    if not run_dir.is_dir():
        raise DataNotFoundError(f"run folder {run_dir} does not exist", "pass the --out folder of a scan")
    scores_path = run_dir / "scores.csv"
    run = read_scores(scores_path)
    truth = read_truth(truth_path)
    labels = match_truth(run, truth)
    report = {
        "schema_version": EVAL_SCHEMA_VERSION,
        "tool_version": __version__,
        "run_dir": str(run_dir.resolve()),
        "truth": str(truth_path.resolve()),
        "inputs": {"scores_sha256": sha256_file(scores_path), "truth_sha256": sha256_file(truth_path)},
        **evaluate(run.scores, run.flagged, labels),
        "recall_by_trigger": recall_by_trigger(run, truth),
    }
    return report


def write_eval(run_dir: str | Path, report: dict, force: bool = False) -> str:
    """Write `run_dir/eval.json` atomically; returns "written", "replaced" or "unchanged".

    Policy: an existing eval.json computed from the same inputs (same scores.csv, truth and probe
    settings, by sha256) is kept as it is; one from other inputs is replaced only with `force`.

    Raises:
        RunDirError: eval.json exists from other inputs and `force` is off.
    """
    from ssl_guard.attacks.truth import write_text_atomic

    path = Path(run_dir) / "eval.json"
    state = "written"
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        same = isinstance(previous, dict) and previous.get("inputs") == report.get("inputs")
        if same and not force:
            return "unchanged"
        if not force:
            raise RunDirError(f"{path} exists and was computed from other inputs", "pass --force to replace it")
        state = "replaced"
    write_text_atomic(path, json.dumps(report, indent=2, sort_keys=False) + "\n")
    return state

