"""Loading, saving and publishing encoders: Hub snapshots, local folders and seeded random networks.

An encoder folder holds `config.json` (an `EncoderConfig`) and `model.safetensors` (its state dict),
the `PyTorchModelHubMixin` layout, plus a short `README.md` model card. The same folder is what the
Hub stores, so `hub:org/name` is a snapshot of it in the `huggingface_hub` cache. Weights are read
from safetensors only: a folder or repository that offers only pickle files (`.bin`, `.pt`, ...) is
refused, because unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pydantic
import torch

from ssl_guard.atomic import write_bytes_atomic
from ssl_guard.encoders.backbones import Encoder, EncoderConfig, build_encoder
from ssl_guard.encoders.devices import resolve_device
from ssl_guard.errors import ConfigError, EncoderError, EncoderNotFoundError, UnsafeWeightsError, validation_summary

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
ENCODER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".pth.tar")
# keys a "random:" spec may set; the rest of the config is provenance
RANDOM_SPEC_KEYS = ("arch", "width", "stem", "resolution", "mean", "std", "seed")

_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
_CONVERT_HINT = "convert it once with ssl_guard.encoders.convert_checkpoint, which reads it with torch.load(weights_only=True)"


# ---------------------------------------------------------------------------------------------
# Specs


def parse_hub_spec(spec: str) -> tuple[str, str | None]:
    """"hub:org/name[@revision]" -> ("org/name", revision or None).

    Raises:
        EncoderError: a malformed spec.
    """
    if not spec.startswith("hub:"):
        raise EncoderError(f"not a Hub spec: {spec!r}", "write hub:org/name or hub:org/name@revision")
    body = spec[len("hub:") :]
    repo_id, _, revision = body.partition("@")
    if not _HUB_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".", "-")) or len(repo_id) > 96:
        raise EncoderError(f"malformed Hub id in {spec!r}", "write hub:org/name or hub:org/name@revision")
    if "@" in body and not revision.strip():
        raise EncoderError(f"empty revision in {spec!r}", "drop the @ or give a branch, tag or commit sha after it")
    return repo_id, (revision or None)


def parse_random_spec(spec: str) -> tuple[EncoderConfig, int]:
    """"random" or "random:resnet18?width=32&resolution=64&seed=1" -> (config, seed).

    Raises:
        EncoderError: an unknown key or a value the config rejects.
    """
    head, _, query = spec.partition("?")
    if head not in ("random", "random:") and not head.startswith("random:"):
        raise EncoderError(f"not a random-encoder spec: {spec!r}", "write random or random:resnet18?width=32&resolution=64")
    values: dict[str, Any] = {}
    arch = head[len("random:") :] if head.startswith("random:") else ""
    if arch:
        values["arch"] = arch
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)) if query else []:
        if key not in RANDOM_SPEC_KEYS:
            raise EncoderError(f"unknown key {key!r} in {spec!r}", f"allowed keys: {', '.join(RANDOM_SPEC_KEYS)}")
        values[key] = [v.strip() for v in value.split(",")] if key in ("mean", "std") else value
    seed_text = values.pop("seed", 0)
    try:
        seed = int(seed_text)
    except ValueError:
        raise EncoderError(f"seed must be an integer in {spec!r}", "e.g. random:resnet18?seed=1") from None
    return _validated_config(values, spec), seed


def _validated_config(values: dict[str, Any], where: str) -> EncoderConfig:
    try:
        return EncoderConfig.model_validate(values)
    except pydantic.ValidationError as error:
        field, message = validation_summary(error, default="config")
        raise EncoderError(f"invalid encoder config in {where}: {field}: {message}", "fix the value, or upgrade ssl-guard if a newer version wrote it") from None


# ---------------------------------------------------------------------------------------------
# Loading


def load_encoder(spec: str, device: str | torch.device = "cpu") -> Encoder:
    """Load an encoder from `spec`, in eval mode, on `device`.

    Args:
        spec: "hub:org/name[@revision]" (a `huggingface_hub` snapshot; honours `HF_HUB_CACHE` and
            `HF_HUB_OFFLINE`), a local folder with `config.json` + `model.safetensors`, or
            "random" / "random:resnet18?width=32&resolution=64&seed=0" for a seeded random network.
        device: "cpu", "cuda", "auto", ...
    Raises:
        EncoderError: a malformed spec or a broken folder.
        EncoderNotFoundError: no such folder, Hub repository or revision, or not cached offline.
        UnsafeWeightsError: only pickle weights are offered.
    """
    spec = str(spec).strip()
    target = resolve_device(device)
    if spec == "random" or spec.startswith(("random:", "random?")):
        config, seed = parse_random_spec(spec)
        encoder = build_encoder(config, seed=seed)
        encoder.spec = spec
    elif spec.startswith("hub:"):
        encoder = _load_hub(spec)
    elif not spec:
        raise EncoderError("empty encoder spec", "pass hub:org/name, a folder, or random")
    else:
        encoder = _load_folder(Path(spec).expanduser(), spec=str(Path(spec).expanduser()))
    return encoder.to(target).eval()


def hub_cache_dir() -> Path:
    """The Hub cache in effect now: `HF_HUB_CACHE` if set (read at call time), else the library's."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    """Whether `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) is set, read at call time."""
    from huggingface_hub import constants

    def true(value: str | None) -> bool:
        return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}

    return bool(constants.HF_HUB_OFFLINE) or true(os.environ.get("HF_HUB_OFFLINE")) or true(os.environ.get("TRANSFORMERS_OFFLINE"))


def _load_hub(spec: str) -> Encoder:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = parse_hub_spec(spec)
    cache = hub_cache_dir()
    offline = hub_offline()
    fetch = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
    try:
        # only the encoder's own files: pickles are never fetched, let alone opened
        folder = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
            library_name="ssl-guard",
        )
    except GatedRepoError:
        raise EncoderError(f"{spec} is gated", "accept its terms on the Hub, then log in with `hf auth login`") from None
    except RevisionNotFoundError:
        raise EncoderNotFoundError(f"{spec}: revision {revision!r} not found", "check the branch, tag or commit sha") from None
    except RepositoryNotFoundError:
        raise EncoderNotFoundError(f"{spec}: no such model on the Hub", "check the id; for a private model log in with `hf auth login`") from None
    except HFValidationError as error:
        raise EncoderError(f"malformed Hub id in {spec!r}: {error}", "write hub:org/name[@revision]") from None
    except LocalEntryNotFoundError:
        where = "offline (HF_HUB_OFFLINE is set)" if offline else "the Hub cannot be reached"
        raise EncoderNotFoundError(
            f"{spec} is not in the Hub cache {cache} and {where}",
            f"fetch it where there is network with `{fetch}` (same HF_HUB_CACHE), then run again",
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise EncoderError(f"cannot download {spec}: {error}", f"check the network, or fetch it with `{fetch}`") from None
    path = Path(folder)
    commit = path.name  # a snapshot folder is named after the commit it holds
    if not (path / WEIGHTS_NAME).is_file() or not (path / CONFIG_NAME).is_file():
        missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (path / name).is_file()]
        pickles = _pickle_files(path)
        if pickles and WEIGHTS_NAME in missing:
            raise UnsafeWeightsError(f"{spec} offers only pickle weights ({pickles[0].name}), which ssl-guard never loads", _CONVERT_HINT)
        raise EncoderNotFoundError(
            f"{spec} has no {' or '.join(missing)}: it is not an ssl-guard encoder (weights are read from safetensors only)",
            "for a pickle checkpoint you trust, download it and use ssl_guard.encoders.convert_checkpoint",
        )
    return _load_folder(path, spec=f"hub:{repo_id}@{commit}", revision=commit)


def _pickle_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(PICKLE_SUFFIXES))


def read_config(folder: Path) -> EncoderConfig:
    """The `EncoderConfig` stored in `folder/config.json`.

    Raises:
        EncoderNotFoundError: no config.json.
        EncoderError: unreadable or invalid JSON.
    """
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise EncoderNotFoundError(f"{folder} has no {CONFIG_NAME}", "pass a folder written by save_encoder or ssl-guard bootstrap")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EncoderError(f"cannot read {path}: {error}", "restore the file or save the encoder again") from None
    if not isinstance(values, dict):
        raise EncoderError(f"{path} does not hold a JSON object", "restore the file or save the encoder again")
    return _validated_config(values, str(path))


def _load_folder(folder: Path, spec: str, revision: str | None = None) -> Encoder:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not folder.exists():
        hint = "check the path"
        if _HUB_ID.match(str(folder)) and "/" in str(folder):
            hint = f"for a Hub model write hub:{folder}"
        raise EncoderNotFoundError(f"no encoder folder {folder}", hint)
    if not folder.is_dir():
        if folder.name.lower().endswith(PICKLE_SUFFIXES):
            raise UnsafeWeightsError(f"{folder} is a pickle file, which ssl-guard never loads", _CONVERT_HINT)
        raise EncoderError(f"{folder} is a file", f"pass the folder that holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        pickles = _pickle_files(folder)
        if pickles:
            raise UnsafeWeightsError(f"{folder} holds only pickle weights ({pickles[0].name}), which ssl-guard never loads", _CONVERT_HINT)
        raise EncoderNotFoundError(f"{folder} has no {WEIGHTS_NAME}", "pass a folder written by save_encoder or ssl-guard bootstrap")
    config = read_config(folder)
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise EncoderError(f"cannot read {weights}: {error}", "the file is damaged; save or download it again") from None
    # a torchvision classifier's head is not part of the encoder
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    encoder = Encoder(config, spec=spec, revision=revision)
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as error:
        summary = str(error).split("\n\t", 1)[-1].replace("\n\t", "; ")[:300]
        raise EncoderError(f"{weights} does not match {CONFIG_NAME} ({config.arch}, width {config.width}, {config.stem} stem): {summary}", "the weights belong to another architecture") from None
    return encoder


# ---------------------------------------------------------------------------------------------
# Saving and publishing


def save_encoder(encoder: Encoder, folder: Path, overwrite: bool = False) -> Path:
    """Write `config.json`, `model.safetensors` and a `README.md` model card into `folder`.

    A new folder appears complete or not at all (written beside it, then renamed). An existing
    non-empty folder is refused unless `overwrite`, in which case each file is replaced atomically.

    Raises:
        EncoderError: `folder` exists, is not empty and `overwrite` is False; or is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise EncoderError(f"{folder} is a file", "choose a folder path for the encoder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise EncoderError(f"{folder} already exists and is not empty", "choose a new folder, or pass overwrite=True")
    files = encoder_files(encoder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.is_dir() and any(folder.iterdir()):
        for name, data in files.items():
            write_atomic(folder / name, data)
        return folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.replace(staging, folder)  # also replaces an empty existing folder
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def encoder_files(encoder: Encoder) -> dict[str, bytes]:
    """The bytes of an encoder folder's files, by name."""
    from safetensors.torch import save

    state = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    config = encoder.config.model_dump(mode="json")
    return {
        WEIGHTS_NAME: save(state, metadata={"format": "pt"}),
        CONFIG_NAME: (json.dumps(config, indent=2) + "\n").encode(),
        CARD_NAME: model_card(encoder.config).encode(),
    }


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably (the project's one writer, `ssl_guard.atomic`)."""
    write_bytes_atomic(path, data)


def model_card(config: EncoderConfig, repo_id: str | None = None) -> str:
    """A Hub model card: what the encoder is, its input contract, and how it was trained."""
    spec = f"hub:{repo_id}" if repo_id else "hub:<org>/<name>"
    training = "\n".join(f"| {k} | {v} |" for k, v in sorted(config.training.items())) or "| (none) | random initialisation |"
    method = config.ssl_method or "none (random initialisation)"
    return f"""---
library_name: ssl-guard
tags:
- ssl-guard
- self-supervised-learning
- image-feature-extraction
- backdoor-defense
---

# ssl-guard encoder

A {config.arch} image encoder (BasicBlock ResNet, base width {config.width}, {config.stem} stem) giving
{config.embed_dim}-dimensional L2-normalised embeddings, for scanning self-supervised pre-training data for
backdoor poisons with ssl-guard.

- input: {config.resolution}×{config.resolution} RGB in [0, 1], normalised inside the model with
  mean {list(config.mean)} and std {list(config.std)}
- self-supervised method: {method}
- weights: `model.safetensors` (no pickle); architecture and input contract: `config.json`

```python
from ssl_guard import load_encoder
encoder = load_encoder("{spec}")
```

## Training provenance

| field | value |
|---|---|
{training}
"""


def push_encoder(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload an encoder folder to the Hub repository `repo_id` (created if needed).

    Only `config.json`, `model.safetensors` and a model card naming `repo_id` are uploaded, whatever
    else the folder holds (checkpoints, logs). Returns the commit URL.

    Raises:
        EncoderError: not an encoder folder, a malformed id, offline mode, or the Hub refused.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError

    folder = Path(folder)
    read_config(folder)
    if not (folder / WEIGHTS_NAME).is_file():
        raise EncoderNotFoundError(f"{folder} has no {WEIGHTS_NAME}", "save the encoder with save_encoder first")
    parse_hub_spec(f"hub:{repo_id}")
    if "/" not in repo_id:
        raise ConfigError(f"Hub id {repo_id!r} has no namespace", "write it as user/name or org/name")
    if hub_offline():
        raise EncoderError(f"cannot push {repo_id}: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to upload, or push later with push_encoder")
    network_errors: tuple[type[BaseException], ...] = (OSError,)
    for module in ("httpx2", "httpx"):
        try:
            network_errors += (__import__(module).HTTPError,)
        except (ImportError, AttributeError):
            pass
    config = read_config(folder)
    operations = [
        CommitOperationAdd(path_in_repo=CONFIG_NAME, path_or_fileobj=str(folder / CONFIG_NAME)),
        CommitOperationAdd(path_in_repo=WEIGHTS_NAME, path_or_fileobj=str(folder / WEIGHTS_NAME)),
        # the card names the repository it lives in, which the saved folder cannot know
        CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=model_card(config, repo_id).encode()),
    ]
    api = HfApi(library_name="ssl-guard")
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message=f"Upload ssl-guard encoder ({config.arch}, width {config.width}, {config.resolution} px)",
        )
    except LocalTokenNotFoundError:
        raise EncoderError(f"cannot push {repo_id}: not logged in to the Hub", "log in with `hf auth login` or set HF_TOKEN") from None
    except HFValidationError as error:
        raise EncoderError(f"malformed Hub id {repo_id!r}: {error}", "write it as user/name") from None
    except HfHubHTTPError as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        hint = "log in with a write token: `hf auth login` or HF_TOKEN" if status in (401, 403) else "check the id and your permissions"
        raise EncoderError(f"the Hub refused the upload to {repo_id}: {str(error).splitlines()[0]}", hint) from None
    except network_errors as error:
        raise EncoderError(f"cannot reach the Hub to push {repo_id}: {error}", "check the network, then push again") from None
    return str(info.commit_url)
