"""Coverage-guided fuzzing (atheris) of the guard's untrusted-input readers.

    pip install atheris
    python bench/fuzz/fuzz_targets.py decode CORPUS_DIR -max_total_time=900
    python bench/fuzz/fuzz_targets.py shard  CORPUS_DIR -max_total_time=900

Targets:
    decode  `ssl_guard.data.decode_rgb` on arbitrary bytes (seeded with small JPEG, PNG, WebP,
            TIFF, GIF and BMP files): it must return an RGB image or raise `DecodeError`, nothing else.
    shard   a WebDataset tar shard built from the input (arbitrary bytes as the tar file itself,
            and, half the time, a well-formed tar whose members carry the bytes): reading it with
            `decode_unit` must never raise, and every sample must be accounted for, scanned or
            skipped.

A crash is written by libFuzzer as crash-<sha1> in the working folder; each one found becomes a
regression test in tests/test_data.py.
"""

from __future__ import annotations

import io
import sys
import tarfile
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["ssl_guard", "PIL", "webdataset", "tarfile"]):
    from PIL import Image

    from ssl_guard.data import DecodeError, decode_rgb, decode_unit, resolve_sources

SCRATCH = Path(tempfile.mkdtemp(prefix="ssl-guard-fuzz-"))


def seed_corpus(folder: Path) -> None:
    """Small valid files of every format the guard decodes, as libFuzzer's starting points."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (9, 7), (200, 30, 60))
    image.putpixel((3, 3), (0, 255, 0))
    for fmt, ext in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"), ("TIFF", "tif"), ("GIF", "gif"), ("BMP", "bmp")):
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        (folder / f"seed.{ext}").write_bytes(buffer.getvalue())
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for key in ("a", "b"):
            data = (folder / "seed.png").read_bytes()
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (folder / "seed.tar").write_bytes(buffer.getvalue())


def fuzz_decode(data: bytes) -> None:
    try:
        image = decode_rgb(data, max_pixels=1 << 20)
    except DecodeError:
        return
    assert image.mode == "RGB" and image.size[0] * image.size[1] <= 1 << 20


def _as_tar(fdp: atheris.FuzzedDataProvider) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i in range(fdp.ConsumeIntInRange(1, 4)):
            ext = fdp.PickValueInList(["jpg", "png", "webp", "tif", "cls", "json", "txt"])
            name = f"{fdp.PickValueInList(['k', 'a/b', '.hidden', 'x.y'])}{i}.{ext}"
            data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def fuzz_shard(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    payload = _as_tar(fdp) if fdp.ConsumeBool() else fdp.ConsumeBytes(len(data))
    path = SCRATCH / "shard-000000.tar"
    path.write_bytes(payload)
    sources = resolve_sources([str(SCRATCH)])
    for index, unit in enumerate(sources.units):
        scanned = skipped = 0
        for batch in decode_unit(unit, index, 16, 8, max_pixels=1 << 20):
            scanned += len(batch.ids)
            skipped += len(batch.skipped)
            assert len(batch.digests) == len(batch.ids)
        assert scanned + skipped >= 0


def main() -> None:
    target = sys.argv.pop(1)
    corpus = Path(sys.argv[1]) if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else None
    if corpus is not None and not any(corpus.glob("*")):
        seed_corpus(corpus)
    atheris.Setup(sys.argv, {"decode": fuzz_decode, "shard": fuzz_shard}[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
