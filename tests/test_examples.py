"""Every example runs: on tiny generated data, with manifests built here (no scan needed)."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from ssl_guard.cli import main as cli_main
from ssl_guard.quarantine import Quarantine, QuarantineEntry, build_quarantine
from tests.helpers import shard_ids

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name.replace(".py", ""), EXAMPLES / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _entry(source, key):
    return QuarantineEntry(source=source, key=key, score=0.9, reason="recurring patch", detector="mine")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture
def fake_scan(monkeypatch):
    """`ssl_guard.scan` replaced by one that returns the manifest put in `result["quarantine"]`."""
    result: dict = {}

    def scan(data, out, **kwargs):
        Path(out).mkdir(parents=True)
        q = result["quarantine"]
        q.write(Path(out) / "quarantine.json")
        return types.SimpleNamespace(run_dir=Path(out), n_samples=q.n_scanned, n_skipped=q.n_skipped, n_flagged=q.n_flagged,
                                     quarantine=q, incomplete=False)

    try:
        import ssl_guard.detect.pipeline as pipeline

        monkeypatch.setattr(pipeline, "scan", scan)
    except ImportError:
        module = types.ModuleType("ssl_guard.detect.pipeline")
        module.scan = scan
        monkeypatch.setitem(sys.modules, "ssl_guard.detect.pipeline", module)
    return result


@pytest.mark.slow
def test_scan_folder_with_the_real_scan(image_folder, tmp_path, capsys):
    rc = _load("scan_folder.py").main([str(image_folder), "--out", str(tmp_path / "run"), "--workers", "0"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.startswith("scanned 48 samples, 0 unreadable,") and "ssl-guard check" in out
    q = Quarantine.load(tmp_path / "run", data=[str(image_folder)])  # a current manifest for the folder
    assert q.n_scanned == 48 and f"flagged -> {tmp_path / 'run'}" in out


def test_scan_folder_lists_the_flagged(image_folder, tmp_path, fake_scan, capsys):
    files = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    fake_scan["quarantine"] = build_quarantine([str(image_folder)], [_entry(files[4], files[4][:-4])], n_scanned=len(files))
    rc = _load("scan_folder.py").main([str(image_folder), "--out", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0
    assert f"scanned {len(files)} samples, 0 unreadable, 1 flagged" in out and files[4] in out


def test_guard_dataloader(image_folder, tmp_path, capsys):
    files = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    flagged = files[::6]
    build_quarantine([str(image_folder)], [_entry(f, f[:-4]) for f in flagged], n_scanned=len(files)).write(tmp_path / "q.json")
    rc = _load("guard_dataloader.py").main([str(image_folder), "--quarantine", str(tmp_path / "q.json"), "--workers", "2"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary == {"total": len(files), "kept": len(files) - len(flagged), "dropped": len(flagged), "trained_on": len(files) - len(flagged)}


@pytest.mark.slow
def test_guard_webdataset_under_torchrun(shard_folder, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this Python")
    ids = shard_ids(shard_folder)
    flagged = set(ids[::7])
    build_quarantine([str(shard_folder)], [_entry(*i) for i in sorted(flagged)], n_scanned=len(ids)).write(tmp_path / "q.json")
    command = [
        str(torchrun), "--standalone", "--nproc_per_node=2", str(EXAMPLES / "guard_webdataset_torchrun.py"),
        str(shard_folder / "shard-{000000..000002}.tar"), "--quarantine", str(tmp_path / "q.json"),
        "--workers", "1", "--keys-out", str(tmp_path / "keys"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, env={**_env(), "OMP_NUM_THREADS": "1"}, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [set(json.loads((tmp_path / "keys" / f"rank{r}.json").read_text())) for r in (0, 1)]
    assert ranks[0] and ranks[1] and not ranks[0] & ranks[1]  # each rank its own shards, no sample twice
    assert ranks[0] | ranks[1] == {key for _, key in ids} - {key for _, key in flagged}
    stats = json.loads(done.stdout.strip().splitlines()[-1])
    assert stats == {"seen": len(ids), "dropped": len(flagged), "kept": len(ids) - len(flagged)}  # summed over ranks and workers


# -- CI workflow --------------------------------------------------------------------------


def _workflow() -> dict:
    return yaml.safe_load((EXAMPLES / "ci" / "github-workflow.yml").read_text())


def _runs(job: dict, needle: str) -> list[str]:
    return [step["run"] for step in job["steps"] if needle in step.get("run", "")]


@pytest.fixture
def ci_repo(shard_folder, tmp_path, monkeypatch):
    data = tmp_path / "data" / "shards"
    shutil.copytree(shard_folder, data)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    return data


def test_workflow_pull_request_job_passes_clean_data_and_fails_poisoned(ci_repo, tmp_path, capsys):
    workflow = _workflow()
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "pull_request" in on
    (command,) = _runs(workflow["jobs"]["verify"], "ssl-guard check")
    argv = shlex.split(command)
    assert argv[0] == "ssl-guard"

    build_quarantine([str(ci_repo)], [], n_scanned=48).write(tmp_path / "data" / "quarantine.json")
    assert cli_main(argv[1:]) == 0
    assert "## ssl-guard check: clean" in (tmp_path / "summary.md").read_text()

    (tmp_path / "data" / "quarantine.json").unlink()
    key = shard_ids(ci_repo)[5]
    build_quarantine([str(ci_repo)], [_entry(*key)], n_scanned=48).write(tmp_path / "data" / "quarantine.json")
    capsys.readouterr()
    assert cli_main(argv[1:]) == 1
    assert capsys.readouterr().out.startswith(f"::error file=data/shards/{key[0]},")

    shutil.copy(ci_repo / "shard-000000.tar", ci_repo / "shard-000009.tar")  # a PR adds an unscanned shard
    assert cli_main(argv[1:]) == 1


def test_workflow_scan_job_uploads_the_sarif_it_writes(ci_repo, tmp_path, fake_scan):
    job = _workflow()["jobs"]["scan"]
    assert job["permissions"]["security-events"] == "write"
    (command,) = _runs(job, "ssl-guard check")
    argv = shlex.split(command)
    report = argv[argv.index("--report") + 1]
    upload = next(step for step in job["steps"] if "upload-sarif" in step.get("uses", ""))
    assert upload["with"]["sarif_file"] == report and upload["if"] == "always()"

    ids = shard_ids(ci_repo)
    fake_scan["quarantine"] = build_quarantine([str(ci_repo)], [_entry(*ids[0])], n_scanned=len(ids))
    assert cli_main(argv[1:]) == 1  # 1 of 48 is over --fail-on 0.1%
    log = json.loads((tmp_path / report).read_text())
    assert log["version"] == "2.1.0" and len(log["runs"][0]["results"]) == 1
    assert Quarantine.load(tmp_path / argv[argv.index("--out") + 1]).n_flagged == 1  # the run folder is kept


# -- pre-commit config --------------------------------------------------------------------


def test_pre_commit_config_runs_the_verify_hook(shard_folder, tmp_path):
    """The example config, pointed at this checkout, run by real pre-commit in a scratch repository."""
    tool = Path(sys.executable).with_name("pre-commit")
    if not tool.exists() or shutil.which("git") is None:
        pytest.skip("pre-commit or git is not installed")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("the checkout is not a git repository")
    config = yaml.safe_load((EXAMPLES / "pre-commit-config.yaml").read_text())
    hook_ids = [hook["id"] for hook in config["repos"][0]["hooks"]]
    assert hook_ids == ["ssl-guard-verify", "ssl-guard-scan"]
    config["repos"][0]["repo"], config["repos"][0]["rev"] = str(ROOT), head.stdout.strip()

    repo = tmp_path / "repo"
    shutil.copytree(shard_folder, repo / "data" / "shards")
    build_quarantine([str(repo / "data" / "shards")], [], n_scanned=48).write(repo / "data" / "quarantine.json")
    (repo / ".pre-commit-config.yaml").write_text(yaml.safe_dump(config))
    env = {**_env(), "PRE_COMMIT_HOME": str(tmp_path / "cache"), "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

    def git(*args):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)

    def pre_commit():
        return subprocess.run([str(tool), "run", "ssl-guard-verify"], cwd=repo, capture_output=True, text=True, env=env)

    git("init", "-q")
    git("add", "-A")
    assert pre_commit().returncode == 0
    git("commit", "-qm", "data")
    shutil.copy(repo / "data" / "shards" / "shard-000000.tar", repo / "data" / "shards" / "shard-000005.tar")
    git("add", "data/shards/shard-000005.tar")
    done = pre_commit()
    assert done.returncode == 1 and "shard-000005.tar is not in data/quarantine.json" in done.stdout
