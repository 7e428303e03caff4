"""`ssl-guard scan` and `ssl-guard demo` from the command line: outputs and exit codes."""

from __future__ import annotations

import subprocess
import sys

from ssl_guard.cli import main
from tests.detect.planted import write_planted_shards


def test_scan_cli_writes_a_run_and_refuses_to_overwrite_it(tmp_path, capsys):
    shards, truth = write_planted_shards(tmp_path, n=240, poisons=30)
    run = tmp_path / "run"
    assert main(["scan", str(shards), "--out", str(run), "--workers", "0", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "30 quarantined of 240" in out
    assert (run / "scores.csv").is_file() and (run / "report.html").is_file()
    assert main(["scan", str(shards), "--out", str(run), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--resume" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", str(run), "--truth", str(tmp_path / "truth.csv")]) == 2  # no such truth file


def test_scan_cli_user_errors_exit_2_with_one_line(tmp_path, capsys):
    cases = [
        ["scan", str(tmp_path / "missing"), "--out", str(tmp_path / "r1")],
        ["scan", str(tmp_path), "--out", str(tmp_path / "r2"), "--method", "magic"],
        ["scan", str(tmp_path), "--out", str(tmp_path / "r3"), "--encoder", "hub:"],
        ["scan", "--out", str(tmp_path / "r4")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error") and len(err.splitlines()) == 1, err


def test_help_does_not_import_torch():
    code = "import sys; from ssl_guard.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"
