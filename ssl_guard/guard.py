"""Keep quarantined samples out of a training pipeline.

Two ways in, both keyed by the sample id `(source, key)` of the scan (see `ssl_guard.data`):

- `GuardedDataset(dataset, quarantine)` wraps a map-style dataset (an image folder, torchvision's
  `ImageFolder`, a `Subset` of one, or anything with an `id_of(index)` you pass) or an iterable one
  (a `webdataset.WebDataset`, or anything yielding samples you can name with `id_of(sample)`).
  Map-style wrapping decides once, from file paths alone, which indices survive: nothing is decoded,
  and every DataLoader worker and DDP rank sees the same filtered index space, so
  `DistributedSampler` splits it as usual.
- `SampleGuard(quarantine).keep` is a WebDataset `.select()` predicate over raw samples
  (`__url__`, `__key__`); put it before `.decode()` so that quarantined images are never decoded.

Both count what they dropped. The counters live in shared memory, so the totals seen from the main
process include what DataLoader workers dropped; under `torchrun`, `stats(all_ranks=True)` sums them
over ranks. Each drop is logged at DEBUG and every finished pass at INFO on the `ssl_guard.guard`
logger.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from dataclasses import dataclass
from multiprocessing import context as _mp_context
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch.utils.data

from ssl_guard.errors import GuardError, ManifestError, UnscannedSourceError
from ssl_guard.quarantine import Quarantine

log = logging.getLogger("ssl_guard.guard")


@dataclass(frozen=True)
class GuardStats:
    """Samples seen and dropped (by this process, its workers, or all ranks)."""

    seen: int
    dropped: int

    @property
    def kept(self) -> int:
        return self.seen - self.dropped


def load_quarantine(
    quarantine: "Quarantine | str | os.PathLike",
    baseline: Any = None,
    data: Sequence[str] | None = None,
    allow_stale: bool = False,
) -> Quarantine:
    """A `Quarantine` from a manifest path or object, with `baseline` applied.

    With `data`, the data is fingerprinted and a stale manifest is refused (see `Quarantine.load`).
    """
    if isinstance(quarantine, Quarantine):
        if data is not None:
            raise ManifestError("data= needs a manifest path to re-check", "pass the quarantine.json path instead of a loaded Quarantine")
        return quarantine.with_baseline(baseline)
    return Quarantine.load(quarantine, data=data, allow_stale=allow_stale, baseline=baseline)


class _Counter:
    """Counters (seen, dropped) shared with DataLoader workers, one pair per process.

    Workers are forked or spawned with the dataset; the shared array travels to them by inheritance,
    so their counts are visible in the parent. Each process writes only its own slot (the main
    process slot 0, worker i slot 1 + i), so no lock is taken per sample. Pickled any other way (a
    deepcopy, a save), the copy starts fresh counters of its own.
    """

    SLOTS = 257  # the main process and up to 256 workers; beyond that, workers share slots

    def __init__(self) -> None:
        self._array = multiprocessing.get_context("spawn").Array("q", 2 * self.SLOTS, lock=False)
        self._pid: int | None = None
        self._slot = 0

    def _offset(self) -> int:
        pid = os.getpid()
        if pid != self._pid:  # first use in this process: find out which worker it is
            info = torch.utils.data.get_worker_info()
            self._slot = 0 if info is None else 1 + info.id % (self.SLOTS - 1)
            self._pid = pid
        return 2 * self._slot

    def add(self, seen: int, dropped: int) -> None:
        offset = self._offset()
        self._array[offset] += seen
        self._array[offset + 1] += dropped

    def get(self) -> tuple[int, int]:
        values = self._array[:]
        return int(sum(values[0::2])), int(sum(values[1::2]))

    def reset(self) -> None:
        self._array[:] = [0] * (2 * self.SLOTS)

    def __getstate__(self) -> dict:
        if _mp_context.get_spawning_popen() is not None:
            return {"array": self._array}
        return {"array": None}

    def __setstate__(self, state: dict) -> None:
        if state["array"] is None:
            self.__init__()
        else:
            self._array, self._pid, self._slot = state["array"], None, 0


def _worker_tag() -> str:
    info = torch.utils.data.get_worker_info()
    parts = []
    if info is not None:
        parts.append(f"worker {info.id}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts.append(f"rank {torch.distributed.get_rank()}")
    return ", ".join(parts) or "main process"


class SampleGuard:
    """The keep-predicate of a quarantine, with counters.

    Args:
        quarantine: a `Quarantine`, a `quarantine.json` path or a scan's run folder.
        root: the dataset root the ids are relative to; defaults to the manifest's
            `provenance.root`. Pass it when the data has moved since the scan.
        baseline: a `Baseline` or baseline path; samples it marks as false positives are kept.
        data: dataset specs to re-fingerprint, refusing a stale manifest (hashes all the data).
        allow_stale: accept a stale manifest when `data` is given.
        unscanned: what to do with a sample whose shard the scan never saw: "error" (default: a
            guard that passes unscanned data looks like protection and is not), "warn" or "keep".
    """

    def __init__(
        self,
        quarantine: "Quarantine | str | os.PathLike",
        root: str | os.PathLike | None = None,
        baseline: Any = None,
        data: Sequence[str] | None = None,
        allow_stale: bool = False,
        unscanned: str = "error",
    ) -> None:
        if unscanned not in ("error", "warn", "keep"):
            raise GuardError(f"unscanned={unscanned!r} is not one of error, warn, keep")
        self.quarantine = load_quarantine(quarantine, baseline, data, allow_stale)
        self.root = os.path.realpath(os.fspath(root) if root is not None else self.quarantine.provenance.root)
        self.unscanned = unscanned
        self._ids = self.quarantine.ids()
        self._shards = frozenset(u.name for u in self.quarantine.provenance.units if u.kind == "shard")
        self._url_cache: dict[str, str | None] = {}
        self._warned: set[str] = set()
        self._counter = _Counter()
        self.dropped_ids: list[tuple[str, str]] = []  # this process only

    # -- ids ---------------------------------------------------------------------------------

    def keep_id(self, source: str, key: str) -> bool:
        """True (and counted as kept) unless `(source, key)` is quarantined."""
        if (source, key) in self._ids:
            self._counter.add(1, 1)
            self.dropped_ids.append((source, key))
            log.debug("dropped quarantined sample %s %s", source, key)
            return False
        self._counter.add(1, 0)
        return True

    def source_of_url(self, url: str) -> str | None:
        """The scan's source name of a shard URL (as WebDataset's `__url__`), or None if unscanned.

        Local paths are taken relative to the root; a path outside it (data moved or mounted
        elsewhere) still matches when it ends with a scanned shard's relative path.
        """
        if url in self._url_cache:
            return self._url_cache[url]
        found = self._match_url(url)
        self._url_cache[url] = found
        return found

    def _match_url(self, url: str) -> str | None:
        if url in self._shards:
            return url
        path = url[len("file:") :] if url.startswith("file:") else url
        candidates = []
        if "://" not in path and not path.startswith("pipe:"):
            real = os.path.realpath(path)
            if real == self.root or real.startswith(self.root + os.sep):
                candidates.append(Path(os.path.relpath(real, self.root)).as_posix())
        posix = path.replace(os.sep, "/")
        candidates += sorted((s for s in self._shards if posix.endswith("/" + s) or posix == s), key=len, reverse=True)
        for candidate in candidates:
            if not self._shards or candidate in self._shards:
                return candidate
        return None

    def keep(self, sample: dict) -> bool:
        """WebDataset `.select()` predicate: False for a quarantined sample (`__url__`, `__key__`).

        Raises:
            UnscannedSourceError: the sample's shard was not part of the scan (when `unscanned="error"`).
        """
        try:
            url, key = sample["__url__"], sample["__key__"]
        except (KeyError, TypeError):
            raise GuardError(
                "sample has no __url__/__key__",
                "place the guard before .to_tuple()/.map(), on raw WebDataset samples",
            ) from None
        source = self.source_of_url(url)
        if source is None:
            if self.unscanned == "error":
                raise UnscannedSourceError(
                    f"{url} was not part of the scan behind this quarantine (root {self.root})",
                    "scan these shards, pass root= if the data moved, or unscanned='warn'",
                )
            if url not in self._warned:
                self._warned.add(url)
                if self.unscanned == "warn":
                    log.warning("%s was not scanned; its samples pass unchecked", url)
            self._counter.add(1, 0)
            return True
        return self.keep_id(source, key)

    __call__ = keep

    # -- counts ------------------------------------------------------------------------------

    def stats(self, all_ranks: bool = False) -> GuardStats:
        """Samples seen and dropped so far, workers included; summed over ranks if `all_ranks`.

        `all_ranks` is a collective call under `torch.distributed`: every rank must make it.
        """
        seen, dropped = self._counter.get()
        if all_ranks and torch.distributed.is_available() and torch.distributed.is_initialized():
            totals = torch.tensor([seen, dropped], dtype=torch.int64)
            torch.distributed.all_reduce(totals)
            seen, dropped = (int(v) for v in totals)
        return GuardStats(seen, dropped)

    def reset(self) -> None:
        """Zero the counters (say, at the start of an epoch)."""
        self._counter.reset()
        self.dropped_ids.clear()

    def log_summary(self, all_ranks: bool = False, level: int = logging.INFO) -> GuardStats:
        stats = self.stats(all_ranks)
        log.log(level, "ssl-guard: dropped %d of %d samples (%d quarantined in the manifest)", stats.dropped, stats.seen, len(self._ids))
        return stats


# ---------------------------------------------------------------------------------------------
# Map-style datasets


def _paths_of(dataset: Any) -> Callable[[int], str] | None:
    """How to get the file path of item i without loading it, for the dataset types we know."""
    if isinstance(dataset, torch.utils.data.Subset):
        inner = _paths_of(dataset.dataset)
        return None if inner is None else (lambda i: inner(dataset.indices[i]))
    for attribute in ("samples", "imgs"):  # torchvision DatasetFolder / ImageFolder
        items = getattr(dataset, attribute, None)
        if isinstance(items, Sequence) and items and isinstance(items[0], (tuple, list)):
            return lambda i, items=items: os.fspath(items[i][0])
    for attribute in ("paths", "files"):
        items = getattr(dataset, attribute, None)
        if isinstance(items, Sequence) and items and isinstance(items[0], (str, os.PathLike)):
            return lambda i, items=items: os.fspath(items[i])
    return None


class GuardedDataset(torch.utils.data.Dataset):
    """A dataset without its quarantined samples.

    Map-style: the kept indices are computed once from file paths (`samples`, `imgs`, `paths` or
    `files`, like torchvision's `ImageFolder`), or from `id_of(index) -> (source, key)`. An image's
    id is its path relative to the root and that path without its extension, as the scan named it.
    Given an `IterableDataset`, this returns a `GuardedIterableDataset` instead.

    Args:
        dataset: the dataset to filter.
        quarantine: a `Quarantine`, a `quarantine.json` path or a scan's run folder.
        root: the folder the scan's ids are relative to (default: the manifest's root).
        baseline, data, allow_stale, unscanned: as for `SampleGuard`.
        id_of: names item i (map-style) or a sample (iterable) as `(source, key)`.
        log_drops: log the number dropped at INFO when the wrapper is built (map-style) or after
            each pass (iterable).

    Attributes:
        indices: (map-style) the kept indices into `dataset`.
        dropped_ids: (map-style) the ids removed, in dataset order.
    """

    def __new__(cls, dataset: Any = None, *args: Any, **kwargs: Any):
        if cls is GuardedDataset and isinstance(dataset, torch.utils.data.IterableDataset):
            return GuardedIterableDataset(dataset, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        dataset: Any,
        quarantine: "Quarantine | str | os.PathLike",
        root: str | os.PathLike | None = None,
        baseline: Any = None,
        data: Sequence[str] | None = None,
        allow_stale: bool = False,
        id_of: Callable[[int], tuple[str, str]] | None = None,
        log_drops: bool = True,
    ) -> None:
        self.dataset = dataset
        self.guard = SampleGuard(quarantine, root=root, baseline=baseline, data=data, allow_stale=allow_stale)
        ids = id_of or self._folder_ids(dataset)
        quarantined = self.guard.quarantine.ids()
        kept: list[int] = []
        dropped: list[tuple[str, str]] = []
        for index in range(len(dataset)):
            sample_id = ids(index)
            if sample_id in quarantined:
                dropped.append(sample_id)
            else:
                kept.append(index)
        self.guard._counter.add(len(dataset), len(dropped))
        self.guard.dropped_ids.extend(dropped)
        self.indices = kept
        self.dropped_ids = dropped
        found = set(self.dropped_ids)
        # quarantined ids of files this dataset holds but under another name would show up here;
        # a large number usually means the wrong root
        self.not_found = sorted(self.guard.quarantine.ids() - found)
        if log_drops:
            log.info(
                "ssl-guard: dropped %d of %d samples (%d quarantined ids not in this dataset)",
                len(self.dropped_ids), len(dataset), len(self.not_found),
            )

    def _folder_ids(self, dataset: Any) -> Callable[[int], tuple[str, str]]:
        path_of = _paths_of(dataset)
        if path_of is None:
            raise GuardError(
                f"cannot tell the file path of the items of {type(dataset).__name__}",
                "pass id_of=lambda i: (source, key) naming item i as the scan did",
            )
        root = self.guard.root
        real_dirs: dict[str, str] = {}

        prefix = root + os.sep
        cut = len(prefix)

        def ids(index: int) -> tuple[str, str]:
            path = path_of(index)
            folder, name = os.path.split(path)
            real = real_dirs.get(folder)
            if real is None:  # realpath once per folder, not per image: the scan resolved links too
                real = real_dirs[folder] = os.path.realpath(folder) + os.sep
            full = real + name
            if not full.startswith(prefix):
                raise GuardError(
                    f"{path} is not under the quarantine's root {root}",
                    "pass root= the folder that was scanned (the data may have moved)",
                )
            source = full[cut:] if os.sep == "/" else full[cut:].replace(os.sep, "/")
            return source, os.path.splitext(source)[0]

        return ids

    @property
    def n_dropped(self) -> int:
        return len(self.dropped_ids)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]


# ---------------------------------------------------------------------------------------------
# Iterable datasets


def webdataset_id(guard: SampleGuard, sample: Any) -> tuple[str, str] | None:
    """The id of a WebDataset sample dict (`__url__` relative to the root, `__key__`)."""
    if not isinstance(sample, dict) or "__key__" not in sample or "__url__" not in sample:
        raise GuardError(
            "sample has no __url__/__key__ to name it by",
            "guard the WebDataset before .to_tuple(), or pass id_of=lambda sample: (source, key)",
        )
    source = guard.source_of_url(sample["__url__"])
    return None if source is None else (source, sample["__key__"])


def filter_samples(samples: Iterator[Any], guard: SampleGuard, id_of: Callable[[Any], tuple[str, str] | None] | None = None) -> Iterator[Any]:
    """Yield the samples `guard` keeps: a plain generator, usable as a pipeline stage.

    `id_of(sample)` names a sample; the default reads WebDataset's `__url__` and `__key__`. A
    sample it cannot place (None) is handled per `guard.unscanned`.
    """
    for sample in samples:
        if id_of is None:
            if guard.keep(sample):
                yield sample
            continue
        sample_id = id_of(sample)
        if sample_id is None:
            if guard.unscanned == "error":
                raise UnscannedSourceError(f"sample {sample!r:.80} was not part of the scan", "pass unscanned='warn' to let it through")
            guard._counter.add(1, 0)
            yield sample
        elif guard.keep_id(*sample_id):
            yield sample


class GuardedIterableDataset(torch.utils.data.IterableDataset):
    """An iterable dataset without its quarantined samples (see `GuardedDataset`).

    Worker and rank splitting stay with the wrapped dataset (WebDataset's `split_by_node` and
    `split_by_worker`); this only filters what it yields and counts into shared counters.
    """

    def __init__(
        self,
        dataset: Any,
        quarantine: "Quarantine | str | os.PathLike",
        root: str | os.PathLike | None = None,
        baseline: Any = None,
        data: Sequence[str] | None = None,
        allow_stale: bool = False,
        id_of: Callable[[Any], tuple[str, str] | None] | None = None,
        log_drops: bool = True,
        unscanned: str = "error",
    ) -> None:
        self.dataset = dataset
        self.guard = SampleGuard(quarantine, root=root, baseline=baseline, data=data, allow_stale=allow_stale, unscanned=unscanned)
        self.id_of = id_of
        self.log_drops = log_drops

    def __iter__(self) -> Iterator[Any]:
        before = len(self.guard.dropped_ids)
        seen = 0
        for sample in filter_samples(iter(self.dataset), self.guard, self.id_of):
            seen += 1
            yield sample
        if self.log_drops:
            dropped = len(self.guard.dropped_ids) - before
            log.info("ssl-guard: dropped %d samples, kept %d (%s)", dropped, seen, _worker_tag())

    def stats(self, all_ranks: bool = False) -> GuardStats:
        return self.guard.stats(all_ranks)

    @property
    def n_dropped(self) -> int:
        return self.guard.stats().dropped
