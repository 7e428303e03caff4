"""A crash is never a verdict: an unexpected error inside a stage exits 2 with one line, not 1."""

from __future__ import annotations

import pytest

from ssl_guard.cli import CRASH_EXIT_CODE, main
from tests.detect.planted import write_planted_shards


def _explode(*args, **kwargs):
    raise RuntimeError("injected failure in the detector stage")


@pytest.fixture()
def planted(tmp_path):
    shards, _ = write_planted_shards(tmp_path, n=60, poisons=6)
    return shards


def test_a_crash_in_a_stage_exits_with_the_crash_code_and_one_line(tmp_path, planted, monkeypatch, capsys):
    from ssl_guard.detect.builtin import MineDetector

    monkeypatch.setattr(MineDetector, "run", _explode)
    monkeypatch.delenv("SSL_GUARD_DEBUG", raising=False)
    code = main(["scan", str(planted), "--out", str(tmp_path / "run"), "--workers", "0", "--quiet"])
    assert code == CRASH_EXIT_CODE and code not in (0, 1)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "RuntimeError" in err[0] and "injected failure" in err[0] and "SSL_GUARD_DEBUG=1" in err[0]


def test_debug_shows_the_traceback(tmp_path, planted, monkeypatch, capsys):
    from ssl_guard.detect.builtin import MineDetector

    monkeypatch.setattr(MineDetector, "run", _explode)
    monkeypatch.delenv("SSL_GUARD_DEBUG", raising=False)
    code = main(["--debug", "scan", str(planted), "--out", str(tmp_path / "run"), "--workers", "0", "--quiet"])
    assert code == CRASH_EXIT_CODE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_explode" in err
