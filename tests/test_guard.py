"""GuardedDataset and the WebDataset stage drop exactly the quarantined samples, in any process."""

from __future__ import annotations

import copy
import logging
import os
import shutil

import pytest
import torch
import webdataset as wds
from torchvision.datasets import ImageFolder

from ssl_guard.baseline import Baseline
from ssl_guard.errors import GuardError, UnscannedSourceError
from ssl_guard.guard import GuardedDataset, GuardedIterableDataset, SampleGuard, filter_samples
from ssl_guard.quarantine import QuarantineEntry, build_quarantine
from tests.helpers import shard_ids


def _entry(source, key):
    return QuarantineEntry(source=source, key=key, score=0.9, reason="recurring patch", detector="mine")


def _collate_paths(batch):
    return [path for path, _ in batch]


@pytest.fixture(scope="module")
def folder_quarantine(image_folder):
    """The image folder, with every 5th image (by sorted path) quarantined."""
    files = sorted(p.relative_to(image_folder).as_posix() for p in image_folder.rglob("*.png"))
    flagged = files[::5]
    q = build_quarantine([str(image_folder)], [_entry(f, os.path.splitext(f)[0]) for f in flagged], n_scanned=len(files))
    return q, {str(image_folder / f) for f in flagged}


@pytest.fixture(scope="module")
def shard_quarantine(shard_folder):
    """The shards, with every 4th sample quarantined (across all three shards)."""
    ids = shard_ids(shard_folder)
    flagged = ids[1::4]
    return build_quarantine([str(shard_folder)], [_entry(s, k) for s, k in flagged], n_scanned=len(ids)), ids, set(flagged)


# -- map-style ------------------------------------------------------------------------------


def test_image_folder_drops_exactly_the_quarantined_files_with_workers(image_folder, folder_quarantine, caplog):
    q, flagged = folder_quarantine
    base = ImageFolder(image_folder, loader=str)  # a "decoded" sample is its path, to compare ids
    with caplog.at_level(logging.INFO, logger="ssl_guard.guard"):
        guarded = GuardedDataset(base, q)
    assert len(guarded) == len(base) - len(flagged) and guarded.n_dropped == len(flagged)
    assert "dropped 10 of 48 samples" in caplog.text
    loader = torch.utils.data.DataLoader(guarded, batch_size=5, num_workers=2, collate_fn=_collate_paths)
    seen = [path for batch in loader for path in batch]
    assert len(seen) == len(set(seen))
    assert set(seen) == {path for path, _ in base.samples} - flagged
    assert guarded.not_found == []


def test_subset_and_distributed_sampler_see_the_same_filtered_index(image_folder, folder_quarantine):
    q, flagged = folder_quarantine
    base = ImageFolder(image_folder, loader=str)
    subset = torch.utils.data.Subset(base, list(range(0, len(base), 2)))
    guarded = GuardedDataset(subset, q)
    expected = {base.samples[i][0] for i in range(0, len(base), 2)} - flagged
    assert {guarded[i][0] for i in range(len(guarded))} == expected
    # two DDP ranks: each index exactly once across ranks
    parts = [list(torch.utils.data.DistributedSampler(guarded, num_replicas=2, rank=r, shuffle=False, drop_last=True)) for r in (0, 1)]
    assert not set(parts[0]) & set(parts[1]) and len(parts[0]) == len(parts[1]) == len(guarded) // 2


def test_moved_folder_needs_root_and_then_matches(image_folder, folder_quarantine, tmp_path):
    q, flagged = folder_quarantine
    moved = tmp_path / "moved"
    shutil.copytree(image_folder, moved)
    with pytest.raises(GuardError, match="not under the quarantine's root"):
        GuardedDataset(ImageFolder(moved, loader=str), q)
    guarded = GuardedDataset(ImageFolder(moved, loader=str), q, root=moved)
    assert guarded.n_dropped == len(flagged)


def test_baseline_keeps_reviewed_false_positives(image_folder, folder_quarantine):
    q, flagged = folder_quarantine
    reviewed = q.entries[0]
    baseline = Baseline()
    baseline.mark_false_positive(reviewed.source, reviewed.key)
    guarded = GuardedDataset(ImageFolder(image_folder, loader=str), q, baseline=baseline)
    assert guarded.n_dropped == len(flagged) - 1
    assert str(image_folder / reviewed.source) in {guarded[i][0] for i in range(len(guarded))}


def test_any_map_style_dataset_with_id_of(folder_quarantine):
    q, _ = folder_quarantine
    ids = [(e.source, e.key) for e in q.entries] + [("other.png", "other")]
    guarded = GuardedDataset(list(range(len(ids))), q, id_of=lambda i: ids[i])
    assert list(guarded) == [len(ids) - 1]
    with pytest.raises(GuardError, match="cannot tell the file path"):
        GuardedDataset(list(range(3)), q)


def test_guarded_dataset_pickles_for_spawned_workers(image_folder, folder_quarantine):
    q, flagged = folder_quarantine
    guarded = GuardedDataset(ImageFolder(image_folder, loader=str), q)
    clone = copy.deepcopy(guarded)
    assert clone.indices == guarded.indices and clone.n_dropped == len(flagged)


# -- WebDataset -----------------------------------------------------------------------------


def _pattern(folder) -> str:
    return str(folder / "shard-{000000..000002}.tar")


def test_select_stage_before_decode_drops_exactly_the_quarantined_keys_with_workers(shard_folder, shard_quarantine):
    q, ids, flagged = shard_quarantine
    guard = SampleGuard(q)
    dataset = (
        wds.WebDataset(_pattern(shard_folder), shardshuffle=False, workersplitter=wds.split_by_worker, empty_check=False)
        .select(guard.keep)
        .decode("pil")
        .to_tuple("__url__", "__key__", "png")
    )
    seen = [(os.path.basename(url), key) for url, key, _ in torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)]
    assert len(seen) == len(set(seen))
    assert set(seen) == set(ids) - flagged
    stats = guard.stats()  # counted in the two workers, visible here
    assert (stats.seen, stats.dropped, stats.kept) == (len(ids), len(flagged), len(ids) - len(flagged))


def test_guarded_dataset_wraps_a_webdataset(shard_folder, shard_quarantine):
    q, ids, flagged = shard_quarantine
    dataset = GuardedDataset(wds.WebDataset(_pattern(shard_folder), shardshuffle=False, empty_check=False), q)
    assert isinstance(dataset, GuardedIterableDataset)
    seen = {(os.path.basename(s["__url__"]), s["__key__"]) for s in dataset}
    assert seen == set(ids) - flagged and dataset.n_dropped == len(flagged)


def test_guarded_webdataset_in_workers(shard_folder, shard_quarantine):
    q, ids, flagged = shard_quarantine
    source = wds.WebDataset(_pattern(shard_folder), shardshuffle=False, workersplitter=wds.split_by_worker, empty_check=False)
    dataset = GuardedDataset(source, q)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
    seen = [(os.path.basename(s["__url__"]), s["__key__"]) for s in loader]
    assert sorted(seen) == sorted(set(ids) - flagged)
    assert dataset.stats() == type(dataset.stats())(seen=len(ids), dropped=len(flagged))


def test_urls_relative_moved_or_prefixed_map_to_the_scanned_shard(shard_folder, shard_quarantine, tmp_path, monkeypatch):
    q, _, _ = shard_quarantine
    guard = SampleGuard(q)
    monkeypatch.chdir(shard_folder.parent)
    assert guard.source_of_url(f"{shard_folder.name}/shard-000001.tar") == "shard-000001.tar"
    assert guard.source_of_url(f"file:{shard_folder}/shard-000002.tar") == "shard-000002.tar"
    assert guard.source_of_url("/mnt/elsewhere/shard-000000.tar") == "shard-000000.tar"  # data moved
    assert guard.source_of_url("/mnt/elsewhere/shard-000042.tar") is None


def test_unscanned_shards_fail_loudly_unless_allowed(shard_folder, shard_quarantine, caplog):
    q, _, _ = shard_quarantine
    sample = {"__url__": "/data/new-shard.tar", "__key__": "x"}
    with pytest.raises(UnscannedSourceError, match="was not part of the scan"):
        SampleGuard(q).keep(sample)
    with caplog.at_level(logging.WARNING, logger="ssl_guard.guard"):
        assert SampleGuard(q, unscanned="warn").keep(sample)
    assert "not scanned" in caplog.text
    with pytest.raises(GuardError, match="no __url__"):
        SampleGuard(q).keep(("a", "b"))


def test_filter_samples_is_a_plain_generator(shard_quarantine):
    q, ids, flagged = shard_quarantine
    root = q.provenance.root
    samples = [{"__url__": f"{root}/{s}", "__key__": k, "n": i} for i, (s, k) in enumerate(ids)]
    guard = SampleGuard(q)
    kept = list(filter_samples(iter(samples), guard))
    assert [(os.path.basename(s["__url__"]), s["__key__"]) for s in kept] == [i for i in ids if i not in flagged]
    assert sorted(guard.dropped_ids) == sorted(flagged)
    by_number = list(filter_samples(iter(range(len(ids))), SampleGuard(q), id_of=lambda n: ids[n]))
    assert by_number == [n for n, i in enumerate(ids) if i not in flagged]


@pytest.mark.slow
def test_counters_reach_spawned_workers(shard_folder, shard_quarantine):
    q, ids, flagged = shard_quarantine
    guard = SampleGuard(q)
    dataset = wds.WebDataset(_pattern(shard_folder), shardshuffle=False, empty_check=False).select(guard.keep).to_tuple("__key__")
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=1, multiprocessing_context="spawn")
    assert len(list(loader)) == len(ids) - len(flagged)
    assert guard.stats().dropped == len(flagged)
    fresh = copy.deepcopy(guard)  # pickled outside a worker start: its own counters
    assert fresh.stats().seen == 0 and guard.stats().seen == len(ids)


def test_guard_as_a_data_pipeline_stage(shard_folder, shard_quarantine):
    q, ids, flagged = shard_quarantine
    guard = SampleGuard(q)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(_pattern(shard_folder)), wds.tarfile_to_samples(), wds.select(guard.keep), wds.to_tuple("__url__", "__key__")
    )
    assert {(os.path.basename(url), key) for url, key in pipeline} == set(ids) - flagged
