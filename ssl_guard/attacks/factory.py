"""Build an attack from command-line style arguments (shared by the CLI and the bench scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ssl_guard.attacks.base import Attack
from ssl_guard.errors import ConfigError


def parse_coefficients(text: str) -> tuple[tuple[int, int], ...]:
    """'15,15 31,31' -> ((15, 15), (31, 31))."""
    pairs = []
    for item in text.replace(";", " ").split():
        try:
            row, col = (int(v) for v in item.split(","))
        except ValueError:
            raise ConfigError(f"DCT coefficient {item!r} is not 'row,col'", "pass --coefficients like '15,15 31,31'") from None
        pairs.append((row, col))
    return tuple(pairs)


def build_attack(
    kind: str,
    seed: int = 0,
    triggers: Sequence[str | Path] = (),
    trigger_width: float = 0.19,
    alpha: float = 0.1,
    pattern: str | Path | None = None,
    magnitude: float = 100.0,
    window: int = 32,
    coefficients: str = "15,15 31,31",
) -> Attack:
    """The attack `kind` (patch, blend, frequency) with its options; other kinds' options are ignored.

    Without a trigger (patch) or pattern (blend), a generated one is used, fixed by `seed`.
    """
    if kind == "patch":
        from ssl_guard.attacks.patch import PatchAttack, load_trigger
        from ssl_guard.synthetic import trigger_patch

        named = [(Path(p).stem, load_trigger(p)) for p in triggers] or [("generated", trigger_patch(seed=seed, size=64))]
        return PatchAttack(named, trigger_width)
    if kind == "blend":
        from ssl_guard.attacks.blend import BlendAttack, generated_pattern
        from ssl_guard.attacks.patch import load_trigger

        if pattern is None:
            return BlendAttack(generated_pattern(seed), alpha, "generated-noise")
        return BlendAttack(load_trigger(pattern), alpha, Path(pattern).stem)
    if kind == "frequency":
        from ssl_guard.attacks.frequency import FrequencyAttack

        return FrequencyAttack(magnitude, window, parse_coefficients(coefficients))
    raise ConfigError(f"--attack {kind!r} is unknown", "use patch, blend or frequency")
