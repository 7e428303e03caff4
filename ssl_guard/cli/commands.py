"""Collects the commands: every module in `ssl_guard.cli` that defines `NAME` and `command`."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable

import ssl_guard.cli as _package

_NOT_COMMANDS = {"commands", "options"}


def _discover() -> dict[str, Callable]:
    found: dict[str, Callable] = {}
    for info in sorted(pkgutil.iter_modules(_package.__path__), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in _NOT_COMMANDS:
            continue
        module = importlib.import_module(f"ssl_guard.cli.{info.name}")
        if hasattr(module, "NAME") and hasattr(module, "command"):
            found[module.NAME] = module.command
    return found


ALL = _discover()
