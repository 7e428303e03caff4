"""Converting trusted torch checkpoints into encoder folders, and refusing hostile ones."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from ssl_guard.encoders import EncoderConfig, build_encoder, load_encoder
from ssl_guard.encoders.convert import convert_checkpoint
from ssl_guard.errors import EncoderError, UnsafeWeightsError


def same_outputs(a, b) -> bool:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return torch.allclose(a(images), b(images), atol=1e-6)


def test_moco_checkpoint_becomes_its_query_encoder(tmp_path):
    query = build_encoder(EncoderConfig(arch="resnet10", width=8, stem="cifar", resolution=32), seed=1)
    key = build_encoder(EncoderConfig(arch="resnet10", width=8, stem="cifar", resolution=32), seed=2)
    state = {f"module.encoder_q.{k}": v for k, v in query.state_dict().items()}
    state |= {f"module.encoder_k.{k}": v for k, v in key.state_dict().items()}
    state["module.encoder_q.fc.0.weight"] = torch.zeros(64, 64)  # the MLP head is dropped
    torch.save({"epoch": 200, "arch": "resnet10", "state_dict": state, "optimizer": {"state": {}, "param_groups": [{"lr": 0.03}]}}, tmp_path / "moco.pth.tar")

    encoder = convert_checkpoint(tmp_path / "moco.pth.tar", tmp_path / "enc", resolution=32, ssl_method="mocov2")
    loaded = load_encoder(str(tmp_path / "enc"))
    assert (loaded.config.arch, loaded.config.width, loaded.config.stem, loaded.config.ssl_method) == ("resnet10", 8, "cifar", "mocov2")
    assert loaded.config.training["prefix"] == "module.encoder_q."
    assert same_outputs(loaded, query) and same_outputs(encoder, query)


def test_plain_state_dict_with_classifier_head(tmp_path):
    source = build_encoder(EncoderConfig(width=8, resolution=32), seed=4)
    torch.save(dict(source.state_dict(), **{"fc.weight": torch.zeros(10, 64), "fc.bias": torch.zeros(10)}), tmp_path / "model.pt")
    assert same_outputs(convert_checkpoint(tmp_path / "model.pt", tmp_path / "enc", resolution=32), source)


def test_two_unnamed_backbones_need_a_prefix(tmp_path):
    a, b = (build_encoder(EncoderConfig(width=8, resolution=32), seed=s) for s in (1, 2))
    state = {f"student.{k}": v for k, v in a.state_dict().items()} | {f"teacher.{k}": v for k, v in b.state_dict().items()}
    torch.save(state, tmp_path / "dino.pth")
    with pytest.raises(EncoderError, match="several backbones"):
        convert_checkpoint(tmp_path / "dino.pth", tmp_path / "enc", resolution=32)
    assert same_outputs(convert_checkpoint(tmp_path / "dino.pth", tmp_path / "enc", resolution=32, prefix="teacher."), b)


class _Boom:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_hostile_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran.txt"
    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"state_dict": _Boom(marker)}))
    with pytest.raises(UnsafeWeightsError):
        convert_checkpoint(tmp_path / "evil.pth", tmp_path / "enc", resolution=32)
    assert not marker.exists() and not (tmp_path / "enc").exists()


def test_not_a_resnet(tmp_path):
    torch.save({"weight": torch.zeros(3, 3)}, tmp_path / "linear.pt")
    with pytest.raises(EncoderError, match="no ResNet stem"):
        convert_checkpoint(tmp_path / "linear.pt", tmp_path / "enc", resolution=32)
