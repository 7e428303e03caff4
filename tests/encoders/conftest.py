"""Fixtures for the encoder tests: one torch thread, and a hand-built offline Hub cache."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
    """Lay out `files` as the `huggingface_hub` cache does after a download of `repo_id` at `commit`.

    models--org--name/blobs/<sha256> hold the bytes, snapshots/<commit>/<name> link to them, and
    refs/<branch> holds the commit. Returns the snapshot folder.
    """
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (repo / "refs" / ref).write_text(commit)
    return snapshot


class OfflineHub:
    """A Hub cache folder and a way to put repositories into it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, repo_id: str, files: dict[str, bytes], commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
        return write_hub_cache(self.path, repo_id, files, commit, refs)

    def add_folder(self, repo_id: str, folder: Path, commit: str, refs: tuple[str, ...] = ("main",)) -> Path:
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        return self.add(repo_id, files, commit, refs)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> OfflineHub:
    """An empty Hub cache in tmp, with HF_HUB_CACHE pointing at it and HF_HUB_OFFLINE=1."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return OfflineHub(cache)
