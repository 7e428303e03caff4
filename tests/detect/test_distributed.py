"""`torchrun -m ssl_guard scan` on 2 CPU processes (gloo) gives the single-process result.

Both scans are real subprocesses on a tiny poisoned shard set. To see which rank embedded what
without changing the tool, the torchrun workers load a `sitecustomize` (through PYTHONPATH) that
wraps the embed stage's batch and unit-file functions and logs, per rank, the rows it embedded and
the unit files it wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.detect.planted import write_poisoned_scene_shards


ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")
UNITS = 6

SITECUSTOMIZE = textwrap.dedent(
    """
    import json, os
    if os.environ.get("RANK") is not None and os.environ.get("UNIT_LOG"):
        import ssl_guard.detect.embed as embed

        _embed_batch, _write_unit = embed._embed_batch, embed._write_unit
        log = os.path.join(os.environ["UNIT_LOG"], "rank-%s.jsonl" % os.environ["RANK"])

        def embed_batch(encoder, images, device):
            with open(log, "a") as out:
                out.write(json.dumps({"embedded": len(images)}) + "\\n")
            return _embed_batch(encoder, images, device)

        def write_unit(run, index, part, *args, **kwargs):
            with open(log, "a") as out:
                out.write(json.dumps({"unit": index, "keys": [i.key for i in part["ids"]]}) + "\\n")
            return _write_unit(run, index, part, *args, **kwargs)

        embed._embed_batch, embed._write_unit = embed_batch, write_unit
    """
)


def env_with(*paths: Path, **extra: str) -> dict[str, str]:
    # one thread per process: identical float results in both scans, and a busy machine stays usable
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def entries(run: Path) -> list[dict]:
    return json.loads((run / "quarantine.json").read_text())["entries"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("distributed") / "shards"
    return root, write_poisoned_scene_shards(root, seed=1, per_shard=120 // UNITS)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    command = [sys.executable, "-m", "ssl_guard", "scan", str(data[0]), "--out", str(out), "--workers", "0", "--quiet"]
    done = subprocess.run(command, env=env_with(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(e["key"] for e in entries(out)) == sorted(data[1])  # a non-empty quarantine to compare
    return out


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed next to this python")
def test_torchrun_two_ranks_equal_one_process_and_embed_each_unit_once(data, single, tmp_path):
    shards, _ = data
    hook, log = tmp_path / "hook", tmp_path / "log"
    hook.mkdir()
    log.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "run"
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node=2", "-m", "ssl_guard", "scan", str(shards), "--out", str(out), "--workers", "0", "--quiet"]
    done = subprocess.run(command, env=env_with(hook, UNIT_LOG=str(log)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr  # torchrun fails if any rank exits non-zero

    # rank 0 alone reports: one summary line, no traceback, nothing from rank 1
    assert done.stdout.count("run folder:") == 1 and "Traceback" not in done.stdout + done.stderr

    # same rows, scores and quarantine as one process
    assert (out / "scores.csv").read_text() == (single / "scores.csv").read_text()
    assert entries(out) == entries(single)

    # each unit written by exactly the rank that owns it (a strided split), each sample embedded once
    units: dict[int, int] = {}
    keys: list[str] = []
    embedded = 0
    for rank in (0, 1):
        for line in (log / f"rank-{rank}.jsonl").read_text().splitlines():
            event = json.loads(line)
            if "unit" in event:
                assert event["unit"] not in units, f"unit {event['unit']} written twice"
                units[event["unit"]] = rank
                keys.extend(event["keys"])
            else:
                embedded += event["embedded"]
    assert units == {i: i % 2 for i in range(UNITS)}
    samples = (out / "samples.csv").read_text().splitlines()[1:]
    assert sorted(keys) == sorted(row.split(",")[2] for row in samples) and len(set(keys)) == len(keys)
    assert embedded == len(samples) == 120
