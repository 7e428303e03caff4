"""Choosing the torch device once, in one place."""

from __future__ import annotations

import torch

from ssl_guard.errors import ConfigError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu", "cuda", "cuda:N" and "mps" are checked.

    Raises:
        ConfigError: an unknown device name, or an accelerator that is not present.
    """
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {name!r}", "use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available", "use --device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: {torch.cuda.device_count()} CUDA device(s) present", "pick an index below the device count")
        return device
    if device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {name!r} requested but MPS is not available", "use --device auto or cpu")
        return device
    raise ConfigError(f"unsupported device {name!r}", "use auto, cpu, cuda or cuda:N")
