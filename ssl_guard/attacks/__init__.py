"""Poison generators for red-team runs and benchmarks: patch, blend and frequency (CTRL) attacks.

`poison_dataset(src, out, truth, attack, ...)` writes a poisoned copy of a dataset as WebDataset
shards and its ground truth as a CSV kept outside the copy (see `ssl_guard.attacks.truth`).
"""

from __future__ import annotations

from ssl_guard.attacks.base import TRAIN_BAND, VAL_BAND, Attack, Poisoned, psnr
from ssl_guard.attacks.blend import BlendAttack, generated_pattern
from ssl_guard.attacks.dataset import PoisonSummary, poison_dataset
from ssl_guard.attacks.frequency import FrequencyAttack
from ssl_guard.attacks.patch import DEFAULT_TRIGGER_WIDTH, PatchAttack, load_trigger
from ssl_guard.attacks.truth import TRUTH_COLUMNS, TruthRow, read_truth, write_truth

ATTACKS = ("patch", "blend", "frequency")

__all__ = [
    "ATTACKS",
    "Attack",
    "BlendAttack",
    "DEFAULT_TRIGGER_WIDTH",
    "FrequencyAttack",
    "PatchAttack",
    "Poisoned",
    "PoisonSummary",
    "TRAIN_BAND",
    "TRUTH_COLUMNS",
    "TruthRow",
    "VAL_BAND",
    "generated_pattern",
    "load_trigger",
    "poison_dataset",
    "psnr",
    "read_truth",
    "write_truth",
]
