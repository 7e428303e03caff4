"""What every detector returns, whatever its method: per-sample scores, flags, boxes and a bank."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TriggerPattern:
    """One verified trigger candidate of the bank.

    `pixels` is `(3, h, w)` uint8 cut from `host` (a row index into the scan's arrays) at `box`
    (`x0, y0, x1, y1` in scan-resolution pixels, exclusive end). `evidence` holds the numbers that
    verified it (masking collapse, flip rate, host count, ...), reported as they are.
    """

    pixels: np.ndarray
    host: int
    box: tuple[int, int, int, int]
    score: float
    hosts: int = 0
    targeted: bool | None = None
    evidence: dict[str, float] = field(default_factory=dict)


@dataclass
class Detection:
    """A detector's verdict on N samples (rows of the scan's arrays).

    scores:  (N,) float32, higher = more likely poisoned.
    flagged: (N,) bool, the samples to quarantine.
    boxes:   (N, 4) int32, the localized trigger box per sample, -1 where none.
    maps:    row index -> (R, R) float16 activation map, kept for the report's suspects only.
    """

    method: str
    scores: np.ndarray
    flagged: np.ndarray
    boxes: np.ndarray
    threshold: float
    bank: list[TriggerPattern] = field(default_factory=list)
    maps: dict[int, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.scores)
        if self.flagged.shape != (n,) or self.boxes.shape != (n, 4):
            raise ValueError(f"inconsistent detection arrays for {n} samples")

    @classmethod
    def empty(cls, method: str, n: int, threshold: float = float("inf")) -> "Detection":
        return cls(method, np.zeros(n, np.float32), np.zeros(n, bool), np.full((n, 4), -1, np.int32), threshold)
