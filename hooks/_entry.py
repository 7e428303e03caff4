"""Shared start-up of the pre-commit entry points: find ssl_guard, run one CLI command.

pre-commit runs these scripts (`language: script`) from its clone of the ssl-guard repository,
in the user's repository, with the user's Python. The installed `ssl_guard` is used when there is
one (it is the version that wrote the manifests); otherwise the clone's own copy, which needs only
pydantic, numpy, pillow, typer and braceexpand for `verify`.
"""

from __future__ import annotations

import sys
from pathlib import Path


def run(command: str, argv: list[str]) -> int:
    try:
        from ssl_guard.cli import main
    except ImportError:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        try:
            from ssl_guard.cli import main
        except ImportError as error:
            print(f"error: ssl-guard cannot start: {error} (pip install ssl-guard in the environment pre-commit runs in)", file=sys.stderr)
            return 2
    return main([command, *argv])
