"""ssl-guard: keep backdoor-poisoned images out of self-supervised pre-training.

Public API, exported lazily so that importing the package (and the light CLI commands) does not pull
in torch: `scan`, `GuardedDataset`, `Quarantine`, `load_encoder`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "scan": "ssl_guard.detect.pipeline",
    "GuardedDataset": "ssl_guard.guard",
    "Quarantine": "ssl_guard.quarantine",
    "load_encoder": "ssl_guard.encoders",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssl_guard' has no attribute {name!r}")
