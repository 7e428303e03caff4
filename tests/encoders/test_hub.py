"""Loading and saving encoders: folders, the Hub cache offline, random specs, and refusals."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssl_guard.cli import main
from ssl_guard.encoders import EncoderConfig, build_encoder, load_encoder, push_encoder, save_encoder
from ssl_guard.encoders.hub import parse_hub_spec
from ssl_guard.errors import EncoderError, EncoderNotFoundError, GuardError, UnsafeWeightsError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
REPO_ROOT = Path(__file__).resolve().parents[2]


def small(seed: int = 0, **values):
    config = EncoderConfig(**{"width": 8, "resolution": 32, **values})
    return build_encoder(config, seed=seed)


@pytest.fixture
def saved(tmp_path) -> tuple[Path, torch.nn.Module]:
    encoder = small(seed=3, mean=(0.5, 0.4, 0.3), training={"epochs": 2, "seed": 3})
    folder = save_encoder(encoder, tmp_path / "encoder")
    return folder, encoder


def same_outputs(a, b) -> bool:
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return torch.equal(a(images), b(images))


def test_folder_round_trip_keeps_weights_and_config(saved):
    folder, encoder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = load_encoder(str(folder))
    assert loaded.config == encoder.config
    assert loaded.config.mean == (0.5, 0.4, 0.3) and loaded.config.training == {"epochs": 2, "seed": 3}
    assert same_outputs(loaded, encoder)
    assert loaded.spec == str(folder) and loaded.revision is None
    assert not loaded.training
    assert json.loads((folder / "config.json").read_text())["embed_dim"] == 64


def test_save_refuses_a_non_empty_folder_unless_overwrite(saved, tmp_path):
    folder, _ = saved
    other = small(seed=9)
    with pytest.raises(EncoderError, match="not empty"):
        save_encoder(other, folder)
    save_encoder(other, folder, overwrite=True)
    assert same_outputs(load_encoder(str(folder)), other)
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert same_outputs(load_encoder(str(save_encoder(other, empty))), other)


def test_hub_cache_round_trip_offline(saved, offline_hub):
    folder, encoder = saved
    offline_hub.add_folder("acme/guard-encoder", folder, COMMIT)
    loaded = load_encoder("hub:acme/guard-encoder")
    assert same_outputs(loaded, encoder)
    assert loaded.config == encoder.config
    assert loaded.revision == COMMIT
    assert loaded.spec == f"hub:acme/guard-encoder@{COMMIT}"
    assert load_encoder(f"hub:acme/guard-encoder@{COMMIT}").revision == COMMIT
    assert load_encoder("hub:acme/guard-encoder@main").revision == COMMIT


def test_hub_revision_selects_the_snapshot(saved, offline_hub, tmp_path):
    folder, encoder = saved
    newer = small(seed=5)
    offline_hub.add_folder("acme/guard-encoder", folder, COMMIT, refs=("v1",))
    offline_hub.add_folder("acme/guard-encoder", save_encoder(newer, tmp_path / "newer"), OTHER_COMMIT, refs=("main",))
    assert same_outputs(load_encoder("hub:acme/guard-encoder@v1"), encoder)
    assert same_outputs(load_encoder("hub:acme/guard-encoder"), newer)


def test_missing_hub_model_offline_says_how_to_fetch_it(offline_hub):
    with pytest.raises(EncoderNotFoundError) as caught:
        load_encoder("hub:acme/never-downloaded@v2")
    line = caught.value.one_line()
    assert "\n" not in line
    assert "hf download acme/never-downloaded --revision v2" in line
    assert "HF_HUB_OFFLINE" in line


def test_env_set_at_start_is_honoured(saved, offline_hub):
    """The usual way: HF_HUB_OFFLINE and HF_HUB_CACHE exported before the process starts."""
    folder, encoder = saved
    offline_hub.add_folder("acme/guard-encoder", folder, COMMIT)
    code = "from ssl_guard.encoders import load_encoder; e = load_encoder('hub:acme/guard-encoder'); print(e.revision, e.config.width)"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(offline_hub.path), PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [COMMIT, "8"]


class _Boom:
    """A pickle payload that writes a file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def test_pickle_only_folder_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "ran.txt"
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(EncoderConfig(width=8, resolution=32).model_dump(mode="json")))
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Boom(marker)))
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        load_encoder(str(folder))
    with pytest.raises(UnsafeWeightsError):
        load_encoder(str(folder / "pytorch_model.bin"))
    assert not marker.exists()


def test_pickle_only_hub_repo_is_refused(offline_hub, tmp_path):
    marker = tmp_path / "ran.txt"
    config = json.dumps(EncoderConfig(width=8, resolution=32).model_dump(mode="json")).encode()
    offline_hub.add("acme/pickled", {"config.json": config, "pytorch_model.bin": pickle.dumps(_Boom(marker))}, COMMIT)
    with pytest.raises(UnsafeWeightsError):
        load_encoder("hub:acme/pickled")
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(saved):
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    config.update(width=16, embed_dim=None)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(EncoderError, match="does not match"):
        load_encoder(str(folder))


def test_broken_config_is_an_encoder_error(saved):
    folder, _ = saved
    (folder / "config.json").write_text("{not json")
    with pytest.raises(EncoderError, match="cannot read"):
        load_encoder(str(folder))
    (folder / "config.json").write_text(json.dumps({"arch": "resnet50"}))
    with pytest.raises(EncoderError, match="arch"):
        load_encoder(str(folder))


@pytest.mark.parametrize(
    "spec,error",
    [
        ("hub:", EncoderError),
        ("hub:acme/bad name", EncoderError),
        ("hub:acme/x@", EncoderError),
        ("hub:a/b/c", EncoderError),
        ("random:resnet50", EncoderError),
        ("random?width=wide", EncoderError),
        ("random?depth=3", EncoderError),
        ("", EncoderError),
        ("acme/not-a-folder", EncoderNotFoundError),
    ],
)
def test_bad_specs_are_guard_errors(spec, error, offline_hub):
    with pytest.raises(error) as caught:
        load_encoder(spec)
    assert "\n" not in caught.value.one_line()


def test_a_hub_id_without_prefix_gets_a_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EncoderNotFoundError) as caught:
        load_encoder("acme/encoder")
    assert "write hub:acme/encoder" in caught.value.one_line()


def test_random_spec_builds_a_seeded_encoder():
    encoder = load_encoder("random:resnet10?width=16&resolution=48&stem=cifar&seed=4")
    assert (encoder.config.arch, encoder.config.width, encoder.config.resolution, encoder.config.stem) == ("resnet10", 16, 48, "cifar")
    assert encoder.spec == "random:resnet10?width=16&resolution=48&stem=cifar&seed=4"
    again = load_encoder("random:resnet10?width=16&resolution=48&stem=cifar&seed=4")
    images = torch.rand(1, 3, 48, 48)
    assert torch.equal(encoder(images), again(images))
    assert load_encoder("random").config == EncoderConfig()


def test_parse_hub_spec():
    assert parse_hub_spec("hub:acme/enc") == ("acme/enc", None)
    assert parse_hub_spec("hub:acme/enc@v1.0") == ("acme/enc", "v1.0")


def test_push_refuses_offline_and_non_encoder_folders(saved, offline_hub, tmp_path):
    folder, _ = saved
    with pytest.raises(EncoderError, match="HF_HUB_OFFLINE"):
        push_encoder(folder, "acme/guard-encoder")
    with pytest.raises(EncoderNotFoundError):
        push_encoder(tmp_path, "acme/guard-encoder")
    with pytest.raises(GuardError):
        push_encoder(folder, "no namespace")


def test_cli_missing_init_model_exits_2_with_one_line(offline_hub, image_folder, tmp_path, capsys):
    rc = main(["bootstrap", str(image_folder), "--out", str(tmp_path / "run"), "--init", "hub:acme/missing", "--no-progress", "--workers", "0"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "hf download acme/missing" in err
    assert not (tmp_path / "run").exists()


def test_push_uploads_only_the_encoder_files_with_a_card_naming_the_repo(saved, monkeypatch):
    """The Hub cannot be reached here: HfApi is replaced by a recorder of what would be sent."""
    import huggingface_hub

    folder, _ = saved
    (folder / "checkpoint").mkdir()
    (folder / "checkpoint" / "state.json").write_text("{}")
    sent = {}

    def create_repo(self, repo_id, **kwargs):
        sent["repo"] = (repo_id, kwargs.get("private"))

    def create_commit(self, repo_id, operations, **kwargs):
        sent["files"] = {op.path_in_repo: op for op in operations}
        return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/{COMMIT}"})()

    # online for this test, whichever test first imported huggingface_hub (its constants are read then)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    url = push_encoder(folder, "acme/guard-encoder", private=True)
    assert url.endswith(COMMIT)
    assert sent["repo"] == ("acme/guard-encoder", True)
    assert sorted(sent["files"]) == ["README.md", "config.json", "model.safetensors"]
    card = sent["files"]["README.md"].path_or_fileobj
    assert b'load_encoder("hub:acme/guard-encoder")' in card
