"""Shard-granular resume of `ssl-guard scan`: a `kill -9` mid-scan loses only unfinished units.

Every scan here is a real subprocess (`python -m ssl_guard scan`) on a tiny poisoned shard set, so
the test exercises what a user gets: the unit files written before the kill survive untouched, the
resumed scan's scores and quarantine equal an uninterrupted scan's, and a finished run resumes by
skipping every stage.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssl_guard.cli import main
from tests.detect.planted import write_poisoned_scene_shards

ROOT = Path(__file__).resolve().parents[2]
PER_SHARD = 10


def scan_command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "ssl_guard", "scan", str(data), "--out", str(out), "--workers", "0", "--quiet", *extra]


def scan_env() -> dict[str, str]:
    # one thread everywhere: identical float results in every run, and a fair share of a busy machine
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_scan(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(scan_command(data, out, *extra), env=scan_env(), capture_output=True, text=True, timeout=300)


def entries(run: Path) -> list[dict]:
    return json.loads((run / "quarantine.json").read_text())["entries"]


def stage_records(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["stages"]


def unit_stats(run: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted((run / "units").glob("*.npz"))}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("resume") / "shards"
    return root, write_poisoned_scene_shards(root, seed=0, per_shard=PER_SHARD)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> Path:
    """An uninterrupted scan of the same data."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_scan(data[0], out)
    assert done.returncode == 0, done.stderr
    return out


def test_reference_scan_quarantines_the_poisons(data, reference):
    # the comparisons below are only meaningful if the quarantine is not empty
    assert sorted(e["key"] for e in entries(reference)) == sorted(data[1])


def test_kill_9_mid_embed_resumes_without_redoing_finished_units(data, reference, tmp_path, capsys):
    shards, _ = data
    units = len(list(shards.glob("*.tar")))
    out = tmp_path / "run"
    process = subprocess.Popen(scan_command(shards, out), env=scan_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "units").glob("*.npz")):
            assert process.poll() is None, "the scan ended before writing its first unit file"
            assert time.monotonic() < deadline, "no unit file after 240 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    before = unit_stats(out)
    assert 1 <= len(before) < units, f"killed with {len(before)} of {units} units done: not mid-stage"
    assert "embed" not in stage_records(out)

    # a plain re-run must not touch the interrupted run folder
    assert main(["scan", str(shards), "--out", str(out), "--workers", "0", "--quiet"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert unit_stats(out) == before

    resumed = run_scan(shards, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = unit_stats(out)
    assert len(after) == units
    assert {name: after[name] for name in before} == before  # finished units were not rewritten
    assert (out / "scores.csv").read_text() == (reference / "scores.csv").read_text()
    assert entries(out) == entries(reference)


def test_resume_of_a_finished_run_skips_every_stage(data, reference, tmp_path, capsys):
    shards, _ = data
    out = tmp_path / "run"
    shutil.copytree(reference, out)  # copy2 keeps the files' mtimes
    stages, units = stage_records(out), unit_stats(out)
    cache = (out / "images.u8.npy").stat().st_mtime_ns
    scores, quarantine = (out / "scores.csv").read_text(), entries(out)
    argv = ["scan", str(shards), "--out", str(out), "--workers", "0", "--quiet"]

    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err

    clock = time.perf_counter()
    assert main([*argv, "--resume"]) == 0
    elapsed = time.perf_counter() - clock
    assert stage_records(out) == stages  # same keys and timings: no stage ran again
    assert unit_stats(out) == units and (out / "images.u8.npy").stat().st_mtime_ns == cache
    assert (out / "scores.csv").read_text() == scores and entries(out) == quarantine
    assert elapsed < 30
