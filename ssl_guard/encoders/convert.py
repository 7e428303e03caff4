"""Turning a trusted PyTorch checkpoint (MoCo, SimCLR, torchvision) into an encoder folder.

The threat model PoisonCAM needs is often the user's own SSL checkpoint, saved with `torch.save`.
It is read with `torch.load(weights_only=True)`, which rebuilds tensors and plain containers only
and refuses any other pickled object, so a hostile file cannot run code. The backbone is found by
its stem convolution (`<prefix>conv1.weight`), its architecture is read from the tensor shapes,
and heads (`fc.*`) are dropped; the result is saved as safetensors like any other encoder.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ssl_guard.encoders.backbones import STAGE_BLOCKS, Encoder, EncoderConfig
from ssl_guard.encoders.hub import save_encoder
from ssl_guard.errors import EncoderError, EncoderNotFoundError, UnsafeWeightsError

# where training scripts nest the model's state dict inside a checkpoint
_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "encoder", "backbone", "net")
# MoCo keeps a query and a key encoder; the query encoder is the one that is trained by gradient
_PREFERRED = ("encoder_q.", "module.encoder_q.")


def _tensor_dict(checkpoint: Any) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, dict):
        for key in _CONTAINER_KEYS:
            if isinstance(checkpoint.get(key), dict):
                return _tensor_dict(checkpoint[key])
        tensors = {k: v for k, v in checkpoint.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise EncoderError("the checkpoint holds no state dict of tensors", "pass a file saved with torch.save(model.state_dict()) or a training checkpoint")


def backbone_prefixes(state: dict[str, torch.Tensor]) -> list[str]:
    """Key prefixes under which a ResNet stem (`conv1.weight`, 4-D, 3 input channels) is found."""
    return sorted(
        key[: -len("conv1.weight")]
        for key, value in state.items()
        if key.endswith("conv1.weight") and value.ndim == 4 and value.shape[1] == 3 and not re.search(r"layer\d\.", key)
    )


def infer_config(state: dict[str, torch.Tensor], resolution: int, **values: Any) -> EncoderConfig:
    """The `EncoderConfig` a backbone state dict (prefix already stripped) was built with.

    Width and stem come from `conv1.weight` ((W, 3, 7, 7): ImageNet stem; (W, 3, 3, 3): CIFAR),
    the depth from the number of blocks per stage. `resolution` (and mean/std) cannot be read
    from weights and must be given.
    """
    stem_weight = state.get("conv1.weight")
    if stem_weight is None:
        raise EncoderError("the state dict has no conv1.weight", "it is not a torchvision-style ResNet backbone")
    width, kernel = int(stem_weight.shape[0]), int(stem_weight.shape[-1])
    stem = {7: "imagenet", 3: "cifar"}.get(kernel)
    if stem is None:
        raise EncoderError(f"a {kernel}×{kernel} stem convolution is neither the ImageNet (7×7) nor the CIFAR (3×3) stem")
    blocks = tuple(len({key.split(".")[1] for key in state if key.startswith(f"layer{stage}.")}) for stage in range(1, 5))
    arch = next((name for name, layout in STAGE_BLOCKS.items() if layout == blocks), None)
    if arch is None:
        raise EncoderError(f"blocks per stage {blocks} match no supported ResNet", f"supported: {', '.join(f'{n} {b}' for n, b in STAGE_BLOCKS.items())}")
    try:
        return EncoderConfig(arch=arch, width=width, stem=stem, resolution=resolution, **values)
    except ValueError as error:
        raise EncoderError(f"invalid encoder settings: {error}".splitlines()[0], "check resolution, mean and std") from None


def convert_checkpoint(
    path: Path,
    out: Path,
    resolution: int,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    prefix: str | None = None,
    ssl_method: str | None = None,
) -> Encoder:
    """Read a trusted `torch.save` checkpoint of a BasicBlock ResNet and save it as an encoder folder.

    Args:
        path: the checkpoint (`.pth`, `.pth.tar`, `.pt`, `.bin`).
        out: the encoder folder to create (refused if it exists and is not empty).
        resolution: the input side the encoder was trained at (cannot be read from the weights).
        mean, std: the normalisation it was trained with.
        prefix: the key prefix of the backbone (e.g. "module.encoder_q."); found automatically when
            there is one stem convolution, or MoCo's query encoder.
        ssl_method: recorded in the config (e.g. "mocov2").
    Raises:
        UnsafeWeightsError: the file holds pickled objects other than tensors and containers.
        EncoderError: no backbone, an ambiguous one, or an unsupported architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderNotFoundError(f"no checkpoint file {path}", "check the path")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # plain pickles are refused below anyway
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeWeightsError(f"{path} holds pickled objects other than tensors: {str(error).splitlines()[0]}", "re-save only the model's state_dict with torch.save") from None
    except (OSError, RuntimeError, EOFError) as error:
        raise EncoderError(f"cannot read {path}: {str(error).splitlines()[0]}", "pass a file written by torch.save") from None
    state = _tensor_dict(checkpoint)
    if prefix is None:
        found = backbone_prefixes(state)
        preferred = [p for p in found if p.endswith(_PREFERRED)]
        if len(found) == 1 or len(preferred) == 1:
            prefix = found[0] if len(found) == 1 else preferred[0]
        elif not found:
            raise EncoderError(f"{path} holds no ResNet stem (no <prefix>conv1.weight)", "it is not a torchvision-style ResNet checkpoint")
        else:
            raise EncoderError(f"{path} holds several backbones: {', '.join(repr(p) for p in found)}", "pass prefix= to choose one")
    backbone = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and not k[len(prefix) :].startswith("fc.")}
    config = infer_config(backbone, resolution, mean=mean, std=std, ssl_method=ssl_method, training={"converted_from": path.name, "prefix": prefix})
    encoder = Encoder(config, spec=str(out))
    try:
        encoder.load_state_dict(backbone, strict=True)
    except RuntimeError as error:
        summary = str(error).split("\n\t", 1)[-1].replace("\n\t", "; ")[:300]
        raise EncoderError(f"{path} under {prefix!r} does not fit a {config.arch} of width {config.width}: {summary}", "check prefix=") from None
    save_encoder(encoder.eval(), Path(out))
    return encoder
