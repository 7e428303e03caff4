"""Detectors as registered classes with one interface.

Every detector the scan can run is a `Detector` subclass registered under its method name. The
pipeline asks the registry which detectors a `--method` selects and runs each one the same way:
`settings(config)` is its part of the stage's cache key, `run(inputs)` returns a `Detection`.
A new detector plugs in by subclassing and decorating with `@register`; the pipeline has no
per-detector branch.

    @register
    class MyDetector(Detector):
        name = "mine2"
        in_auto = "always"        # "always", "trained" (only with a trained SSL encoder) or "never"
        in_ensemble = True

        def settings(self, config):
            return config.mine2

        def run(self, inputs):
            return detect_mine2(inputs.arrays.images, inputs.semantic, ...)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from ssl_guard.detect.result import Detection

Selection = Literal["always", "trained", "never"]


@dataclass(frozen=True)
class DetectorInputs:
    """What every detector may read: the scan's arrays (image cache and embeddings), the semantic
    cluster of each sample, the threat-model encoder, the scan config, the device, the progress
    bar (or None), the scan resolution and, for photos of mixed sizes, the native view
    (`ssl_guard.detect.native`)."""

    arrays: Any
    semantic: np.ndarray
    net: Any
    config: Any
    device: Any
    progress: Any
    resolution: int
    native: Any = None  # a `NativeView` when the photos differ in size (patch detectors read it)


class Detector:
    """One detection method. Subclasses set `name`, `in_auto`, `in_ensemble` and implement
    `settings` and `run`."""

    name: ClassVar[str] = ""
    in_auto: ClassVar[Selection] = "never"
    in_ensemble: ClassVar[bool] = False

    def settings(self, config) -> Any:
        """The settings the result depends on (hashed into the stage's cache key)."""
        raise NotImplementedError

    def run(self, inputs: DetectorInputs) -> Detection:
        raise NotImplementedError


_REGISTRY: dict[str, type[Detector]] = {}


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make `cls` selectable as `--method cls.name`."""
    if not cls.name or cls.name in ("auto", "ensemble"):
        raise ValueError(f"a detector needs a name other than auto/ensemble, got {cls.name!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"a detector named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def detector(name: str) -> Detector:
    """A fresh instance of the detector registered as `name` (KeyError when unknown)."""
    _load_builtin()
    return _REGISTRY[name]()


def names() -> tuple[str, ...]:
    """Registered method names, in registration order."""
    _load_builtin()
    return tuple(_REGISTRY)


def selected(method: str, trained: bool) -> list[str]:
    """The detectors a `--method` runs: `auto` takes those marked "always" (and "trained" ones
    when the encoder is a trained SSL model), `ensemble` those marked `in_ensemble`, any other
    value is one registered name."""
    _load_builtin()
    if method == "auto":
        return [n for n, c in _REGISTRY.items() if c.in_auto == "always" or (trained and c.in_auto == "trained")]
    if method == "ensemble":
        return [n for n, c in _REGISTRY.items() if c.in_ensemble]
    if method not in _REGISTRY:
        raise KeyError(method)
    return [method]


def _load_builtin() -> None:
    import ssl_guard.detect.builtin  # noqa: F401  (registers the shipped detectors)
