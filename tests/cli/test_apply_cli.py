"""`ssl-guard apply`: a cleaned copy from the command line, errors as one line with exit code 2."""

from __future__ import annotations

import json
import shutil
import tarfile

from ssl_guard.cli import main
from ssl_guard.quarantine import QuarantineEntry, build_quarantine


def test_apply_cli_writes_cleaned_shards_and_removed_manifest(shard_folder, tmp_path, capsys):
    data = tmp_path / "shards"
    shutil.copytree(shard_folder, data)
    with tarfile.open(data / "shard-000001.tar") as tar:
        key = tar.getnames()[0].split(".")[0]
    entry = QuarantineEntry(source="shard-000001.tar", key=key, score=0.9, reason="recurring patch", detector="mine")
    build_quarantine([str(data)], [entry]).write(tmp_path / "run" / "quarantine.json")
    rc = main(["apply", str(data), "--quarantine", str(tmp_path / "run"), "--out", str(tmp_path / "clean")])
    assert rc == 0
    assert "kept 47 samples, removed 1" in capsys.readouterr().out
    with tarfile.open(tmp_path / "clean" / "shard-000001.tar") as tar:
        assert not any(name.startswith(key + ".") for name in tar.getnames())
    assert json.loads((tmp_path / "clean" / "removed.json").read_text())["removed"][0]["key"] == key

    rc = main(["apply", str(data), "--quarantine", str(tmp_path / "run"), "--out", str(tmp_path / "clean")])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    rc = main(["apply", str(data), "--quarantine", str(tmp_path / "missing.json"), "--out", str(tmp_path / "c2")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    (data / "shard-000002.tar").unlink()
    rc = main(["apply", str(data), "--quarantine", str(tmp_path / "run"), "--out", str(tmp_path / "c3")])
    assert rc == 1 and "1 removed (shard-000002.tar)" in capsys.readouterr().err
