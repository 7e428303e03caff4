"""Reports of a scan: `report.json` (schema), `report.html`, the terminal summary and their pictures.

Exports are lazy so that importing `ssl_guard.report` stays light: the schema needs only pydantic,
the pictures numpy and PIL, the summary rich.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Report": "ssl_guard.report.schema",
    "Suspect": "ssl_guard.report.schema",
    "BankPattern": "ssl_guard.report.schema",
    "SkippedSample": "ssl_guard.report.schema",
    "StageTiming": "ssl_guard.report.schema",
    "Histogram": "ssl_guard.report.schema",
    "SCHEMA_VERSION": "ssl_guard.report.schema",
    "render_html": "ssl_guard.report.html",
    "print_summary": "ssl_guard.report.console",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssl_guard.report' has no attribute {name!r}")
