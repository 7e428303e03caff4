"""The one reader of the project's versioned JSON files (quarantine.json, report.json, baselines).

Every such file is a JSON object with an integer `schema_version`. `read_versioned` turns each
way of failing (missing, unreadable, not JSON, not an object, no or another version) into one
`GuardError` line with a hint, so the three formats fail alike. Standard library only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ssl_guard.errors import GuardError


def read_versioned(
    path: Path,
    version: int,
    error: type[GuardError],
    kind: str,
    missing_hint: str,
    other_version_hint: Callable[[object], str],
) -> dict:
    """The JSON object in `path` if its `schema_version` is `version`.

    Args:
        error: the `GuardError` subclass to raise.
        kind: what the file is, for messages ("quarantine manifest", "report", "baseline").
        missing_hint: the next action when the file does not exist.
        other_version_hint: the next action for a file of another version (given that version).

    Raises:
        error: missing, unreadable, not JSON, not an object, without or with another schema_version.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist", missing_hint) from None
    except (OSError, UnicodeDecodeError) as failure:
        raise error(f"cannot read {path}: {getattr(failure, 'strerror', None) or failure}", f"is it a {kind}?") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as failure:
        raise error(f"cannot read {path}: not valid JSON ({failure.msg} at line {failure.lineno})", f"is it a {kind}?") from None
    if not isinstance(raw, dict) or "schema_version" not in raw:
        raise error(f"{path} is not a {kind} (no schema_version)", f"pass the {kind} file itself")
    found = raw["schema_version"]
    if found != version:
        raise error(f"{path} has schema_version {found!r}, this ssl-guard reads {version}", other_version_hint(found))
    return raw
