"""`ssl-guard check`: exit codes for every case, and the text, json, sarif and github outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from ssl_guard.cli import main
from ssl_guard.cli.check import FailOn
from ssl_guard.errors import ConfigError
from ssl_guard.quarantine import QuarantineEntry, build_quarantine

N = 48  # samples in the shard_folder fixture


def _entry(source, key, score=0.9):
    return QuarantineEntry(source=source, key=key, score=score, box=[2, 2, 12, 12], reason="recurring patch", detector="mine")


@pytest.fixture
def repo(shard_folder, tmp_path, monkeypatch):
    """A repository with data/shards and two manifests: clean.json (nothing flagged), flagged.json (2)."""
    data = tmp_path / "data" / "shards"
    shutil.copytree(shard_folder, data)
    build_quarantine([str(data)], [], n_scanned=N).write(tmp_path / "clean.json")
    entries = [_entry("shard-000000.tar", "k1"), _entry("shard-000002.tar", "k2", 0.8)]
    build_quarantine([str(data)], entries, n_scanned=N).write(tmp_path / "flagged.json")
    build_quarantine([str(data)], [], n_scanned=N - 1, n_skipped=1).write(tmp_path / "skipped.json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    return tmp_path


def check(*args: str) -> int:
    return main(["check", "data/shards", *args])


@pytest.mark.parametrize(
    "args, code",
    [
        (["-q", "clean.json"], 0),
        (["-q", "flagged.json"], 1),  # default --fail-on 0
        (["-q", "flagged.json", "--fail-on", "2"], 0),
        (["-q", "flagged.json", "--fail-on", "1"], 1),
        (["-q", "flagged.json", "--fail-on", "5%"], 0),  # 2/48 = 4.2%
        (["-q", "flagged.json", "--fail-on", "0.01"], 1),
        (["-q", "flagged.json", "--exit-zero"], 0),
        (["-q", "skipped.json"], 2),  # an incomplete scan never passes
        (["-q", "skipped.json", "--exit-zero", "--fail-on", "100"], 2),
        (["-q", "missing.json"], 2),
        (["-q", "clean.json", "--fail-on", "lots"], 2),
        (["-q", "clean.json", "--format", "xml"], 2),
    ],
)
def test_exit_codes(repo, args, code):
    assert check(*args) == code


def test_stale_manifest_fails_with_1_even_with_exit_zero(repo, capsys):
    with open(repo / "data" / "shards" / "shard-000001.tar", "ab") as handle:
        handle.write(b"\0" * 512)
    assert check("-q", "clean.json", "--exit-zero") == 1
    captured = capsys.readouterr()
    assert "stale" in captured.out and "1 changed (shard-000001.tar)" in captured.err
    assert check("-q", "clean.json", "--allow-stale") == 0
    assert main(["check", "data/nope", "-q", "clean.json"]) == 2


def test_fail_on_parsing():
    assert FailOn.parse("3") == FailOn(count=3, rate=None)
    assert FailOn.parse("0.5%").rate == pytest.approx(0.005) and FailOn.parse("0.005").rate == pytest.approx(0.005)
    assert FailOn.parse("0").exceeded(1, 100) and not FailOn.parse("0").exceeded(0, 100)
    assert not FailOn.parse("1%").exceeded(1, 100) and FailOn.parse("1%").exceeded(2, 100)
    for bad in ("-1", "150%", "x", "2.0.0"):
        with pytest.raises(ConfigError):
            FailOn.parse(bad)


def test_text_output_lists_the_flagged_samples(repo, capsys):
    assert check("-q", "flagged.json") == 1
    captured = capsys.readouterr()
    assert "ssl-guard check: poison found" in captured.out
    assert "data/shards/shard-000000.tar" in captured.out and "k1" in captured.out
    assert "2 flagged samples exceed --fail-on 0 samples" in captured.err


def test_json_output(repo, capsys):
    assert check("-q", "flagged.json", "--format", "json", "--fail-on", "5") == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["verdict"] == "poison found" and payload["exit_code"] == 0
    assert payload["counts"] == {"scanned": N, "skipped": 0, "flagged": 2, "suppressed": 0}
    assert [(e["source"], e["key"]) for e in payload["entries"]] == [("shard-000000.tar", "k1"), ("shard-000002.tar", "k2")]
    assert payload["artifact_prefix"] == "data/shards/"


def test_sarif_output_to_a_report_file(repo):
    assert check("-q", "flagged.json", "--format", "sarif", "--report", "out.sarif") == 1
    log = json.loads((repo / "out.sarif").read_text())
    assert log["version"] == "2.1.0" and log["runs"][0]["tool"]["driver"]["name"] == "ssl-guard"
    results = log["runs"][0]["results"]
    assert [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results] == [
        "data/shards/shard-000000.tar",
        "data/shards/shard-000002.tar",
    ]
    assert all(r["ruleId"] == "ssl-guard/mine" and r["partialFingerprints"] for r in results)


def test_stale_sarif_keeps_the_old_findings_so_alerts_stay_open(repo, capsys):
    (repo / "data" / "shards" / "shard-000002.tar").unlink()
    assert check("-q", "flagged.json", "--format", "sarif") == 1
    run = json.loads(capsys.readouterr().out)["runs"][0]
    assert len(run["results"]) == 2 and run["invocations"][0]["executionSuccessful"] is False


def test_github_annotations_and_step_summary(repo, capsys, monkeypatch):
    summary = repo / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert check("-q", "flagged.json", "--format", "github") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("::error file=data/shards/shard-000000.tar,title=ssl-guard%3A poisoned sample (mine)::Sample 'k1'")
    assert len(lines) == 2
    text = summary.read_text()
    assert text.startswith("earlier step\n## ssl-guard check: poison found")
    assert "| `data/shards/shard-000002.tar` | `k2` | 0.800 | mine | recurring patch |" in text


def test_github_without_step_summary_prints_it(repo, capsys):
    assert check("-q", "skipped.json", "--format", "github") == 2
    out = capsys.readouterr().out
    assert out.startswith("::error title=ssl-guard::incomplete scan") and "## ssl-guard check: incomplete" in out


def test_baseline_in_the_working_directory_is_honoured(repo):
    assert main(["review", "flagged.json", "--false-positive", "shard-000000.tar", "k1"]) == 0
    assert (repo / ".ssl-guard-baseline.json").is_file()
    assert check("-q", "flagged.json", "--fail-on", "1") == 0
    assert main(["review", "flagged.json", "--false-positive", "shard-000002.tar", "k2"]) == 0
    assert check("-q", "flagged.json") == 0


def test_manifest_check_imports_no_torch(repo):
    code = (
        "import sys; from ssl_guard.cli import main; rc = main(['check', 'data/shards', '-q', 'flagged.json', '--format', 'json']);"
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, env=_env())
    assert done.returncode == 1, done.stderr
    assert json.loads(done.stdout)["verdict"] == "poison found"


def _env() -> dict:
    import os

    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


# -- the full-scan path (`check DATA` without --quarantine) -----------------------------------


@pytest.fixture
def fake_scan(repo, monkeypatch):
    """Replace `ssl_guard.detect.pipeline.scan` with a recorder returning a chosen result."""
    from ssl_guard.quarantine import Quarantine

    calls = []
    outcome = {"manifest": "flagged.json", "incomplete": False, "raise": None}

    def scan(data, out, **kwargs):
        calls.append((data, Path(out), kwargs))
        if outcome["raise"]:
            raise outcome["raise"]
        q = Quarantine.load(repo / outcome["manifest"])
        return types.SimpleNamespace(run_dir=Path(out), n_samples=q.n_scanned, n_skipped=q.n_skipped, n_flagged=q.n_flagged,
                                     quarantine=q, incomplete=outcome["incomplete"])

    try:
        import ssl_guard.detect.pipeline as pipeline

        monkeypatch.setattr(pipeline, "scan", scan)
    except ImportError:  # the pipeline module is optional for this test
        module = types.ModuleType("ssl_guard.detect.pipeline")
        module.scan = scan
        monkeypatch.setitem(sys.modules, "ssl_guard.detect.pipeline", module)
    return calls, outcome


def test_scan_path_exit_codes_and_run_folder(fake_scan, repo, capsys):
    calls, outcome = fake_scan
    assert check("--out", "runs/one", "--encoder", "bootstrap", "--workers", "0") == 1
    data, out, kwargs = calls[-1]
    assert data == ["data/shards"] and out == Path("runs/one")
    assert kwargs["encoder"] == "bootstrap" and kwargs["workers"] == 0 and kwargs["resume"] is False
    outcome["manifest"] = "clean.json"
    assert check() == 0
    default_out = calls[-1][1]
    assert default_out.name == "run" and not default_out.exists() and default_out.parent.is_dir()  # a new temporary folder
    assert f"scanning into {default_out}" in capsys.readouterr().err
    outcome["incomplete"] = True
    assert check("--exit-zero") == 2


def test_scan_failures_exit_2_never_1(fake_scan, capsys):
    _, outcome = fake_scan
    outcome["raise"] = RuntimeError("CUDA out of memory")
    assert check() == 2
    assert "scan failed: RuntimeError: CUDA out of memory" in capsys.readouterr().err


def test_paths_are_relative_to_the_data_here_not_where_the_manifest_was_made(repo, capsys):
    raw = json.loads((repo / "flagged.json").read_text())
    raw["provenance"]["root"] = "/home/someone/checkout/data/shards"  # written on a laptop, checked in CI
    (repo / "laptop.json").write_text(json.dumps(raw))
    assert check("-q", "laptop.json", "--format", "github") == 1
    assert capsys.readouterr().out.startswith("::error file=data/shards/shard-000000.tar,")


@pytest.mark.slow
def test_real_scan_with_an_unreadable_image_exits_2(image_folder, tmp_path, monkeypatch, capsys):
    """The full path end to end: the real pipeline scans, the check refuses to pass an incomplete scan,
    and the manifest it wrote gives the same verdict through --quarantine."""
    data = tmp_path / "images"
    shutil.copytree(image_folder, data)
    (data / "circles" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    monkeypatch.chdir(tmp_path)
    rc = main(["check", "images", "--out", "run", "--workers", "0", "--format", "json", "--exit-zero"])
    payload = json.loads(capsys.readouterr().out)
    assert rc == 2 and payload["verdict"] == "incomplete"
    assert payload["counts"]["scanned"] == 48 and payload["counts"]["skipped"] == 1
    assert [s["source"] for s in payload["skipped"]] == ["circles/broken.png"]  # read from the run's report.json
    assert (tmp_path / "run" / "quarantine.json").is_file()
    assert main(["check", "images", "--quarantine", "run", "--exit-zero"]) == 2  # same verdict from the manifest


def test_hostile_keys_are_printed_verbatim(repo, capsys):
    entry = _entry("shard-000000.tar", "[/bold][red]x[/] <script>")
    build_quarantine([str(repo / "data" / "shards")], [entry], n_scanned=N).write(repo / "hostile.json")
    assert check("-q", "hostile.json") == 1
    assert "[/bold][red]x[/] <script>" in capsys.readouterr().out


def test_an_infinite_threshold_still_gives_standard_json(repo, capsys):
    q = build_quarantine([str(repo / "data" / "shards")], [], n_scanned=N, threshold=float("inf"))
    q.write(repo / "inf.json")
    assert check("-q", "inf.json", "--format", "sarif") == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
