"""Shared start-up of the pre-commit entry points: find ssl_guard, run one CLI command.

pre-commit runs these scripts (`language: script`) from its clone of the ssl-guard repository,
in the user's repository, with the user's Python. The installed `ssl_guard` is used when there is
one (it is the version that wrote the manifests); otherwise the clone's own copy, which needs only
pydantic, numpy, pillow, typer and braceexpand for `verify`.

Exit codes are those of the command: 0 pass, 1 findings or an uncovered/stale manifest, 2 anything
else. A usage error or a crash is 2 here whatever the CLI shell does with it, so that a broken hook
never reads as "poison found".
"""

from __future__ import annotations

import sys
import traceback
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
    try:
        return main([command, *argv])
    except Exception as error:
        if hasattr(error, "format_message"):  # a command-line usage error (click/typer)
            print(f"error: {error.format_message()} (see ssl-guard {command} --help)", file=sys.stderr)
        else:
            traceback.print_exc()
        return 2
