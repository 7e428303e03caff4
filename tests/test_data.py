"""Data sources: resolving specs into units, stable sample ids, decoding, and failures that are
reported per sample (never fatal, never dropped). Every dataset here is a few tiny generated images."""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from ssl_guard import synthetic
from ssl_guard.data import (
    DecodeError,
    SampleId,
    Skipped,
    decode_rgb,
    fingerprint_unit,
    iter_raw_samples,
    resolve_sources,
    stream_batches,
    to_square_array,
)
from ssl_guard.errors import DataNotFoundError, GuardError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


# ---------------------------------------------------------------------------------------------
# helpers


def _solid(colour=(40, 90, 160), size=(12, 10)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with the given (name, bytes) members, written the way WebDataset shards are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return path


def _collect(sources, resolution: int = 8, batch_size: int = 4, workers: int = 0, **kwargs):
    """All batches of a stream, with the ids and the skipped records they carry, in order."""
    batches = list(stream_batches(sources, resolution, batch_size=batch_size, workers=workers, **kwargs))
    ids = [sample_id for batch in batches for sample_id in batch.ids]
    skipped = [record for batch in batches for record in batch.skipped]
    return batches, ids, skipped


def _member_names(shard: Path) -> list[str]:
    with tarfile.open(shard) as tar:
        return tar.getnames()


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims `width`×`height` (8-bit RGB) but holds a few bytes of pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """A folder tree with images of five formats at several depths plus files that are not images."""
    root = tmp_path / "mixed"
    layout = {
        "a/one.jpg": "JPEG",
        "a/deep/two.webp": "WEBP",
        "three.bmp": "BMP",
        "b/four.tiff": "TIFF",
        "b/five.png": "PNG",
        "b/six.JPEG": "JPEG",
    }
    for rel, fmt in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _solid().save(root / rel, format=fmt)
    (root / "notes.txt").write_text("not an image")
    (root / "a" / "labels.csv").write_text("x,y\n")
    (root / "b" / "archive.zip").write_bytes(b"PK\x03\x04")
    return root


@pytest.fixture
def four_shards(tmp_path) -> list[Path]:
    """Four shards `shard-00000N.tar` of 4 samples each (16 px PNG + .cls)."""
    return synthetic.write_shards(tmp_path / "shards", per_class=4, classes=4, size=16, per_shard=4)


# ---------------------------------------------------------------------------------------------
# resolve_sources


def test_folder_is_searched_recursively_for_every_image_format(mixed_folder):
    sources = resolve_sources([mixed_folder])

    assert Path(sources.root) == mixed_folder.resolve()
    files = [rel for unit in sources.units for rel in unit.files]
    assert files == sorted(["a/one.jpg", "a/deep/two.webp", "three.bmp", "b/four.tiff", "b/five.png", "b/six.JPEG"])
    assert all(unit.kind == "files" for unit in sources.units)


def test_folder_files_are_grouped_into_stable_units(mixed_folder):
    sources = resolve_sources([mixed_folder], files_per_unit=4)

    assert [unit.name for unit in sources.units] == [".#00000", ".#00001"]
    assert [len(unit.files) for unit in sources.units] == [4, 2]


def test_single_shard_is_one_unit_named_relative_to_its_folder(four_shards):
    sources = resolve_sources([four_shards[1]])

    assert Path(sources.root) == four_shards[1].parent.resolve()
    assert [(u.name, u.kind) for u in sources.units] == [("shard-000001.tar", "shard")]
    assert Path(sources.units[0].url) == four_shards[1].resolve()


def test_folder_of_shards_includes_nested_and_gzipped_shards(four_shards, tmp_path):
    folder = four_shards[0].parent
    nested = folder / "extra" / "more.tar.gz"
    nested.parent.mkdir()
    nested.write_bytes(gzip.compress(four_shards[0].read_bytes()))
    (folder / "README.md").write_text("shards")

    sources = resolve_sources([folder])

    names = [u.name for u in sources.units]
    assert names == ["extra/more.tar.gz"] + [f"shard-{i:06d}.tar" for i in range(4)]
    gz_ids = [raw.id for raw in iter_raw_samples(sources.units[0])]
    assert [i.key for i in gz_ids] == [n[: -len(".png")] for n in _member_names(four_shards[0]) if n.endswith(".png")]
    assert all(i.source == "extra/more.tar.gz" for i in gz_ids)


def test_shard_suffix_is_matched_in_any_case(four_shards):
    upper = four_shards[0].rename(four_shards[0].with_name("UPPER.TAR"))

    sources = resolve_sources([upper])
    _, ids, skipped = _collect(sources)

    assert [u.name for u in sources.units] == ["UPPER.TAR"] and len(ids) == 4 and skipped == []


def test_brace_pattern_selects_exactly_the_named_shards(four_shards):
    folder = four_shards[0].parent

    sources = resolve_sources([str(folder / "shard-{000000..000002}.tar")])

    assert [u.name for u in sources.units] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]


def test_glob_pattern_is_expanded_in_sorted_order(four_shards):
    folder = four_shards[0].parent

    sources = resolve_sources([str(folder / "shard-00000[13].tar")])

    assert [u.name for u in sources.units] == ["shard-000001.tar", "shard-000003.tar"]


def test_existing_path_with_glob_characters_is_taken_literally(tmp_path):
    folder = tmp_path / "photos [2020]"
    folder.mkdir()
    _solid().save(folder / "x.png")

    sources = resolve_sources([folder])

    assert Path(sources.root) == folder.resolve() and sources.units[0].files == ("x.png",)


@pytest.mark.parametrize(
    "spec",
    ["missing-folder", "shard-*.tar", "nothing-{000..002}.tar", "shard-{000000..000009}.tar"],
    ids=["missing path", "glob matching nothing", "brace of missing files", "brace partly missing"],
)
def test_spec_matching_nothing_is_a_data_not_found_error(four_shards, spec):
    folder = four_shards[0].parent / "elsewhere"
    folder.mkdir()
    target = four_shards[0].parent if spec.startswith("shard-{") else folder

    with pytest.raises(DataNotFoundError) as error:
        resolve_sources([str(target / spec)])

    assert isinstance(error.value, GuardError)
    assert "\n" not in error.value.one_line()


def test_empty_spec_list_is_a_data_not_found_error():
    with pytest.raises(DataNotFoundError, match="no dataset given"):
        resolve_sources([])


def test_a_file_that_is_neither_image_nor_shard_is_rejected(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")

    with pytest.raises(DataNotFoundError, match="neither an image folder"):
        resolve_sources([notes])


def test_folder_without_images_gives_no_unit(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("x")

    assert len(resolve_sources([tmp_path / "empty"])) == 0


def test_unit_names_are_stable_and_independent_of_the_working_directory(tmp_path, monkeypatch):
    data = tmp_path / "data"
    synthetic.write_folder(data / "train", per_class=2, classes=2, size=16)
    synthetic.write_shards(data / "shards", per_class=2, classes=2, size=16, per_shard=2)
    absolute = [str(data / "train"), str(data / "shards")]

    first = resolve_sources(absolute)
    again = resolve_sources(absolute)
    monkeypatch.chdir(data)
    relative = resolve_sources(["train", "./shards"])
    monkeypatch.chdir(tmp_path / "data" / "train" / synthetic.CLASS_NAMES[0])
    upward = resolve_sources(["..", "../../shards"])

    expected = [(u.name, u.files) for u in first.units]
    assert [u.name for u in first.units] == ["shards/shard-000000.tar", "shards/shard-000001.tar", "train#00000"]
    for other in (again, relative, upward):
        assert [(u.name, u.files) for u in other.units] == expected
        assert other.root == first.root == str(data.resolve())
    assert all(not rel.startswith(("/", "..")) for u in first.units for rel in u.files)


def test_overlapping_specs_give_each_sample_one_unit(tmp_path, four_shards):
    folder = tmp_path / "images"
    synthetic.write_folder(folder, per_class=2, classes=2, size=16)
    sub = folder / synthetic.CLASS_NAMES[1]
    one_file = next(sub.iterdir())
    shard = four_shards[0]

    sources = resolve_sources([folder, sub, one_file, folder, shard, str(shard.parent / "." / shard.name)])

    files = [rel for unit in sources.units for rel in unit.files]
    assert len(files) == len(set(files)) == 4
    names = [u.name for u in sources.units]
    assert len(names) == len(set(names))
    assert sum(u.kind == "shard" for u in sources.units) == 1


def test_linked_file_in_a_folder_is_named_by_its_place_in_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _solid().save(outside / "target.png")
    folder = tmp_path / "folder"
    folder.mkdir()
    _solid(RED).save(folder / "real.png")
    (folder / "link.png").symlink_to(outside / "target.png")

    sources = resolve_sources([folder])

    assert sources.units[0].files == ("link.png", "real.png")
    assert [raw.id for raw in iter_raw_samples(sources.units[0])] == [SampleId("link.png", "link"), SampleId("real.png", "real")]


# ---------------------------------------------------------------------------------------------
# sample ids


def test_folder_ids_are_relative_path_and_path_without_extension(mixed_folder):
    sources = resolve_sources([mixed_folder])

    raws = [raw for unit in sources.units for raw in iter_raw_samples(unit)]

    assert [raw.id for raw in raws] == [SampleId(rel, os.path.splitext(rel)[0]) for unit in sources.units for rel in unit.files]
    assert SampleId("a/deep/two.webp", "a/deep/two") in [raw.id for raw in raws]
    # the class of a folder image is its parent folder; a file at the root has none
    labels = {raw.id.source: raw.label for raw in raws}
    assert labels["a/deep/two.webp"] == "deep" and labels["b/five.png"] == "b" and labels["three.bmp"] is None


def test_shard_ids_are_shard_name_and_webdataset_key(four_shards):
    sources = resolve_sources([four_shards[0].parent])

    raws = [raw for unit in sources.units for raw in iter_raw_samples(unit)]

    expected = [
        SampleId(shard.name, name[: -len(".png")]) for shard in four_shards for name in _member_names(shard) if name.endswith(".png")
    ]
    assert [raw.id for raw in raws] == expected
    # the label is the .cls member, e.g. key "stripes_00001" has class 1
    for raw in raws:
        assert raw.error is None
        assert raw.label == str(synthetic.CLASS_NAMES.index(raw.id.key.split("_")[0]))


def test_ids_are_the_same_across_runs_and_worker_counts(image_folder, shard_folder):
    sources = resolve_sources([image_folder, shard_folder], files_per_unit=20)
    assert len(sources) >= 4

    _, in_process, _ = _collect(sources, workers=0)
    _, in_process_again, _ = _collect(resolve_sources([image_folder, shard_folder], files_per_unit=20), workers=0)
    _, in_workers, _ = _collect(sources, workers=2)

    assert len(in_process) == len(set(in_process)) == 96
    assert in_process == in_process_again
    assert sorted(in_workers) == sorted(in_process)


# ---------------------------------------------------------------------------------------------
# decoding


def _corner(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((0, 0))


def test_grayscale_is_replicated_to_rgb():
    image = decode_rgb(_encode(Image.new("L", (6, 4), 200)))

    assert image.mode == "RGB" and image.size == (6, 4)
    assert _corner(image) == (200, 200, 200)


def test_palette_image_decodes_to_its_colours():
    palette = _solid(BLUE, (6, 4))
    palette.putpixel((0, 0), RED)
    image = decode_rgb(_encode(palette.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)))

    assert _corner(image) == RED and image.getpixel((5, 3)) == BLUE


def test_palette_transparency_is_composited_on_white():
    indexed = Image.new("P", (6, 4), 1)
    indexed.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    indexed.putpixel((0, 0), 0)
    data = _encode(indexed, transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0

    image = decode_rgb(data)

    assert _corner(image) == WHITE and image.getpixel((3, 2)) == BLUE


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (6, 4), (0, 0, 255, 255))
    rgba.putpixel((0, 0), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))

    image = decode_rgb(_encode(rgba))

    assert image.mode == "RGB"
    assert _corner(image) == WHITE and image.getpixel((5, 3)) == BLUE
    assert all(abs(channel - 127) <= 1 for channel in image.getpixel((1, 0)))


def test_grayscale_with_alpha_is_composited_on_white():
    la = Image.new("LA", (6, 4), (50, 255))
    la.putpixel((0, 0), (0, 0))

    image = decode_rgb(_encode(la))

    assert _corner(image) == WHITE and image.getpixel((2, 2)) == (50, 50, 50)


@pytest.mark.parametrize("fmt", ["TIFF", "JPEG"])
def test_cmyk_is_converted_to_rgb(fmt):
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in ink

    image = decode_rgb(_encode(cmyk, fmt))

    assert image.mode == "RGB" and image.size == (8, 8)
    r, g, b = image.getpixel((4, 4))
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits():
    array = np.zeros((4, 6), dtype=np.uint16)
    array[0, 0], array[0, 1], array[0, 2] = 65535, 32768, 256
    sixteen = Image.fromarray(array)
    data = _encode(sixteen)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")

    image = decode_rgb(data)

    assert image.mode == "RGB"
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [255, 128, 1, 0]


def test_float_tiff_in_unit_range_is_scaled_to_eight_bits():
    array = np.zeros((4, 6), dtype=np.float32)
    array[0, 0], array[0, 1] = 1.0, 0.5
    data = _encode(Image.fromarray(array, mode="F"), "TIFF")
    if Image.open(io.BytesIO(data)).mode != "F":
        pytest.skip("this PIL does not write float TIFFs")

    image = decode_rgb(data)

    assert image.getpixel((0, 0)) == WHITE
    assert abs(image.getpixel((1, 0))[0] - 127) <= 1 and image.getpixel((5, 3)) == (0, 0, 0)


def test_exif_orientation_is_applied():
    stored = _solid(BLUE, (8, 4))  # 8 wide, 4 high as stored
    stored.putpixel((0, 0), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"

    image = decode_rgb(_encode(stored, "JPEG", exif=exif.tobytes(), quality=100, subsampling=0))

    assert image.size == (4, 8)
    # the stored top-left corner is the displayed top-right one
    r, g, b = image.getpixel((3, 0))
    assert r > 200 and b < 60
    r, g, b = image.getpixel((0, 0))
    assert b > 200 and r < 60


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM", "GIF"])
def test_every_supported_format_decodes(fmt):
    image = decode_rgb(_encode(_solid(GREEN, (9, 7)), fmt))

    assert image.mode == "RGB" and image.size == (9, 7)
    r, g, b = image.getpixel((4, 3))
    assert g > 200 and r < 60 and b < 60


def test_formats_outside_the_raster_list_are_refused_with_a_stable_reason():
    # EPS would be rendered by Ghostscript: untrusted data must never reach it
    data = _encode(_solid(), "EPS")

    with pytest.raises(DecodeError) as first:
        decode_rgb(data)
    with pytest.raises(DecodeError) as second:
        decode_rgb(data)

    assert "not a supported image format" in str(first.value)
    assert str(first.value) == str(second.value)  # no in-memory address in the reason


@pytest.mark.parametrize(
    ("owner", "name", "error"),
    [
        (ImageOps, "exif_transpose", struct.error("required argument is not a float")),
        (ImageFile.ImageFile, "load", OverflowError("Python int too large to convert to C ssize_t")),
    ],
    ids=["malformed exif", "absurd tile offset"],
)
def test_any_failure_inside_the_decoder_is_a_decode_error(monkeypatch, owner, name, error):
    # fuzzed JPEG EXIF and TIFF headers raise exactly these from inside PIL; a scan must not die of them
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(owner, name, fail)

    with pytest.raises(DecodeError, match=f"undecodable image: {type(error).__name__}"):
        decode_rgb(_encode(_solid(), "JPEG"))


def test_size_limit_is_checked_from_the_header_before_decoding():
    # a real 40x40 PNG cut right after its header: decoding it would fail as truncated
    header_only = _encode(_solid(size=(40, 40)))[:64]

    with pytest.raises(DecodeError, match=r"oversized image: 40x40 pixels exceeds the limit of 1000"):
        decode_rgb(header_only, max_pixels=1000)
    with pytest.raises(DecodeError, match="undecodable"):
        decode_rgb(header_only, max_pixels=1600)


def test_decompression_bomb_header_is_refused_at_the_default_limit():
    with pytest.raises(DecodeError, match="oversized image: .*100000"):
        decode_rgb(_png_claiming(100_000, 100_000))
    with pytest.raises(DecodeError, match="oversized image: 9000x9000 pixels exceeds the limit of 64000000"):
        decode_rgb(_png_claiming(9_000, 9_000))


def test_importing_the_library_leaves_pil_bomb_limit_alone():
    # the guard imports this module inside training processes: it must not disable PIL's check there
    code = "from PIL import Image; before = Image.MAX_IMAGE_PIXELS; import ssl_guard.data; print(before, Image.MAX_IMAGE_PIXELS)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout.split()

    assert out[0] == out[1] != "None"


def test_pil_bomb_limit_is_raised_only_when_a_larger_limit_is_asked(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)

    with pytest.raises(DecodeError, match="oversized image: .*decompression bomb"):
        decode_rgb(_png_claiming(100, 100), max_pixels=1_500)  # 10 000 pixels: refused by PIL's own check
    assert Image.MAX_IMAGE_PIXELS == 1_000

    with pytest.raises(DecodeError, match="oversized image: 100x100 pixels exceeds the limit of 5000"):
        decode_rgb(_png_claiming(100, 100), max_pixels=5_000)
    assert Image.MAX_IMAGE_PIXELS == 1_000  # raised for that call only: the host's limit is back


def test_to_square_array_resizes_the_whole_image_without_cropping():
    wide = Image.new("RGB", (40, 20), RED)
    wide.paste(BLUE, (36, 0, 40, 20))  # a thin strip at the right edge that a centre crop would cut

    array = to_square_array(wide, 16)

    assert array.shape == (3, 16, 16) and array.dtype == np.uint8 and array.flags.c_contiguous
    assert tuple(array[:, 8, 0]) == RED
    assert tuple(array[:, 8, 15]) == BLUE


# ---------------------------------------------------------------------------------------------
# failures are reported, never fatal, never dropped


def _by_id(skipped: list[Skipped]) -> dict[SampleId, str]:
    return {record.id: record.reason for record in skipped}


def test_bad_folder_files_are_skipped_with_their_id_and_reason(tmp_path):
    folder = tmp_path / "bad"
    synthetic.write_folder(folder, per_class=3, classes=2, size=16)
    rng = np.random.default_rng(0)
    (folder / "corrupt.jpg").write_bytes(rng.integers(0, 256, 600, dtype=np.uint8).tobytes())
    full = _encode(_solid(size=(24, 24)))
    (folder / "truncated.png").write_bytes(full[: len(full) // 2])
    _solid(size=(40, 40)).save(folder / "huge.png")
    (folder / "empty.webp").write_bytes(b"")
    (folder / "vanishes.bmp").write_bytes(_encode(_solid(), "BMP"))
    sources = resolve_sources([folder], files_per_unit=5)
    (folder / "vanishes.bmp").unlink()  # removed between listing and reading

    batches, ids, skipped = _collect(sources, batch_size=3, max_pixels=1000)

    reasons = _by_id(skipped)
    assert set(reasons) == {
        SampleId("corrupt.jpg", "corrupt"),
        SampleId("truncated.png", "truncated"),
        SampleId("huge.png", "huge"),
        SampleId("empty.webp", "empty"),
        SampleId("vanishes.bmp", "vanishes"),
    }
    assert reasons[SampleId("corrupt.jpg", "corrupt")].startswith("undecodable image")
    assert reasons[SampleId("truncated.png", "truncated")].startswith("undecodable image")
    assert "truncated" in reasons[SampleId("truncated.png", "truncated")]
    assert reasons[SampleId("huge.png", "huge")].startswith("oversized image: 40x40")
    assert reasons[SampleId("vanishes.bmp", "vanishes")].startswith("unreadable file")
    assert len(ids) == 6 and all(i.source.startswith(synthetic.CLASS_NAMES[:2]) for i in ids)
    assert len(ids) + len(skipped) == sum(len(u.files) for u in sources.units) == 11
    assert all(batch.last for batch in batches if batch.skipped)


def test_unreadable_file_is_skipped(tmp_path):
    folder = tmp_path / "perm"
    folder.mkdir()
    _solid().save(folder / "ok.png")
    locked = folder / "locked.png"
    _solid().save(locked)
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):
            pytest.skip("running with privileges that read a mode-000 file")
        _, ids, skipped = _collect(resolve_sources([folder]))
    finally:
        locked.chmod(0o644)

    assert ids == [SampleId("ok.png", "ok")]
    assert [(s.id, s.reason) for s in skipped] == [(SampleId("locked.png", "locked"), "unreadable file: Permission denied")]


def test_bad_shard_samples_are_skipped_with_their_key(tmp_path):
    good = _encode(_solid(size=(16, 16)))
    full = _encode(_solid(size=(24, 24)))
    shard = _write_tar(
        tmp_path / "s" / "mixed.tar",
        [
            ("good1.png", good),
            ("good1.cls", b"0"),
            ("labelonly.cls", b"1"),
            ("noise.jpg", os.urandom(300)),
            ("cut.png", full[: len(full) // 2]),
            ("huge.png", _encode(_solid(size=(40, 40)))),
            ("seg.input.jpg", _encode(_solid(size=(16, 16)), "JPEG")),
            ("seg.cls", b"2"),
            ("good2.webp", _encode(_solid(size=(16, 16)), "WEBP")),
        ],
    )

    batches, ids, skipped = _collect(resolve_sources([shard]), batch_size=2, max_pixels=1000)

    assert ids == [SampleId("mixed.tar", "good1"), SampleId("mixed.tar", "seg"), SampleId("mixed.tar", "good2")]
    reasons = _by_id(skipped)
    assert list(reasons) == [SampleId("mixed.tar", k) for k in ("labelonly", "noise", "cut", "huge")]
    assert reasons[SampleId("mixed.tar", "labelonly")] == "no image member (has: cls)"
    assert reasons[SampleId("mixed.tar", "noise")].startswith("undecodable image")
    assert reasons[SampleId("mixed.tar", "cut")].startswith("undecodable image")
    assert reasons[SampleId("mixed.tar", "huge")].startswith("oversized image")
    assert len(ids) + len(skipped) == 7  # samples (keys) in the shard
    labels = [label for batch in batches for label in batch.labels]
    assert labels == ["0", "2", None]


def test_members_of_a_key_that_are_not_adjacent_are_reported_not_read_twice(tmp_path):
    png = _encode(_solid(size=(16, 16)))
    shard = _write_tar(tmp_path / "s.tar", [("a.png", png), ("b.png", png), ("a.jpg", _encode(_solid(), "JPEG")), ("a.cls", b"3")])

    _, ids, skipped = _collect(resolve_sources([shard]))

    assert ids == [SampleId("s.tar", "a"), SampleId("s.tar", "b")]
    assert [(s.id, s.reason) for s in skipped] == [
        (SampleId("s.tar", "a"), "key repeated in the shard, members not adjacent (unread: cls, jpg)")
    ]


def test_shard_cut_in_the_middle_reports_one_shard_error_and_keeps_the_rest(four_shards):
    folder = four_shards[0].parent
    data = four_shards[1].read_bytes()
    png_offsets = []
    with tarfile.open(four_shards[1]) as tar:
        png_offsets = [m.offset_data + m.size // 2 for m in tar.getmembers() if m.name.endswith(".png")]
    four_shards[1].write_bytes(data[: png_offsets[2]])  # inside the third image

    _, ids, skipped = _collect(resolve_sources([folder]), batch_size=3)

    assert [(s.id, s.reason.split(":")[0]) for s in skipped] == [(SampleId("shard-000001.tar", "*"), "shard read error")]
    assert "ReadError" in skipped[0].reason and " @ <" not in skipped[0].reason
    assert sum(i.source == "shard-000001.tar" for i in ids) == 2  # the two whole samples before the cut
    assert sum(i.source != "shard-000001.tar" for i in ids) == 12  # the other shards are untouched


def test_shard_cut_between_members_is_reported_not_read_as_complete(four_shards):
    shard = four_shards[2]
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    boundary = members[4].offset  # the header of the third sample's image: a clean member boundary
    shard.write_bytes(shard.read_bytes()[:boundary])

    _, ids, skipped = _collect(resolve_sources([shard]))

    assert len(ids) == 2
    assert [s.id for s in skipped] == [SampleId("shard-000002.tar", "*")]
    assert skipped[0].reason.startswith("shard read error: truncated shard")


def test_complete_shards_report_nothing(four_shards):
    _, ids, skipped = _collect(resolve_sources([four_shards[0].parent]))

    assert skipped == [] and len(ids) == 16


def test_shard_is_complete_once_an_end_block_follows_its_last_member(four_shards):
    # tarfile pads to 10 KiB records; a copy that kept one zero block of that padding is whole
    shard = four_shards[0]
    with tarfile.open(shard) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512
    data = shard.read_bytes()
    assert len(data) > end + 512 and not any(data[end:])
    shard.write_bytes(data[: end + 512])
    gzipped_as_tar = shard.with_name("gzipped.tar")
    gzipped_as_tar.write_bytes(gzip.compress(data))

    _, ids, skipped = _collect(resolve_sources([shard, gzipped_as_tar]))

    assert skipped == [] and len(ids) == 8


@pytest.mark.parametrize("damage", ["random bytes", "empty file", "gzip cut", "deleted"])
def test_unreadable_shard_is_one_shard_error(four_shards, damage):
    shard = four_shards[3]
    sources = resolve_sources([shard])
    if damage == "random bytes":
        shard.write_bytes(os.urandom(4096))
    elif damage == "empty file":
        shard.write_bytes(b"")
    elif damage == "gzip cut":
        gz = shard.with_name("zipped.tar.gz")
        packed = gzip.compress(shard.read_bytes())
        gz.write_bytes(packed[: len(packed) // 2])
        sources = resolve_sources([gz])
    else:
        shard.unlink()

    batches, ids, skipped = _collect(sources)

    assert len(skipped) == 1 and skipped[0].id.key == "*"
    assert skipped[0].id.source == sources.units[0].name
    assert skipped[0].reason.startswith("shard read error: ")
    assert sum(batch.last for batch in batches) == 1
    assert len(ids) < 4


# ---------------------------------------------------------------------------------------------
# streaming


@pytest.mark.parametrize("workers", [0, 2])
def test_each_unit_ends_with_exactly_one_last_batch(image_folder, shard_folder, workers):
    sources = resolve_sources([image_folder, shard_folder], files_per_unit=10)
    units = len(sources)

    batches, ids, _ = _collect(sources, resolution=12, batch_size=7, workers=workers)

    assert sorted(b.unit for b in batches if b.last) == list(range(units))
    for batch in batches:
        assert batch.images.dtype == np.uint8 and batch.images.shape == (len(batch.ids), 3, 12, 12)
        assert len(batch.ids) == len(batch.labels) <= 7
    for unit in range(units):
        own = [b for b in batches if b.unit == unit]
        assert own[-1].last and not any(b.last for b in own[:-1])
        assert [len(b.ids) for b in own[:-1]] == [7] * (len(own) - 1)  # only the last batch is short
        assert {i.source for b in own for i in b.ids} <= {sources.units[unit].name} | set(sources.units[unit].files)
    assert len(ids) == len(set(ids)) == 96


def test_a_unit_without_images_still_ends_with_an_empty_last_batch(tmp_path):
    shard = _write_tar(tmp_path / "labels.tar", [("a.cls", b"0"), ("b.cls", b"1")])

    batches, ids, skipped = _collect(resolve_sources([shard]), resolution=8)

    assert len(batches) == 1 and batches[0].last
    assert batches[0].images.shape == (0, 3, 8, 8) and ids == []
    assert [s.id.key for s in skipped] == ["a", "b"]


def test_chosen_units_only(four_shards):
    sources = resolve_sources([four_shards[0].parent])

    batches, ids, _ = _collect(sources, unit_indices=[1, 3], workers=0)
    nothing, _, _ = _collect(sources, unit_indices=[])

    assert {b.unit for b in batches} == {1, 3}
    assert {i.source for i in ids} == {"shard-000001.tar", "shard-000003.tar"}
    assert nothing == []


# ---------------------------------------------------------------------------------------------
# fingerprints


def test_fingerprint_follows_shard_content_not_location(tmp_path, four_shards):
    copy = tmp_path / "copy" / four_shards[0].name
    copy.parent.mkdir()
    copy.write_bytes(four_shards[0].read_bytes())
    original = resolve_sources([four_shards[0]]).units[0]
    copied = resolve_sources([copy]).units[0]

    assert fingerprint_unit(original) == fingerprint_unit(copied)
    assert fingerprint_unit(original) != fingerprint_unit(resolve_sources([four_shards[1]]).units[0])

    data = bytearray(copy.read_bytes())
    data[600] ^= 0xFF  # one byte of the first image
    copy.write_bytes(bytes(data))
    assert fingerprint_unit(copied) != fingerprint_unit(original)


def test_fingerprint_of_files_covers_names_and_bytes(tmp_path):
    folder = tmp_path / "f"
    synthetic.write_folder(folder, per_class=2, classes=1, size=16)
    unit = resolve_sources([folder]).units[0]
    before = fingerprint_unit(unit)
    assert fingerprint_unit(resolve_sources([folder]).units[0]) == before

    first = folder / unit.files[0]
    first.write_bytes(_encode(_solid(size=(16, 16))))
    assert fingerprint_unit(unit) != before

    renamed = resolve_sources([folder]).units[0]
    changed = fingerprint_unit(renamed)
    first.rename(first.with_name("renamed.png"))
    assert fingerprint_unit(resolve_sources([folder]).units[0]) != changed


def test_fingerprint_of_an_unreadable_file_or_shard_does_not_raise(tmp_path, four_shards):
    folder = tmp_path / "f"
    synthetic.write_folder(folder, per_class=2, classes=1, size=16)
    files = resolve_sources([folder]).units[0]
    shard = resolve_sources([four_shards[0]]).units[0]
    before = fingerprint_unit(files), fingerprint_unit(shard)

    (folder / files.files[0]).unlink()  # the scan reports it as skipped; the fingerprint must not crash
    four_shards[0].unlink()
    after = fingerprint_unit(files), fingerprint_unit(shard)

    assert after[0] != before[0] and after[1] != before[1]
    assert (fingerprint_unit(files), fingerprint_unit(shard)) == after

