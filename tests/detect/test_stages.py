"""`execute`: a stage runs once per key, its result is read back from the run folder, and a
changed key reruns it."""

from __future__ import annotations

import numpy as np

from ssl_guard.detect.result import Detection, TriggerPattern
from ssl_guard.detect.stages import array_stage, detection_stage, execute
from ssl_guard.run import RunFolder, RunState


def _folder(path, resume=False):
    folder = RunFolder(path, resume=resume)
    folder.start(RunState(tool_version="test", data=[], config={}))
    return folder


def test_a_stage_runs_once_per_key_and_reruns_when_the_key_changes(tmp_path):
    calls = []

    def work(value):
        def run():
            calls.append(value)
            return np.full(4, value, np.int32)
        return run

    folder = _folder(tmp_path / "run")
    timings = {}
    first = execute(folder, array_stage(folder, "semantic", "k1", work(1)), 4, timings)
    again = execute(_folder(tmp_path / "run", resume=True), array_stage(folder, "semantic", "k1", work(2)), 4)
    assert calls == [1] and first.tolist() == again.tolist() == [1, 1, 1, 1]
    assert timings["semantic"][1] == 4 and timings["semantic"][0] >= 0
    changed = execute(folder, array_stage(folder, "semantic", "k2", work(3)), 4)
    assert calls == [1, 3] and changed.tolist() == [3, 3, 3, 3]


def test_a_detection_round_trips_through_its_stage(tmp_path):
    folder = _folder(tmp_path / "run")
    pattern = TriggerPattern(pixels=np.full((3, 4, 5), 7, np.uint8), host=2, box=(1, 2, 6, 6), score=0.9, hosts=3, targeted=True, evidence={"z": 4.5})
    made = Detection("x", np.array([0.1, 0.9, 0.8], np.float32), np.array([False, True, True]), np.array([[-1] * 4, [1, 2, 6, 6], [0, 0, 5, 4]], np.int32), 0.5, [pattern], {1: np.ones((8, 8), np.float16)}, {"step": 1.5}, ["a warning"], {"count": 3})
    loaded = execute(folder, detection_stage(folder, "detect-x", "k", lambda: made), 3)
    assert loaded.method == "x" and loaded.threshold == 0.5 and loaded.warnings == ["a warning"]
    assert np.array_equal(loaded.scores, made.scores) and np.array_equal(loaded.flagged, made.flagged) and np.array_equal(loaded.boxes, made.boxes)
    assert loaded.bank[0].box == (1, 2, 6, 6) and loaded.bank[0].evidence == {"z": 4.5} and np.array_equal(loaded.bank[0].pixels, pattern.pixels)
    assert set(loaded.maps) == {1} and loaded.details["count"] == 3
