"""Detectors plug into the scan through the registry, with no per-detector branch in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from ssl_guard.detect import registry
from ssl_guard.detect.registry import Detector, register
from ssl_guard.detect.result import Detection
from tests.detect.planted import write_planted_shards


def test_the_methods_select_the_registered_detectors():
    assert {"mine", "additive", "poisoncam", "patchsearch"} <= set(registry.names())
    assert registry.selected("auto", trained=False) == ["mine", "additive"]
    assert registry.selected("auto", trained=True) == ["mine", "additive", "poisoncam"]
    assert registry.selected("ensemble", trained=False) == ["mine", "additive", "poisoncam"]
    assert registry.selected("patchsearch", trained=True) == ["patchsearch"]
    with pytest.raises(KeyError):
        registry.selected("nonesuch", trained=False)


def test_register_refuses_reserved_and_duplicate_names():
    class Auto(Detector):
        name = "auto"

    class Again(Detector):
        name = "mine"

    with pytest.raises(ValueError):
        register(Auto)
    with pytest.raises(ValueError):
        register(Again)


def test_a_new_detector_runs_as_a_stage_of_the_scan(tmp_path, monkeypatch):
    """A detector registered by a user is selectable by name, runs once, is cached under its own
    key (a resume does not rerun it), and its flags reach the quarantine."""
    from ssl_guard.detect.pipeline import scan

    calls = []

    class EveryThird(Detector):
        name = "every-third"
        in_auto = "never"

        def settings(self, config):
            return {"step": 3}

        def run(self, inputs):
            calls.append(len(inputs.arrays))
            n = len(inputs.arrays)
            scores = (np.arange(n) % 3 == 0).astype(np.float32)
            return Detection(self.name, scores, scores > 0.5, np.full((n, 4), -1, np.int32), 0.5)

    monkeypatch.setitem(registry._REGISTRY, "every-third", EveryThird)
    shards, _ = write_planted_shards(tmp_path, n=30, poisons=3)
    out = tmp_path / "run"
    result = scan([str(shards)], out, method="every-third", workers=0, progress=False)
    assert calls == [30]
    assert result.n_flagged == 10
    assert (out / "detect-every-third.npz").is_file()
    again = scan([str(shards)], out, method="every-third", workers=0, progress=False, resume=True)
    assert calls == [30] and again.n_flagged == 10


def test_an_unknown_method_fails_before_any_stage(tmp_path):
    from ssl_guard.detect.pipeline import scan
    from ssl_guard.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown method"):
        scan([str(tmp_path)], tmp_path / "run", method="nonesuch", progress=False)
