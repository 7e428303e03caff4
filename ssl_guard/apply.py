"""Write a cleaned copy of a dataset: every sample except the quarantined ones.

For heavy pruning, or for pipelines that cannot take a guard stage, `apply_quarantine` writes new
shards (and copies of folder images) holding everything but the quarantined samples, and a
`removed.json` manifest listing what was left out and why. The input is only read. The output is
built in a hidden folder beside `out` and renamed into place when complete, so a failed run leaves
no half-cleaned dataset behind.

Tar members are copied with their contents unchanged and their header fields (name, mode, owner,
mtime) kept: a kept sample's bytes are identical to the input's. The shard file itself is written
anew (tar headers re-serialised, a gzip stream re-compressed), so it is not byte-identical.
Samples are grouped exactly as WebDataset groups them (`base_plus_ext`: the key is the member path
up to the first dot of its file name).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from ssl_guard import __version__
from ssl_guard.errors import DataNotFoundError, GuardError, RunDirError
from ssl_guard.quarantine import Provenance, Quarantine, QuarantineEntry, current_umask, write_text_atomic

SCHEMA_VERSION = 1
REMOVED_NAME = "removed.json"


class OutputUnit(BaseModel):
    """One written shard or folder group: how many samples it kept and removed."""

    name: str
    kind: str
    kept: int
    removed: int
    sha256: str = ""  # of the written shard; empty for folder groups (one file per sample)
    size: int = 0


class ApplyManifest(BaseModel):
    """`removed.json`: what `apply` left out of the cleaned copy, and from which manifest."""

    model_config = ConfigDict(protected_namespaces=())

    schema_version: int = SCHEMA_VERSION
    tool_version: str = __version__
    created: str
    input_root: str
    quarantine: str
    quarantine_provenance: Provenance
    baseline: str | None = None
    n_kept: int
    n_removed: int
    units: list[OutputUnit]
    removed: list[QuarantineEntry]
    suppressed: list[QuarantineEntry] = Field(default_factory=list)
    not_found: list[list[str]] = Field(default_factory=list)  # quarantined [source, key] absent from the data


def apply_quarantine(
    data: Sequence[str],
    quarantine: str | os.PathLike,
    out: str | os.PathLike,
    baseline: str | os.PathLike | None = None,
    allow_stale: bool = False,
) -> ApplyManifest:
    """Copy `data` to `out` without the samples quarantined in `quarantine`.

    Args:
        data: the dataset specs the quarantine was made for (folders, shards, patterns).
        quarantine: a `quarantine.json` or a scan's run folder.
        out: a new folder (or an empty one); shard and file paths below the data root are kept.
        baseline: reviewed decisions; samples marked false positive are kept.
        allow_stale: use a manifest whose data has changed since the scan.

    Returns:
        The manifest written to `out/removed.json`.

    Raises:
        StaleManifestError: the data changed since the scan (unless `allow_stale`).
        RunDirError: `out` exists and is not empty, or lies inside the input.
        GuardError: a shard could not be read completely (nothing is written).
    """
    from ssl_guard.data import resolve_sources

    sources = resolve_sources(list(data))
    manifest = Quarantine.load(quarantine, data=data, allow_stale=allow_stale, baseline=baseline)
    out = Path(out).absolute()
    _check_out(out, Path(sources.root))

    entries = {entry.id: entry for entry in manifest.entries}
    temp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        units: list[OutputUnit] = []
        removed: list[QuarantineEntry] = []
        for unit in sources.units:
            written, dropped = _clean_unit(unit, temp, entries)
            units.append(written)
            removed += dropped
        found = {entry.id for entry in removed}
        result = ApplyManifest(
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            input_root=sources.root,
            quarantine=str(Path(quarantine).absolute()),
            quarantine_provenance=manifest.provenance,
            baseline=None if baseline is None else str(Path(baseline).absolute()),
            n_kept=sum(u.kept for u in units),
            n_removed=len(removed),
            units=units,
            removed=removed,
            suppressed=manifest.suppressed,
            not_found=[list(i) for i in sorted(set(entries) - found)],
        )
        write_text_atomic(temp / REMOVED_NAME, result.model_dump_json(indent=2) + "\n")
        if out.exists():
            out.rmdir()  # checked empty above; rename cannot replace a folder on every OS
        os.chmod(temp, 0o777 & ~current_umask())  # mkdtemp makes it private; give it a normal folder's mode
        os.rename(temp, out)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return result


def _check_out(out: Path, root: Path) -> None:
    real_out, real_root = Path(os.path.realpath(out)), Path(os.path.realpath(root))
    if real_out == real_root or real_root in real_out.parents:
        raise RunDirError(f"output {out} is inside the input data {root}", "write the cleaned copy outside the dataset")
    if real_out in real_root.parents:
        raise RunDirError(f"output {out} contains the input data {root}", "choose a new folder for the cleaned copy")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(f"{out} already exists", "choose a new output folder; earlier results are never overwritten")
    out.parent.mkdir(parents=True, exist_ok=True)


def _clean_unit(unit: Any, temp: Path, entries: dict[tuple[str, str], QuarantineEntry]) -> tuple[OutputUnit, list[QuarantineEntry]]:
    if unit.kind == "shard":
        if "://" in unit.url or unit.url.startswith("pipe:"):
            raise DataNotFoundError(f"{unit.url} is remote", "apply writes local shards: copy them locally first")
        return _clean_shard(unit, temp / unit.name, entries)
    kept, removed = 0, []
    for rel in unit.files:
        entry = entries.get((rel, os.path.splitext(rel)[0]))
        if entry is not None:
            removed.append(entry)
            continue
        target = temp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(os.path.join(unit.root, rel), target)
        except OSError as error:
            raise GuardError(f"cannot copy {rel}: {error.strerror or error}", "nothing was written") from None
        kept += 1
    return OutputUnit(name=unit.name, kind=unit.kind, kept=kept, removed=len(removed)), removed


def _clean_shard(unit: Any, target: Path, entries: dict[tuple[str, str], QuarantineEntry]) -> tuple[OutputUnit, list[QuarantineEntry]]:
    """Copy one shard member by member, leaving out the members of quarantined samples."""
    from webdataset.tariterators import base_plus_ext

    target.parent.mkdir(parents=True, exist_ok=True)
    compressed = unit.url.endswith((".gz", ".tgz"))
    kept_keys: set[str] = set()
    removed: dict[str, QuarantineEntry] = {}
    try:
        with tarfile.open(unit.url, "r|*") as source, tarfile.open(target, "w:gz" if compressed else "w") as sink:
            for member in source:
                prefix, _ = base_plus_ext(member.name) if member.isreg() else (None, None)
                entry = entries.get((unit.name, prefix)) if prefix is not None else None
                if entry is not None:
                    removed[prefix] = entry
                    continue
                if prefix is not None:
                    kept_keys.add(prefix)
                sink.addfile(member, source.extractfile(member) if member.isreg() else None)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise GuardError(f"cannot read shard {unit.name} completely: {error}", "nothing was written; repair or drop the shard") from None
    digest = hashlib.sha256()
    with open(target, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return (
        OutputUnit(name=unit.name, kind="shard", kept=len(kept_keys), removed=len(removed), sha256=digest.hexdigest(), size=target.stat().st_size),
        list(removed.values()),
    )
