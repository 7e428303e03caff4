"""The quarantine manifest: which samples to keep out of training, and the run that decided it.

A manifest names each flagged sample by its stable id `(source, key)` (see `ssl_guard.data`), with
the detector's score, the trigger box and a reason, and records the run's provenance: tool version,
encoder and revision, a hash of the configuration and a fingerprint of every unit (shard or group of
folder files) that was scanned. The fingerprint is what makes a manifest safe to reuse: loading one
for data that has changed since is refused (`StaleManifestError`), because a guard built from it
would let new poisons through while looking current.

This module imports no torch, so the light commands (`check --quarantine`, `verify`) and the
pre-commit hook stay fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from ssl_guard.atomic import write_text_atomic
from ssl_guard.errors import ManifestError, StaleManifestError, validation_summary

if TYPE_CHECKING:  # pragma: no cover
    from ssl_guard.baseline import Baseline
    from ssl_guard.data import Sources

SCHEMA_VERSION = 1
MANIFEST_NAME = "quarantine.json"


class UnitFingerprint(BaseModel):
    """One scanned unit: a shard (`kind="shard"`) or a group of folder files (`kind="files"`).

    `sha256` is `data.fingerprint_unit` (a truncated sha256 over the bytes, or over the files' names
    and bytes); `size` is the shard's bytes or the sum of the group's file sizes.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str
    sha256: str
    size: int


class Provenance(BaseModel):
    """Where a manifest comes from: enough to tell whether it still applies to the data."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    tool_version: str
    created: str  # ISO 8601
    method: str
    encoder: str
    encoder_revision: str | None = None
    config_hash: str
    root: str
    units: list[UnitFingerprint]
    resolution: int | None = None


class QuarantineEntry(BaseModel):
    """One flagged sample. `box` is `x0, y0, x1, y1` in scan-resolution pixels, exclusive end."""

    model_config = ConfigDict(extra="allow")

    source: str
    key: str
    score: float
    box: list[int] | None = None
    reason: str
    detector: str
    sha256: str | None = None  # the sample's content hash at scan time (what a waiver is bound to)

    @property
    def id(self) -> tuple[str, str]:
        return (self.source, self.key)


class Quarantine(BaseModel):
    """A quarantine manifest (`quarantine.json`).

    `entries` are the samples to keep out; `suppressed` are flagged samples that a reviewed baseline
    marks as false positives (kept in the data, listed so that reports can show them).
    """

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    provenance: Provenance
    n_scanned: int
    n_skipped: int
    threshold: float | None
    entries: list[QuarantineEntry]
    suppressed: list[QuarantineEntry] = Field(default_factory=list)
    # "source key" of findings whose review waiver was made for other bytes (not applied)
    waivers_not_applied: list[str] = Field(default_factory=list)

    _ids: frozenset[tuple[str, str]] | None = PrivateAttr(default=None)

    # -- the predicate -----------------------------------------------------------------------

    def ids(self) -> frozenset[tuple[str, str]]:
        """The quarantined `(source, key)` pairs."""
        if self._ids is None:
            self._ids = frozenset(entry.id for entry in self.entries)
        return self._ids

    def keep(self, source: str, key: str) -> bool:
        """True when the sample `(source, key)` may be used for training."""
        return (source, key) not in self.ids()

    @property
    def n_flagged(self) -> int:
        return len(self.entries)

    @property
    def root(self) -> str:
        return self.provenance.root

    def sources(self) -> frozenset[str]:
        """The sources (shards or files) holding at least one quarantined sample."""
        return frozenset(entry.source for entry in self.entries)

    def waiver_warning(self) -> str | None:
        """The one line that reports waivers not applied because the waived bytes changed, or None."""
        if not self.waivers_not_applied:
            return None
        shown = ", ".join(self.waivers_not_applied[:5])
        return f"{len(self.waivers_not_applied)} reviewed waiver(s) not applied because the sample's bytes changed since review: {shown}"

    def with_baseline(self, baseline: "Baseline | str | os.PathLike | None") -> "Quarantine":
        """A copy whose entries marked false positive in `baseline` move to `suppressed`."""
        if baseline is None:
            return self
        from ssl_guard.baseline import Baseline

        if not isinstance(baseline, Baseline):
            baseline = Baseline.load(baseline)
        kept = [e for e in self.entries if not baseline.suppresses(e.source, e.key, e.sha256)]
        moved = [e for e in self.entries if baseline.suppresses(e.source, e.key, e.sha256)]
        # a waiver made for other bytes no longer applies: the finding stays, and the manifest says so
        changed = [f"{e.source} {e.key}" for e in kept if baseline.content_changed(e.source, e.key, e.sha256)]
        copy = self.model_copy(update={"entries": kept, "suppressed": [*self.suppressed, *moved], "waivers_not_applied": [*self.waivers_not_applied, *changed]})
        copy._ids = None  # model_copy carries the cached id set of the original
        return copy

    # -- files -------------------------------------------------------------------------------

    def write(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the manifest atomically; refuses to replace an existing file unless `overwrite`.

        Raises:
            ManifestError: `path` exists and `overwrite` is False.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise ManifestError(f"{path} already exists", "choose a new path; an earlier run's manifest is never replaced")
        write_text_atomic(path, self.model_dump_json(indent=2) + "\n")
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        data: Sequence[str] | None = None,
        allow_stale: bool = False,
        baseline: "Baseline | str | os.PathLike | None" = None,
    ) -> "Quarantine":
        """Read a manifest (a `quarantine.json`, or a run folder holding one).

        When `data` is given (the dataset specs, as passed to the scan), the data is fingerprinted
        again and compared to the manifest's provenance. With a `baseline`, the samples it marks as
        false positives are kept (moved to `suppressed`).

        Raises:
            ManifestError: the file is missing, unreadable, or of another schema.
            StaleManifestError: `data` differs from what the manifest was made for (exit code 1),
                unless `allow_stale`.
        """
        manifest = cls._read(manifest_path(path))
        if data is not None:
            from ssl_guard.data import resolve_sources

            diff = compare_units(manifest.provenance.units, fingerprint_sources(resolve_sources(list(data))))
            if diff and not allow_stale:
                raise StaleManifestError(
                    f"{manifest_path(path)} is stale: {diff.describe()}",
                    "scan the data again, or pass --allow-stale to use it anyway",
                )
        return manifest.with_baseline(baseline)

    @classmethod
    def _read(cls, path: Path) -> "Quarantine":
        from ssl_guard.jsonfile import read_versioned

        raw = read_versioned(
            path, SCHEMA_VERSION, ManifestError, "quarantine manifest", "run `ssl-guard scan` first, or check the path",
            lambda found: "upgrade ssl-guard" if isinstance(found, int) and found > SCHEMA_VERSION else "scan the data again",
        )
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            where, message = validation_summary(error)
            raise ManifestError(f"{path} is not a valid manifest: {where}: {message}", "was it edited by hand?") from None


def build_quarantine(
    data: Sequence[str],
    entries: Sequence[QuarantineEntry],
    *,
    n_scanned: int | None = None,
    n_skipped: int = 0,
    threshold: float | None = None,
    method: str = "manual",
    encoder: str = "none",
    encoder_revision: str | None = None,
    config: BaseModel | dict | None = None,
    resolution: int | None = None,
) -> Quarantine:
    """A manifest for `data` with the given entries, fingerprinting the data now.

    For ids found some other way than a scan (a known-bad list, another tool); `n_scanned`
    defaults to the number of samples in folder units plus, for shards, the samples WebDataset
    reads from them (this reads every shard once).
    """
    from datetime import datetime, timezone

    from ssl_guard import __version__
    from ssl_guard.data import iter_raw_samples, resolve_sources

    sources = resolve_sources(list(data))
    if n_scanned is None:
        n_scanned = sum(1 for unit in sources.units for raw in iter_raw_samples(unit) if raw.data is not None)
    provenance = Provenance(
        tool_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        method=method,
        encoder=encoder,
        encoder_revision=encoder_revision,
        config_hash=config_hash(config or {}),
        root=sources.root,
        units=fingerprint_sources(sources),
        resolution=resolution,
    )
    return Quarantine(provenance=provenance, n_scanned=n_scanned, n_skipped=n_skipped, threshold=threshold, entries=list(entries))


def manifest_path(path: str | os.PathLike) -> Path:
    """`path` itself, or `path/quarantine.json` when `path` is a run folder."""
    path = Path(path)
    return path / MANIFEST_NAME if path.is_dir() else path


# ---------------------------------------------------------------------------------------------
# Fingerprints


def fingerprint_sources(sources: "Sources") -> list[UnitFingerprint]:
    """Fingerprint every unit of `sources`: content hash and size, in the units' order."""
    from ssl_guard.data import fingerprint_unit

    return [
        UnitFingerprint(name=unit.name, kind=unit.kind, sha256=fingerprint_unit(unit), size=_unit_size(unit))
        for unit in sources.units
    ]


def _unit_size(unit) -> int:
    if unit.kind == "shard":
        if "://" in unit.url or unit.url.startswith("pipe:"):
            return -1  # remote: size unknown without reading it
        return os.path.getsize(unit.url)
    return sum(os.path.getsize(os.path.join(unit.root, rel)) for rel in unit.files)


@dataclass(frozen=True)
class UnitDiff:
    """How the data differs from a manifest: unit names changed, added and removed."""

    changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.changed or self.added or self.removed)

    def describe(self, limit: int = 5) -> str:
        parts = []
        for label, names in (("changed", self.changed), ("added", self.added), ("removed", self.removed)):
            if names:
                shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
                parts.append(f"{len(names)} {label} ({shown})")
        return "; ".join(parts) if parts else "no change"


def compare_units(recorded: Sequence[UnitFingerprint], current: Sequence[UnitFingerprint]) -> UnitDiff:
    """Compare a manifest's unit fingerprints to the data's current ones, by unit name."""
    before = {u.name: u for u in recorded}
    now = {u.name: u for u in current}
    changed = tuple(n for n in now if n in before and (now[n].sha256, now[n].size) != (before[n].sha256, before[n].size))
    added = tuple(n for n in now if n not in before)
    removed = tuple(n for n in before if n not in now)
    return UnitDiff(changed, added, removed)


def config_hash(config: BaseModel | dict) -> str:
    """A short stable hash of a configuration: canonical JSON (sorted keys), sha256, 16 hex digits."""
    if isinstance(config, BaseModel):
        config = config.model_dump(mode="json")
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Atomic writes


# ---------------------------------------------------------------------------------------------
# Coverage: are these data files described by a current manifest? (the light pre-commit check)


@dataclass(frozen=True)
class Coverage:
    """The outcome of `check_coverage`: files covered, and the problems found, one line each."""

    covered: tuple[str, ...]
    problems: tuple[str, ...]
    ignored: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return not self.problems


def data_specs(manifest: Quarantine, root: str | os.PathLike | None = None) -> list[str]:
    """The dataset specs that reproduce `manifest`'s units under `root` (default: its own root).

    Local shards and folder groups (`<dir>#<n>`) are listed by their folders, so that shards or
    files added to those folders since the scan show up as added or changed units.
    """
    base = Path(root if root is not None else manifest.provenance.root)
    remote: list[str] = []
    folders: set[Path] = set()
    for unit in manifest.provenance.units:
        if unit.kind == "shard" and ("://" in unit.name or unit.name.startswith("pipe:")):
            remote.append(unit.name)
        elif unit.kind == "shard":
            folders.add((base / unit.name).parent)
        else:
            folders.add(base / unit.name.rsplit("#", 1)[0])
    # a folder inside another listed one would be listed twice by the recursive search
    top = sorted(f for f in folders if not any(other in f.parents for other in folders))
    return [str(f) for f in top] + remote


def check_coverage(
    manifests: Sequence[tuple[Quarantine, str | os.PathLike | None]],
    files: Sequence[str | os.PathLike] = (),
    label: Sequence[str] | None = None,
) -> Coverage:
    """Check that `files` (changed shards or images) are covered by a current manifest.

    Args:
        manifests: `(manifest, data_root)` pairs; a None root means the manifest's own root.
        files: the changed files; empty means every unit of every manifest (a full re-fingerprint).
        label: display names of the manifests, for the messages.

    Only the units holding a changed file are hashed, so a commit touching one shard costs one
    shard's read. Files that are neither shards nor images are ignored.
    """
    from ssl_guard.data import IMAGE_EXTENSIONS, SHARD_SUFFIXES, Unit, fingerprint_unit, resolve_sources

    label = list(label) if label is not None else [f"manifest {i + 1}" for i in range(len(manifests))]
    covered: list[str] = []
    problems: list[str] = []
    ignored: list[str] = []
    roots = []
    for manifest, root in manifests:
        real = os.path.realpath(root if root is not None else manifest.provenance.root)
        if not os.path.isdir(real):
            problems.append(f"{label[len(roots)]}: its data root {real} does not exist (pass the data folder explicitly)")
        roots.append(real)

    if not files:
        for (manifest, root), name, real in zip(manifests, label, roots):
            if not os.path.isdir(real):
                continue
            current = fingerprint_sources(resolve_sources(data_specs(manifest, real)))
            diff = compare_units(manifest.provenance.units, current)
            if diff:
                problems.append(f"{name} is stale: {diff.describe()}")
            else:
                covered += [u.name for u in current]
        return Coverage(tuple(covered), tuple(problems))

    resolved_cache: dict[int, dict[str, Unit]] = {}
    current_ok: dict[tuple[int, str], bool] = {}
    for file in files:
        path = os.fspath(file)
        lower = path.lower()
        is_shard, is_image = lower.endswith(SHARD_SUFFIXES), lower.endswith(IMAGE_EXTENSIONS)
        if not (is_shard or is_image):
            ignored.append(path)
            continue
        real = os.path.realpath(path)
        owner = next((i for i, r in enumerate(roots) if real.startswith(r + os.sep)), None)
        if owner is None:
            problems.append(f"{path}: not under the data of any quarantine manifest (scan it)")
            continue
        manifest, name, root = manifests[owner][0], label[owner], roots[owner]
        rel = Path(os.path.relpath(real, root)).as_posix()
        recorded = {u.name: u for u in manifest.provenance.units}
        if is_shard:
            unit = Unit(name=rel, kind="shard", root=root, url=real)
        else:
            if owner not in resolved_cache:
                current_units = resolve_sources(data_specs(manifest, root)).units
                resolved_cache[owner] = {f: u for u in current_units if u.kind == "files" for f in u.files}
            unit = resolved_cache[owner].get(rel)
            if unit is None:
                problems.append(f"{path}: not part of the data {name} was made for (scan it)")
                continue
        before = recorded.get(unit.name)
        if before is None:
            problems.append(f"{path}: {unit.name} is not in {name} (scan it)")
            continue
        if (owner, unit.name) not in current_ok:  # several changed images of one group: hash it once
            size = os.path.getsize(real) if is_shard else sum(os.path.getsize(os.path.join(root, f)) for f in unit.files)
            current_ok[(owner, unit.name)] = size == before.size and fingerprint_unit(unit) == before.sha256
        if not current_ok[(owner, unit.name)]:
            problems.append(f"{path}: changed since {name} was written (scan it again)")
            continue
        covered.append(path)
    return Coverage(tuple(covered), tuple(problems), tuple(ignored))


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
