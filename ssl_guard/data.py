"""Image sources: folders and WebDataset shards, streamed with stable sample ids.

A dataset is a list of *units*: a WebDataset shard, or a fixed-size group of files of an image
folder. The unit is the granularity of work splitting (DataLoader workers, `torchrun` ranks) and of
resuming an interrupted scan. Every sample is named by a `SampleId(source, key)`: the shard (or file)
path relative to the dataset root plus the WebDataset `__key__` (for folders, the file path without
its extension). Row numbers never name a sample.

Decoding never stops a scan: an undecodable, oversized or image-less sample becomes a `Skipped`
record with its id and reason, carried alongside the images so that it is counted and reported.
"""

from __future__ import annotations

import glob
import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ssl_guard.errors import DataNotFoundError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LABEL_EXTENSIONS = ("cls", "label", "class")
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_FILES_PER_UNIT = 1_000
# PIL format names tried when decoding ("JPEG" also opens the multi-picture MPO files of cameras)
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "PPM", "GIF")


@dataclass(frozen=True, order=True)
class SampleId:
    """A sample's stable name: `source` (shard or file, relative to the root) and `key`."""

    source: str
    key: str


@dataclass(frozen=True)
class Skipped:
    """A sample (or a whole shard) that could not be read, and why."""

    id: SampleId
    reason: str


@dataclass(frozen=True)
class Unit:
    """One shard, or one group of files of a folder: the unit of splitting and resuming.

    `name` is stable across runs: the shard path relative to the root, or `<dir>#<n>` for the n-th
    group of files of a folder.
    """

    name: str
    kind: str  # "shard" or "files"
    root: str
    url: str = ""  # shards: what webdataset opens
    files: tuple[str, ...] = ()  # files: paths relative to root


@dataclass(frozen=True)
class Sources:
    """Resolved dataset: its root folder and units, in a deterministic order."""

    root: str
    units: tuple[Unit, ...]

    def __len__(self) -> int:
        return len(self.units)


# ---------------------------------------------------------------------------------------------
# Resolving user specs into units


def _is_shard(name: str) -> bool:
    return name.lower().endswith(SHARD_SUFFIXES)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _expand_spec(spec: str) -> list[str]:
    """A spec as a list of concrete paths or URLs: brace patterns and globs expanded."""
    from braceexpand import braceexpand

    if "://" in spec or spec.startswith("pipe:"):
        return list(braceexpand(spec))
    paths: list[str] = []
    for expanded in braceexpand(spec):
        # a path that exists as written is taken literally: "photos [2020]" is a folder, not a glob
        if any(ch in expanded for ch in "*?[") and not os.path.exists(expanded):
            paths.extend(sorted(glob.glob(expanded)))
        else:
            paths.append(expanded)
    return paths


def resolve_sources(specs: Sequence[str | os.PathLike], files_per_unit: int = DEFAULT_FILES_PER_UNIT) -> Sources:
    """Resolve folders, shard files, shard folders and brace patterns into `Sources`.

    The root is the deepest folder containing every input, so that sample ids stay short and do not
    depend on where the command was run from. Overlapping specs (a folder and a subfolder or file
    of it, one shard named twice) give each sample a single unit.

    Raises:
        DataNotFoundError: a spec that matches nothing on disk.
    """
    if not specs:
        raise DataNotFoundError("no dataset given", "pass an image folder, a .tar shard or a pattern")
    shards: list[Path] = []
    remote: list[str] = []
    folders: list[Path] = []
    loose_files: list[Path] = []
    for spec in specs:
        spec = str(spec)
        expanded = _expand_spec(spec)
        if not expanded:
            raise DataNotFoundError(f"{spec} matches no file", "check the path or the brace pattern")
        for item in expanded:
            if "://" in item or item.startswith("pipe:"):
                remote.append(item)
                continue
            path = Path(item)
            if path.is_dir():
                inner = sorted(p for p in path.rglob("*") if p.is_file() and _is_shard(p.name))
                if inner:
                    shards.extend(p.resolve() for p in inner)
                else:
                    folders.append(path.resolve())
            elif path.is_file() and _is_shard(path.name):
                shards.append(path.resolve())
            elif path.is_file() and _is_image(path.name):
                # the file keeps its own name even when it is a link: only its folder is resolved
                loose_files.append(path.parent.resolve() / path.name)
            elif path.exists():
                raise DataNotFoundError(f"{item} is neither an image folder, an image nor a .tar shard")
            else:
                raise DataNotFoundError(f"{item} does not exist", "check the path or the brace pattern")

    # Overlapping specs (a folder and a subfolder or file of it, a shard named twice) must not
    # give a sample two units: its id would be scanned and reported twice.
    folders = sorted(set(folders))
    folders = [f for f in folders if not any(other in f.parents for other in folders)]
    loose_files = sorted({f for f in loose_files if not any(folder in f.parents for folder in folders)})
    local = [s.parent for s in shards] + folders + [f.parent for f in loose_files]
    root = Path(os.path.commonpath([str(p) for p in local])) if local else Path(".").resolve()

    units: list[Unit] = []
    for shard in sorted(set(shards)):
        rel = shard.relative_to(root).as_posix()
        units.append(Unit(name=rel, kind="shard", root=str(root), url=str(shard)))
    for url in dict.fromkeys(remote):
        units.append(Unit(name=url, kind="shard", root=str(root), url=url))
    for folder in folders:
        # files are named by their path under the folder, not resolved: a linked file stays inside
        files = sorted(p.relative_to(root).as_posix() for p in folder.rglob("*") if p.is_file() and _is_image(p.name))
        units.extend(_group_files(folder.relative_to(root).as_posix(), files, str(root), files_per_unit))
    if loose_files:
        files = [f.relative_to(root).as_posix() for f in loose_files]
        units.extend(_group_files(".", files, str(root), files_per_unit))
    return Sources(root=str(root), units=tuple(units))


def _group_files(label: str, files: list[str], root: str, per_unit: int) -> list[Unit]:
    return [
        Unit(name=f"{label}#{start // per_unit:05d}", kind="files", root=root, files=tuple(files[start : start + per_unit]))
        for start in range(0, len(files), per_unit)
    ]


def fingerprint_unit(unit: Unit) -> str:
    """A content fingerprint of a unit: sha256 over its bytes (shards) or its files' names and bytes.

    Remote shards are fingerprinted by URL only, as reading them twice would double the scan's I/O.
    An unreadable file or shard is fingerprinted by its error, so this never raises for one.
    """
    import hashlib

    digest = hashlib.sha256()
    if unit.kind == "shard" and ("://" in unit.url or unit.url.startswith("pipe:")):
        digest.update(unit.url.encode())
    elif unit.kind == "shard":
        _hash_file(unit.url, digest)
    else:
        for rel in unit.files:
            digest.update(rel.encode() + b"\0")
            _hash_file(os.path.join(unit.root, rel), digest)
    return digest.hexdigest()[:32]


def _hash_file(path: str, digest) -> None:
    # An unreadable file is a skipped sample in the scan, so it must not crash the fingerprint
    # either: it contributes a marker that changes once the file can be read again.
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        digest.update(f"\0unreadable errno {error.errno}\0".encode())


# ---------------------------------------------------------------------------------------------
# Raw samples of one unit


@dataclass
class RawSample:
    """Undecoded bytes of one sample, or the reason it has none."""

    id: SampleId
    data: bytes | None
    label: str | None = None
    error: str | None = None


def _label_of(sample: dict) -> str | None:
    for ext in LABEL_EXTENSIONS:
        if ext in sample:
            value = sample[ext]
            return value.decode("utf-8", "replace").strip() if isinstance(value, bytes) else str(value)
    return None


def iter_raw_samples(unit: Unit) -> Iterator[RawSample]:
    """Yield every sample of `unit` as bytes; unreadable ones carry an `error` instead."""
    if unit.kind == "files":
        for rel in unit.files:
            sample_id = SampleId(rel, os.path.splitext(rel)[0])
            try:
                with open(os.path.join(unit.root, rel), "rb") as handle:
                    data = handle.read()
            except OSError as error:
                yield RawSample(sample_id, None, error=f"unreadable file: {error.strerror or error}")
                continue
            # the class of a folder image is its parent folder's name
            parent = os.path.basename(os.path.dirname(rel)) or None
            yield RawSample(sample_id, data, label=parent)
        return
    yield from _iter_shard(unit)


def _image_member(sample: dict) -> str | None:
    """The sample's image member: `jpg`, or the last part of a compound one such as `input.jpg`."""
    members = [ext for ext in sample if not ext.startswith("__")]
    exact = [ext for ext in members if "." + ext in IMAGE_EXTENSIONS]
    compound = [ext for ext in members if "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]
    return (exact or compound or [None])[0]


def _iter_shard(unit: Unit) -> Iterator[RawSample]:
    from webdataset.tariterators import tarfile_samples

    failures: list[str] = []

    def record(error: Exception) -> bool:
        # webdataset appends " @ <stream object>" to the message; the unit already names the shard
        message = str(error.args[0]) if error.args else str(error)
        failure = f"{type(error).__name__}: {message.split(' @ <')[0]}"
        # one broken read is reported by webdataset's tar reader and again by its shard expander
        if failure not in failures:
            failures.append(failure)
        return True  # keep going; the failure is reported below, never dropped

    seen: set[str] = set()  # one shard's keys: bounded by the shard, not the dataset
    for sample in tarfile_samples([{"url": unit.url}], handler=record):
        key = sample.get("__key__", "")
        image_ext = _image_member(sample)
        sample_id = SampleId(unit.name, key)
        if key in seen:
            # webdataset starts a new sample whenever the key changes, so members of one key that
            # are not adjacent come back as a second sample with the same id
            members = ", ".join(sorted(k for k in sample if not k.startswith("__")))
            reason = f"key repeated in the shard, members not adjacent (unread: {members})"
            yield RawSample(sample_id, None, error=reason)
            continue
        seen.add(key)
        if image_ext is None:
            members = sorted(k for k in sample if not k.startswith("__"))
            yield RawSample(sample_id, None, error=f"no image member (has: {', '.join(members) or 'nothing'})")
            continue
        yield RawSample(sample_id, sample[image_ext], label=_label_of(sample))
    if not failures and _lacks_end_marker(unit.url):
        failures.append("truncated shard: it ends without the tar end-of-archive block (cut short after a member)")
    for failure in failures:
        yield RawSample(SampleId(unit.name, "*"), None, error=f"shard read error: {failure}")


COMPRESSED_MAGIC = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz


def _lacks_end_marker(url: str) -> bool:
    """True for a local uncompressed tar cut short between members, which tarfile reads as complete.

    Python's tarfile ends a stream silently at end of file or at a partial header once a member
    was read, so a shard cut there would lose its remaining samples without a trace. A complete
    tar has a zero block right after its last member; a walk over the headers (seeking over the
    data) finds where that block should be. Compressed and remote shards are not checked: a cut
    in them breaks the stream inside a member and is reported as a read error.
    """
    import tarfile

    path = url[len("file:") :] if url.startswith("file:") else url
    if not path.lower().endswith(".tar") or "://" in path or path.startswith("pipe:") or not os.path.isfile(path):
        return False
    try:
        with open(path, "rb") as handle:
            if handle.read(6).startswith(COMPRESSED_MAGIC):
                return False  # a compressed stream under a .tar name: a cut in it is a read error
        with tarfile.open(path, "r:") as tar:
            for _ in tar:
                pass
            end = tar.offset  # just past the last member: where the end-of-archive block belongs
        with open(path, "rb") as handle:
            handle.seek(end)
            block = handle.read(512)
    except (OSError, tarfile.TarError):
        return True
    return len(block) < 512 or any(block)


# ---------------------------------------------------------------------------------------------
# Decoding


class DecodeError(ValueError):
    """An image that cannot be turned into RGB pixels; the message is the user-facing reason."""


def decode_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes to an upright 8-bit RGB image.

    Handles grayscale, palette (with transparency), alpha (composited on white), CMYK, 16-bit and
    EXIF orientation. The pixel count is checked from the header before any pixel is decoded, so a
    decompression bomb costs nothing. Only raster formats are tried (`DECODED_FORMATS`): the data
    is untrusted, and PIL would hand an EPS file to Ghostscript whatever its name.

    PIL's own process-wide bomb check (`Image.MAX_IMAGE_PIXELS`) belongs to the host application
    (this module also runs inside training processes through the guard). When `max_pixels` asks
    for more than it allows, it is raised for the header read of this call only and restored
    before returning, whatever happens.

    Raises:
        DecodeError: unreadable, truncated, not a supported format, or larger than `max_pixels`.
    """
    pil_limit = Image.MAX_IMAGE_PIXELS
    raise_limit = pil_limit is not None and max_pixels > 2 * pil_limit  # PIL refuses above twice its limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if raise_limit:
                Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                image = Image.open(io.BytesIO(data), formats=DECODED_FORMATS)
            finally:
                if raise_limit:
                    Image.MAX_IMAGE_PIXELS = pil_limit
            width, height = image.size
            if width * height > max_pixels:
                raise DecodeError(f"oversized image: {width}x{height} pixels exceeds the limit of {max_pixels}")
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        # PIL's message names the in-memory buffer's address, which differs on every run
        raise DecodeError(f"undecodable image: not a supported image format ({', '.join(DECODED_FORMATS)})") from None
    except Image.DecompressionBombError as error:
        raise DecodeError(f"oversized image: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise DecodeError(f"undecodable image: {error}") from None
    except Exception as error:  # noqa: BLE001
        # Malformed headers and EXIF also surface as struct.error, OverflowError, KeyError, ...
        # from inside PIL; one bad sample must never end a scan.
        raise DecodeError(f"undecodable image: {type(error).__name__}: {error}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def to_square_array(image: Image.Image, resolution: int) -> np.ndarray:
    """Resize the whole image (no crop: a crop could cut a trigger out) to `(3, R, R)` uint8."""
    resized = image.resize((resolution, resolution), Image.BILINEAR)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


@dataclass(frozen=True)
class NativeScale:
    """One scale factor for every photo of a scan, on a square canvas: the view in which a trigger
    pasted at a fixed pixel size (as on ImageNet, whose photos differ in size) has one size in
    every copy. The square cache (`to_square_array`) resizes each photo to R x R, so such copies
    differ in size (and aspect) from photo to photo by as much as the photos do.

    A photo of w x h becomes round(s w) x round(s h), s = `factor` (smaller for the few photos that
    would not fit the canvas), centred on the `canvas` x `canvas` square and padded by reflecting
    its own pixels (a flat border would be content shared by every photo)."""

    factor: float
    canvas: int

    def scale_of(self, width: int, height: int) -> float:
        return min(self.factor, self.canvas / max(width, height, 1))

    def placement(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, w, h): where the photo lies on the canvas."""
        s = self.scale_of(width, height)
        w, h = max(1, min(self.canvas, round(width * s))), max(1, min(self.canvas, round(height * s)))
        return (self.canvas - w) // 2, (self.canvas - h) // 2, w, h

    def array(self, image: Image.Image) -> np.ndarray:
        """`image` on the canvas, `(3, C, C)` uint8."""
        x0, y0, w, h = self.placement(*image.size)
        pixels = np.asarray(image.resize((w, h), Image.BILINEAR), dtype=np.uint8)
        pad = ((y0, self.canvas - h - y0), (x0, self.canvas - w - x0), (0, 0))
        return np.ascontiguousarray(np.pad(pixels, pad, mode="symmetric").transpose(2, 0, 1))


def native_scale(sizes: Sequence[tuple[int, int]], resolution: int) -> NativeScale | None:
    """The scan's `NativeScale`, or None when the square cache already gives every photo one scale.

    The median photo's short side maps to `resolution` (so a median photo is seen at the scale of
    the square cache). The canvas holds the 99th percentile of long sides at that factor, at most
    2 R (4x the pixels); larger photos are shrunk to fit. None when every photo's width and every
    photo's height lie within 2^(1/8) of each other: a fixed-pixel trigger's copies then differ in
    size by less than the half-step of the quarter-octave grid the detectors match scaled copies
    on (`ssl_guard.detect.mine.scoring.SCALES`), and the square cache is used as it is; None too
    when a photo's size is unknown (0, 0: unit files written before sizes were kept)."""
    known = np.array([s for s in sizes if s[0] > 0 and s[1] > 0], dtype=np.float64).reshape(-1, 2)
    if len(known) < len(sizes) or len(known) == 0:  # a photo of unknown size could not be placed
        return None
    spread = known.max(axis=0) / known.min(axis=0)
    if float(spread.max()) <= 2 ** 0.125:
        return None
    factor = resolution / float(np.median(known.min(axis=1)))
    canvas = int(min(2 * resolution, np.ceil(factor * float(np.quantile(known.max(axis=1), 0.99)))))
    return NativeScale(factor=factor, canvas=max(canvas, resolution))


def layout_array(image: Image.Image, layout: int | NativeScale) -> np.ndarray:
    """A decoded photo in the scan's layout: an int R is the square cache, else the native view."""
    return to_square_array(image, layout) if isinstance(layout, int) else layout.array(image)


def layout_side(layout: int | NativeScale) -> int:
    return layout if isinstance(layout, int) else layout.canvas


# ---------------------------------------------------------------------------------------------
# Streaming batches


@dataclass
class UnitBatch:
    """A batch of decoded images from one unit.

    `images` is `(B, 3, R, R)` uint8. `last` marks the unit's final batch, which also carries the
    unit's `skipped` records; a unit always ends with exactly one `last` batch, possibly empty.
    """

    unit: int
    ids: list[SampleId]
    images: np.ndarray
    labels: list[str | None]
    skipped: list[Skipped] = field(default_factory=list)
    last: bool = False
    digests: list[str] = field(default_factory=list)  # sha256 of each sample's stored bytes
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of each decoded photo


def sample_digest(data: bytes) -> str:
    """The content hash a review decision is bound to: sha256 of the sample's stored image bytes."""
    return hashlib.sha256(data).hexdigest()


def decode_unit(unit: Unit, unit_index: int, resolution: int | NativeScale, batch_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> Iterator[UnitBatch]:
    """Decode one unit into `UnitBatch`es of at most `batch_size` images (`resolution`: the
    square side R, or a `NativeScale` for the native view)."""
    ids: list[SampleId] = []
    arrays: list[np.ndarray] = []
    labels: list[str | None] = []
    digests: list[str] = []
    sizes: list[tuple[int, int]] = []
    skipped: list[Skipped] = []

    def flush(last: bool) -> UnitBatch:
        side = layout_side(resolution)
        stacked = np.stack(arrays) if arrays else np.zeros((0, 3, side, side), np.uint8)
        batch = UnitBatch(unit_index, list(ids), stacked, list(labels), list(skipped) if last else [], last, list(digests), list(sizes))
        ids.clear(), arrays.clear(), labels.clear(), digests.clear(), sizes.clear()
        return batch

    for raw in iter_raw_samples(unit):
        if raw.data is None:
            skipped.append(Skipped(raw.id, raw.error or "unreadable"))
            continue
        try:
            image = decode_rgb(raw.data, max_pixels)
        except DecodeError as error:
            skipped.append(Skipped(raw.id, str(error)))
            continue
        ids.append(raw.id)
        arrays.append(layout_array(image, resolution))
        labels.append(raw.label)
        digests.append(sample_digest(raw.data))
        sizes.append(image.size)
        if len(ids) == batch_size:
            yield flush(last=False)
    yield flush(last=True)


def select_units(count: int, rank: int, world: int) -> list[int]:
    """Unit indices owned by `rank` of `world`: a strided split, each unit exactly once."""
    return list(range(rank, count, world))


def stream_batches(
    sources: Sources,
    resolution: "int | NativeScale",
    batch_size: int = 256,
    workers: int = 2,
    unit_indices: Iterable[int] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    multiprocessing_context: str | None = None,
) -> Iterator[UnitBatch]:
    """Decode `sources` (or the chosen units) in DataLoader workers, yielding `UnitBatch`es.

    `multiprocessing_context` ("fork", "spawn", "forkserver" or None for the platform's default)
    starts the workers; the dataset and its collate function pickle, so every method works.

    Decoding memory is bounded: each worker holds at most one batch of one unit (plus the loader's
    prefetch), and nothing is gathered here (what later stages hold is measured in docs/scale.md).
    Units are split across workers, so batches of different units interleave; every unit ends with
    one `last` batch.
    """
    import torch.utils.data

    from ssl_guard.stream import UnitStream, keep_batch

    indices = list(range(len(sources))) if unit_indices is None else list(unit_indices)
    if not indices:
        return
    dataset = UnitStream(sources, indices, resolution, batch_size, max_pixels)
    workers = min(workers, len(indices))
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        collate_fn=keep_batch,
        prefetch_factor=2 if workers else None,
        multiprocessing_context=multiprocessing_context if workers else None,
        persistent_workers=False,
    )
    yield from loader
