"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint folder holds `step-<n>.safetensors` (model, projection head and optimizer tensors) and
`state.json`, which names that file and carries the counters. `state.json` is replaced last, so it
is the commit point: an interruption at any moment leaves the previous checkpoint intact and never
a weights file that disagrees with its counters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ssl_guard.encoders.hub import write_atomic
from ssl_guard.errors import RunDirError

STATE_NAME = "state.json"
FORMAT = 1


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state dict into its tensors and a JSON-able remainder."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of `optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write one checkpoint: `modules` (name -> module) and `optimizer` tensors, then `state`."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    step = int(state["step"])
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{prefix}.{key}"] = value.detach().to("cpu").contiguous()
    optimizer_part, optimizer_meta = optimizer_tensors(optimizer)
    tensors.update(optimizer_part)
    weights_name = f"step-{step:08d}.safetensors"
    write_atomic(folder / weights_name, save(tensors, metadata={"format": "pt", "step": str(step)}))
    previous = read_state(folder)
    record = dict(state, format=FORMAT, weights=weights_name, optimizer=optimizer_meta)
    write_atomic(folder / STATE_NAME, (json.dumps(record, indent=2) + "\n").encode())
    if previous and previous.get("weights") not in (None, weights_name):
        (folder / previous["weights"]).unlink(missing_ok=True)


def read_state(folder: Path) -> dict[str, Any] | None:
    """The committed `state.json` of a checkpoint folder, or None when there is none.

    Raises:
        RunDirError: a state file that cannot be read.
    """
    path = Path(folder) / STATE_NAME
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirError(f"cannot read checkpoint {path}: {error}", "delete the folder and start a new run") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunDirError(f"{path} is not a checkpoint this version can read", "start a new run in another folder")
    return state


def mark_finished(folder: Path) -> None:
    """Record in `state.json` that the run completed and its encoder folder is written."""
    state = read_state(folder)
    if state is None:
        raise RunDirError(f"{folder} holds no checkpoint", "start without --resume")
    state["finished"] = True
    write_atomic(Path(folder) / STATE_NAME, (json.dumps(state, indent=2) + "\n").encode())


def load_checkpoint(folder: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore `modules` and `optimizer` in place from the committed checkpoint; return its state.

    Raises:
        RunDirError: no checkpoint, or one whose tensors do not fit the modules.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = read_state(folder)
    if state is None:
        raise RunDirError(f"{folder} holds no checkpoint", "start without --resume")
    path = Path(folder) / state["weights"]
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise RunDirError(f"cannot read checkpoint {path}: {error}", "delete the folder and start a new run") from None
    try:
        for prefix, module in modules.items():
            part = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
            module.load_state_dict(part, strict=True)
        device = next(iter(modules.values())).parameters().__next__().device
        optimizer_part = {k: v.to(device) for k, v in tensors.items() if k.startswith("optimizer.")}
        restore_optimizer(optimizer, optimizer_part, state["optimizer"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise RunDirError(f"checkpoint {path} does not fit this model: {str(error).splitlines()[0]}", "resume with the options the run was started with") from None
    return state
