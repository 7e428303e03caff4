"""pre-commit hooks: the manifest declares both hooks, and the entry points run the right commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssl_guard.quarantine import QuarantineEntry, build_quarantine

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_manifest_declares_a_light_and_a_full_hook():
    hooks = {hook["id"]: hook for hook in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"ssl-guard-verify", "ssl-guard-scan"}
    for hook in hooks.values():
        assert {"id", "name", "entry", "language"} <= set(hook)
        entry = ROOT / hook["entry"]
        assert entry.is_file() and os.access(entry, os.X_OK) and entry.parent.name == "hooks"
    assert hooks["ssl-guard-verify"].get("pass_filenames", True) is True
    assert hooks["ssl-guard-scan"]["stages"] == ["manual"] and hooks["ssl-guard-scan"]["pass_filenames"] is False


def test_manifest_is_valid_for_pre_commit():
    tool = shutil.which("pre-commit") or str(Path(sys.executable).with_name("pre-commit"))
    if not Path(tool).exists():
        pytest.skip("pre-commit is not installed")
    done = subprocess.run([tool, "validate-manifest", str(ROOT / ".pre-commit-hooks.yaml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture
def repo(shard_folder, tmp_path):
    data = tmp_path / "data" / "shards"
    shutil.copytree(shard_folder, data)
    build_quarantine([str(data)], [], n_scanned=48).write(tmp_path / "data" / "quarantine.json")
    return tmp_path


def _hook(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a hook script as pre-commit does, and report whether it imported torch."""
    code = (
        "import runpy, sys\n"
        "try:\n    runpy.run_path(%r, run_name='__main__')\n"
        "except SystemExit as done:\n    rc = done.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)\n"
        "sys.exit(rc)\n"
    ) % str(ROOT / "hooks" / name)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, env=_env())


def test_verify_hook_passes_covered_shards_without_torch(repo):
    done = _hook("ssl-guard-verify", "--quarantine", "data/quarantine.json", "data/shards/shard-000001.tar", cwd=repo)
    assert done.returncode == 0, done.stderr
    assert "1 covered" in done.stdout and "no torch" in done.stderr


def test_verify_hook_fails_on_new_or_changed_shards(repo):
    shards = repo / "data" / "shards"
    shutil.copy(shards / "shard-000000.tar", shards / "shard-000003.tar")
    with open(shards / "shard-000001.tar", "ab") as handle:
        handle.write(b"\0" * 512)
    done = _hook("ssl-guard-verify", "-q", "data/quarantine.json", "data/shards/shard-000003.tar", "data/shards/shard-000001.tar", cwd=repo)
    assert done.returncode == 1
    assert "shard-000003.tar is not in data/quarantine.json" in done.stderr
    assert "shard-000001.tar: changed since" in done.stderr and "no torch" in done.stderr


def test_verify_hook_with_moved_data_and_bad_manifest(repo):
    moved = repo / "elsewhere"
    (repo / "data" / "shards").rename(moved)
    done = _hook("ssl-guard-verify", "-q", "data/quarantine.json", "--data", "elsewhere", "elsewhere/shard-000000.tar", cwd=repo)
    assert done.returncode == 0, done.stderr
    done = _hook("ssl-guard-verify", "-q", "data/nothing.json", "elsewhere/shard-000000.tar", cwd=repo)
    assert done.returncode == 2 and "does not exist" in done.stderr


def test_scan_hook_runs_check(repo):
    entry = QuarantineEntry(source="shard-000000.tar", key="k", score=0.9, reason="recurring patch", detector="mine")
    build_quarantine([str(repo / "data" / "shards")], [entry], n_scanned=48).write(repo / "flagged.json")
    done = _hook("ssl-guard-scan", "data/shards", "--quarantine", "flagged.json", "--format", "json", cwd=repo)
    assert done.returncode == 1 and '"verdict": "poison found"' in done.stdout


def test_usage_errors_exit_2_not_1(repo):
    done = _hook("ssl-guard-verify", "data/shards/shard-000000.tar", cwd=repo)  # --quarantine missing
    assert done.returncode == 2 and "quarantine" in done.stderr.lower()
    done = _hook("ssl-guard-scan", "--format", "json", cwd=repo)  # DATA missing
    assert done.returncode == 2
