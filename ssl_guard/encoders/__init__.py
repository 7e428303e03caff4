"""Image encoders: the threat model whose embeddings the detectors read.

- `backbones`: `EncoderConfig` and the BasicBlock ResNet `Encoder`, `build_encoder` (seeded init).
- `hub`: `load_encoder` ("hub:org/name[@rev]", a folder, "random:..."), `save_encoder`, `push_encoder`.
- `bootstrap`: SimCLR training of an encoder on the data itself (`BootstrapConfig`, `bootstrap`).
- `convert`: `convert_checkpoint`, a trusted `torch.save` checkpoint (MoCo, torchvision) to a folder.
- `devices`: `resolve_device`.
"""

from ssl_guard.encoders.backbones import Encoder, EncoderConfig, build_encoder
from ssl_guard.encoders.convert import convert_checkpoint
from ssl_guard.encoders.devices import resolve_device
from ssl_guard.encoders.hub import load_encoder, push_encoder, save_encoder

__all__ = ["Encoder", "EncoderConfig", "build_encoder", "load_encoder", "save_encoder", "push_encoder", "resolve_device", "convert_checkpoint"]
