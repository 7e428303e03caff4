"""detect_clusters end to end on generated data whose poisons are known."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import RESOLUTION, embed, make_set
from ssl_guard.detect.masking import box_iou
from ssl_guard.detect.poisoncam import ClusterMaskingConfig, detect_clusters
from ssl_guard.errors import ConfigError

# Small classifier settings keep each run to a few seconds; defaults are checked in test_defaults_*.
FAST = dict(classifier_models=1, classifier_steps=30)


@pytest.fixture(scope="module")
def poisoncam_run(poisoned_set, trigger_encoder):
    emb = embed(trigger_encoder, poisoned_set.images)
    return detect_clusters(poisoned_set.images, emb, trigger_encoder, ClusterMaskingConfig(**FAST))


def test_planted_patch_is_localized_flagged_and_clean_images_are_not(poisoncam_run, poisoned_set):
    det, ds = poisoncam_run, poisoned_set
    assert det.method == "poisoncam"
    assert det.flagged[ds.poisoned].sum() >= 4
    assert det.flagged[~ds.poisoned].sum() == 0
    located = ds.poisoned & (det.boxes[:, 0] >= 0)
    assert located.sum() >= 4
    # the box holds the planted trigger: IoU of an 8 px trigger with the grid's 12 px cell is 0.44
    assert box_iou(det.boxes[located], ds.boxes[located]).mean() > 0.3
    # poisons outrank clean images
    assert det.scores[ds.poisoned].mean() > det.scores[~ds.poisoned].mean()


def test_bank_maps_costs_are_reported(poisoncam_run, poisoned_set):
    det = poisoncam_run
    assert 1 <= len(det.bank) <= 20
    for pattern in det.bank:
        x0, y0, x1, y1 = pattern.box
        assert pattern.pixels.shape == (3, y1 - y0, x1 - x0) and pattern.pixels.dtype == np.uint8
        assert np.array_equal(pattern.pixels, poisoned_set.images[pattern.host, :, y0:y1, x0:x1])
        assert {"flip_rate", "activation_drop", "control_flip_rate"} <= set(pattern.evidence)
        assert poisoned_set.poisoned[pattern.host]
    assert 0 < len(det.maps) <= 64
    assert all(m.shape == (RESOLUTION, RESOLUTION) and m.dtype == np.float16 for m in det.maps.values())
    assert set(det.seconds) == {"cluster", "localize", "flip", "classify", "decide"}
    assert det.details["masking_ms_per_image"] > 0
    assert det.details["candidates_scored"] < len(poisoned_set.images)
    assert det.details["forwards"]["localize"] > 0 and det.details["forwards"]["flip"] > 0


def test_patchsearch_runs_on_the_same_clusters(poisoned_set, trigger_encoder):
    emb = embed(trigger_encoder, poisoned_set.images)
    det = detect_clusters(poisoned_set.images, emb, trigger_encoder, ClusterMaskingConfig(**FAST), method="patchsearch")
    assert det.method == "patchsearch"
    assert det.details["gradcam"]["stage"] == 3
    assert det.flagged[~poisoned_set.poisoned].sum() == 0
    assert det.flagged[poisoned_set.poisoned].sum() >= 1


def test_no_poison_flags_nothing_and_says_so(trigger_encoder):
    clean = make_set(n_clean=64, n_poison=0, seed=3)
    det = detect_clusters(clean.images, embed(trigger_encoder, clean.images), trigger_encoder, ClusterMaskingConfig(**FAST))
    assert not det.flagged.any()
    assert det.bank == []
    assert any("no candidate passed the flip test" in w for w in det.warnings)


def test_random_encoder_both_methods_run_without_crashing(random_encoder):
    data = make_set(n_clean=40, n_poison=4, seed=5)
    emb = embed(random_encoder, data.images)
    for method in ("poisoncam", "patchsearch"):
        det = detect_clusters(data.images, emb, random_encoder, ClusterMaskingConfig(**FAST), method=method)
        assert det.scores.shape == (44,) and det.flagged.mean() <= 0.2
        assert det.details["candidates_scored"] > 0


def test_empty_dataset(trigger_encoder):
    det = detect_clusters(np.zeros((0, 3, RESOLUTION, RESOLUTION), np.uint8), np.zeros((0, 16), np.float16), trigger_encoder, ClusterMaskingConfig())
    assert len(det.scores) == 0 and "empty dataset" in det.warnings[0]


def test_single_cluster_dataset_warns(trigger_encoder):
    one = np.repeat(make_set(n_clean=4, n_poison=0).images[:1], 10, axis=0)
    det = detect_clusters(one, embed(trigger_encoder, one), trigger_encoder, ClusterMaskingConfig(**FAST))
    assert not det.flagged.any()
    assert "single cluster" in det.warnings[0]


def test_reads_a_read_only_memmap_and_reports_progress(tmp_path, poisoned_set, trigger_encoder):
    from rich.progress import Progress

    path = tmp_path / "images.npy"
    np.save(path, poisoned_set.images[:40])
    images = np.load(path, mmap_mode="r")
    with Progress(disable=True) as progress:
        det = detect_clusters(images, embed(trigger_encoder, images), trigger_encoder, ClusterMaskingConfig(**FAST), progress=progress)
        names = [t.description for t in progress.tasks]
    assert det.scores.shape == (40,)
    assert names[0] == "cluster" and any(n.startswith("search") for n in names)
    assert all(t.finished for t in progress.tasks)


def test_inconsistent_inputs_are_config_errors(poisoned_set, trigger_encoder):
    with pytest.raises(ConfigError):
        detect_clusters(poisoned_set.images, np.zeros((3, 16), np.float16), trigger_encoder, ClusterMaskingConfig())
    with pytest.raises(ConfigError):
        detect_clusters(poisoned_set.images, np.zeros((len(poisoned_set.images), 16), np.float16), trigger_encoder, ClusterMaskingConfig(), method="bogus")


def test_defaults_scale_with_dataset_size_and_resolution():
    small = ClusterMaskingConfig().resolved(5000, 64)
    assert small.clusters == 50 and small.flip_refs == 200
    assert [round(w * 64) for w in small.windows] == [8, 16]
    assert small.classifier_steps == 200
    big = ClusterMaskingConfig().resolved(126_000, 224)
    assert big.clusters == 1000 and big.flip_refs == 1000
    assert [round(w * 224) for w in big.windows] == [28, 56]
    tiny = ClusterMaskingConfig().resolved(30, 32)
    assert 2 <= tiny.clusters <= 30 and tiny.flip_refs == 30
    assert min(round(w * 32) for w in tiny.windows) >= 4
    # explicit values win, clipped to the data
    assert ClusterMaskingConfig(clusters=500, flip_refs=64).resolved(100, 64).clusters == 100


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        ClusterMaskingConfig(windows=[0.0])
    with pytest.raises(ValueError):
        ClusterMaskingConfig(prune_fraction=1.5)


def test_bank_keeps_the_verified_windows_that_copy_each_other():
    """Three verified windows cut around copies of one pattern in unrelated images, and three
    around unrelated content (as clean members of a poison cluster can pass the flip test): the
    copies are kept, the rest dropped; with no copies at all, the strongest window alone."""
    import torch

    from ssl_guard.detect.poisoncam import _Run
    from ssl_guard.detect.search import Candidate

    rng = np.random.default_rng(0)
    n, side = 400, 48
    small = rng.integers(0, 256, (n, 3, 6, 6), dtype=np.uint8)
    images = torch.nn.functional.interpolate(torch.from_numpy(small).float(), size=(side, side), mode="bilinear", align_corners=False)
    images = images.round().clamp(0, 255).byte().numpy()  # smooth unrelated photos
    pattern = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    spots = {10: (5, 7), 20: (30, 12), 30: (18, 33)}
    for row, (y, x) in spots.items():
        images[row, :, y : y + 8, x : x + 8] = pattern
    cfg = ClusterMaskingConfig(**FAST).resolved(n, side)
    run = _Run(images, cfg, "poisoncam", torch.device("cpu"), None)

    def window(row, box, flip):
        return Candidate(row, 0, 0, box, flip, 0.5, None)

    copies = [window(row, (x - 2, y - 2, x + 10, y + 10), 0.9) for row, (y, x) in spots.items()]
    others = [window(row, (10, 10, 22, 22), 0.95) for row in (40, 50, 60)]
    kept = run.consistent(sorted(others + copies, key=lambda c: -c.score))
    assert sorted(c.row for c in kept) == [10, 20, 30]
    assert run.details["bank_consistency"]["copy_groups"] == [3]
    # nothing copies anything: only the window with the highest flip rate is kept
    others[1] = window(50, (10, 10, 22, 22), 0.99)
    assert [c.row for c in run.consistent(sorted(others, key=lambda c: -c.score))] == [50]
