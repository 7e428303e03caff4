"""Promises around a scan's verdict: one config hash per run, sub-configs checked up front, and a
decoding loader that starts under `spawn`."""

from __future__ import annotations

import json
import time

import pytest

from ssl_guard.data import resolve_sources, stream_batches
from ssl_guard.errors import ConfigError
from tests.detect.planted import write_planted_shards


def test_quarantine_and_report_record_the_same_config_hash(tmp_path):
    from ssl_guard.detect.pipeline import scan

    shards, _ = write_planted_shards(tmp_path, n=60, poisons=6)
    result = scan([str(shards)], tmp_path / "run", workers=0, progress=False)
    quarantine = json.loads((result.run_dir / "quarantine.json").read_text())
    report = json.loads((result.run_dir / "report.json").read_text())
    assert quarantine["provenance"]["config_hash"] == report["config_hash"]


@pytest.mark.parametrize("field", ["cluster", "bootstrap"])
def test_a_typo_in_a_sub_config_fails_before_any_stage(tmp_path, field):
    from ssl_guard.detect.pipeline import scan

    shards, _ = write_planted_shards(tmp_path, n=60, poisons=6)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=field):
        scan([str(shards)], tmp_path / "run", workers=0, progress=False, **{field: {"no_such_setting": 1}})
    assert not (tmp_path / "run").exists()  # refused before the run folder was made
    assert time.perf_counter() - started < 30


def test_the_scan_loader_starts_under_spawn(tmp_path):
    shards, _ = write_planted_shards(tmp_path, n=40, poisons=4, per_shard=20)
    sources = resolve_sources([str(shards)])
    batches = list(stream_batches(sources, 32, batch_size=16, workers=1, multiprocessing_context="spawn"))
    assert sum(len(b.ids) for b in batches) == 40
