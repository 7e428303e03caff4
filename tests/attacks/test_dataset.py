"""poison_dataset: the poisoned copy, its truth, and the paths it refuses."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_guard.attacks import BlendAttack, FrequencyAttack, PatchAttack, generated_pattern, poison_dataset, read_truth
from ssl_guard.attacks.base import VAL_BAND
from ssl_guard.data import decode_rgb, iter_raw_samples, resolve_sources
from ssl_guard.errors import ConfigError, RunDirError
from ssl_guard.synthetic import trigger_patch

ATTACKS = {
    "patch": lambda: PatchAttack([("t", trigger_patch(size=24))], width=0.2),
    "blend": lambda: BlendAttack(generated_pattern(0), alpha=0.1),
    "frequency": lambda: FrequencyAttack(magnitude=100, window=32, coefficients=((7, 7), (15, 15))),
}


def read_shards(folder: Path) -> dict[tuple[str, str], tuple[np.ndarray, str | None]]:
    """(source, key) -> (pixels, label), exactly as a scan would name the samples."""
    sources = resolve_sources([folder])
    found = {}
    for unit in sources.units:
        for raw in iter_raw_samples(unit):
            assert raw.data is not None, raw.error
            found[(raw.id.source, raw.id.key)] = (np.asarray(decode_rgb(raw.data)), raw.label)
    return found


def source_pixels(folder: Path) -> dict[str, np.ndarray]:
    """Source images by output key (path without extension, '/' -> '_')."""
    return {str(p.relative_to(folder).with_suffix("")).replace("/", "_"): np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.rglob("*.png"))}


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("kind", sorted(ATTACKS))
def test_attack_changes_exactly_the_chosen_samples_and_truth_matches_shards(kind, image_folder, tmp_path):
    before = digest(image_folder)
    summary = poison_dataset(
        [str(image_folder)], tmp_path / "out", tmp_path / "truth.csv", ATTACKS[kind](),
        target_class="circles", rate=0.125, seed=3, samples_per_shard=20, image_format="png",
    )
    assert digest(image_folder) == before  # the source is never modified
    truth = read_truth(tmp_path / "truth.csv")
    shards = read_shards(tmp_path / "out")
    assert {(r.source, r.key) for r in truth} == set(shards)  # the truth names samples as a scan does
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["poisoned-000000.tar", "poisoned-000001.tar", "poisoned-000002.tar"]
    poisoned = [r for r in truth if r.poisoned]
    assert len(poisoned) == summary.poisoned == 6  # round(0.125 * 48)
    assert all(r.label == "circles" and r.target == "circles" and r.attack == kind for r in poisoned)
    originals = source_pixels(image_folder)
    for row in truth:
        pixels, label = shards[(row.source, row.key)]
        assert label == row.label
        changed = np.any(pixels != originals[row.key], axis=2)
        if not row.poisoned:
            assert not changed.any(), f"clean sample {row.key} was altered"
            assert row.box is None and row.attack == ""
            continue
        assert changed.any(), f"poisoned sample {row.key} is unchanged"
        if kind == "patch":
            x0, y0, x1, y1 = row.box
            inside = np.zeros_like(changed)
            inside[y0:y1, x0:x1] = True
            assert not (changed & ~inside).any()
            assert 0.25 * 96 <= x0 <= 0.75 * 96 and 0.25 * 96 <= y0 <= 0.75 * 96
        else:
            assert row.box is None


def test_same_seed_same_bytes_other_seed_other_poisons(image_folder, tmp_path):
    def run(name, seed):
        poison_dataset([str(image_folder)], tmp_path / name, tmp_path / f"{name}.csv", ATTACKS["patch"](), "rings", rate=0.1, seed=seed)
        return (tmp_path / f"{name}.csv").read_text(), digest(tmp_path / name)

    first, again, other = run("a", 1), run("b", 1), run("c", 2)
    assert first == again
    assert first[0] != other[0]


def test_shard_source_keeps_keys_and_class_indices(shard_folder, tmp_path):
    summary = poison_dataset([str(shard_folder)], tmp_path / "out", tmp_path / "t.csv", ATTACKS["patch"](), "2", rate=0.1, seed=0)
    truth = read_truth(tmp_path / "t.csv")
    shards = read_shards(tmp_path / "out")
    assert {(r.source, r.key) for r in truth} == set(shards)
    source_keys = {raw.id.key for unit in resolve_sources([shard_folder]).units for raw in iter_raw_samples(unit)}
    assert {r.key for r in truth} == source_keys
    assert summary.poisoned == 5 and {r.label for r in truth if r.poisoned} == {"2"}
    assert {label for _, label in shards.values()} == {"0", "1", "2", "3"}


def test_val_split_triggers_every_image_in_the_wide_band(image_folder, tmp_path):
    poison_dataset([str(image_folder)], tmp_path / "val", tmp_path / "v.csv", ATTACKS["patch"](), "blocks", split="val", seed=0)
    truth = read_truth(tmp_path / "v.csv")
    assert len(truth) == 48 and all(r.poisoned and r.target == "blocks" for r in truth)
    corners = np.array([r.box[:2] for r in truth])
    assert corners.min() >= np.ceil(VAL_BAND[0] * 96) and corners.max() <= VAL_BAND[1] * 96
    assert corners.min() < 0.25 * 96 or corners.max() > 0.75 * 96  # not confined to the train band


def test_jpeg_output_is_quality_95_jpg_members(image_folder, tmp_path):
    import tarfile

    poison_dataset([str(image_folder)], tmp_path / "out", tmp_path / "t.csv", ATTACKS["patch"](), "circles", rate=0.05, seed=0)
    with tarfile.open(tmp_path / "out" / "poisoned-000000.tar") as tar:
        names = tar.getnames()
    assert len(names) == 96 and all(n.endswith((".jpg", ".cls")) for n in names)


def test_truth_inside_output_is_refused_and_nothing_is_written(image_folder, tmp_path):
    with pytest.raises(ConfigError, match="inside the output"):
        poison_dataset([str(image_folder)], tmp_path / "out", tmp_path / "out" / "truth.csv", ATTACKS["patch"](), "circles", rate=0.1)
    assert not (tmp_path / "out").exists()


def test_outputs_that_exist_or_overlap_the_source_are_refused(image_folder, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("earlier")
    with pytest.raises(RunDirError, match="not an empty folder"):
        poison_dataset([str(image_folder)], tmp_path / "full", tmp_path / "t.csv", ATTACKS["patch"](), "circles", rate=0.1)
    (tmp_path / "old.csv").write_text("earlier")
    with pytest.raises(RunDirError, match="already exists"):
        poison_dataset([str(image_folder)], tmp_path / "new", tmp_path / "old.csv", ATTACKS["patch"](), "circles", rate=0.1)
    with pytest.raises(ConfigError, match="overlaps the source"):
        poison_dataset([str(image_folder)], image_folder / "poisoned", tmp_path / "t.csv", ATTACKS["patch"](), "circles", rate=0.1)
    assert (tmp_path / "old.csv").read_text() == "earlier"
    # an existing empty folder is accepted
    (tmp_path / "empty").mkdir()
    poison_dataset([str(image_folder)], tmp_path / "empty", tmp_path / "t.csv", ATTACKS["patch"](), "circles", rate=0.1)
    assert (tmp_path / "empty" / "poisoned-000000.tar").is_file()


@pytest.mark.parametrize(
    "target, rate, message",
    [("circles", 0.0, "outside"), ("circles", 1.5, "outside"), ("nope", 0.1, "does not exist"), ("circles", 0.5, "has 12 images"), ("circles", 0.001, "less than one")],
)
def test_bad_rate_or_class_is_refused(image_folder, tmp_path, target, rate, message):
    with pytest.raises(ConfigError, match=message):
        poison_dataset([str(image_folder)], tmp_path / "out", tmp_path / "t.csv", ATTACKS["patch"](), target, rate=rate)
    assert not (tmp_path / "out").exists() and not (tmp_path / "t.csv").exists()


SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.mark.skipif(not (SHARED / "imagenette" / "train").is_dir(), reason="needs ../shared/data (absent in a fresh clone)")
def test_trigger_10_on_imagenette_photos_is_43_px_in_the_central_band(tmp_path):
    import shutil

    from ssl_guard.attacks import load_trigger

    source = tmp_path / "src"
    for wnid in ("n03394916", "n01440764"):
        (source / wnid).mkdir(parents=True)
        for photo in sorted((SHARED / "imagenette" / "train" / wnid).glob("*.JPEG"))[:5]:
            shutil.copy(photo, source / wnid / photo.name)
    attack = PatchAttack([("trigger_10", load_trigger(SHARED / "triggers-htba" / "trigger_10.png"))], width=0.19)
    poison_dataset([str(source)], tmp_path / "out", tmp_path / "t.csv", attack, "n03394916", rate=0.5, seed=0)
    boxes = [r.box for r in read_truth(tmp_path / "t.csv") if r.poisoned]
    assert len(boxes) == 5
    for x0, y0, x1, y1 in boxes:
        assert (x1 - x0, y1 - y0) == (43, 43)  # about 12 px once a scan resizes 224 -> 64
        assert 56 <= x0 <= 168 and 56 <= y0 <= 168
