"""`alexrepro info`: what a prepared set holds, and `--verify`: read every shard and check it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from alexrepro.data.manifest import SplitEntry, read_manifest
from alexrepro.data.shards import (
    CHECKSUMS,
    IMAGE_SIZE,
    READABLE_VERSIONS,
    decode_jpeg,
    image_checksums,
    stored_checksums,
)
from alexrepro.data.stats_file import STATS, read_stats
from alexrepro.errors import UserError, WorkFailed
from alexrepro.progress import console, make_progress

FIRST = 5  # classes and skipped files listed by name
WNID_IN_KEY = re.compile(r"(?:^|/)(n\d{8})(?:\.tar)?/")  # the class folder (or class tar) in a source key
# Raw images per read in the checksum pass: one h5py call for 64 × 192 KiB = 12 MiB, not one per image.
RAW_BLOCK = 64


@dataclass
class ShardCheck:
    """What checking one shard found."""

    problems: list[str] = field(default_factory=list)
    checksummed: int = 0  # images whose stored bytes were compared with their crc32
    without_checksums: bool = False  # a readable format version 1 shard: it has no crc32 to compare


def describe(out: Path) -> dict[str, Any]:
    """A summary of the prepared set in OUT: splits, classes, format, sizes, statistics, skipped files."""
    out = Path(out)
    manifest = read_manifest(out)
    splits = {}
    for name, split in manifest.splits.items():
        size = sum((out / shard.file).stat().st_size for shard in split.shards if (out / shard.file).is_file())
        splits[name] = {"count": split.count, "skipped": split.skipped, "shards": len(split.shards), "bytes": size,
                        "layout": split.layout}
    classes = manifest.class_list()
    skipped = [file.to_payload() for split in manifest.splits.values() for file in split.skipped_files]
    info: dict[str, Any] = {
        "out": str(out),
        "source": manifest.source,
        "format_version": manifest.format_version,  # of the prep that wrote the manifest
        "encoding": manifest.encoding,
        "quality": manifest.quality,
        "image_size": manifest.image_size,
        "resize": manifest.resize,
        "splits": splits,
        "bytes": sum(s["bytes"] for s in splits.values()),
        "classes": {"count": len(classes), "first": classes[:FIRST]},
        "skipped": {"count": manifest.skipped, "first": skipped[:FIRST]},
        "mean": None,
        "pca": None,
    }
    if (out / STATS).is_file():
        stats = read_stats(out)
        info["mean"] = {"channel_mean": [float(v) for v in stats.channel_mean], "pixel_count": stats.pixel_count,
                        "scale": stats.scale}
        if stats.eigval is not None:
            info["pca"] = {"eigval": stats.eigval.tolist(), "eigvec": stats.eigvec.tolist(), "scale": stats.scale}
    return info


def check_shard(path: Path, expect_count: int, num_classes: int, wnid_index: dict[str, int]) -> ShardCheck:
    """Check one shard: counts, offsets, labels (range, and class folder in the key), checksums, images."""
    result = ShardCheck()
    problems = result.problems
    name = path.as_posix()
    if not path.is_file():
        problems.append(f"{name}: missing")
        return result
    try:
        with h5py.File(path, "r") as f:
            labels = f["labels"][:]
            keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in f["keys"][:]]
            count = int(f.attrs["count"])
            encoding = str(f.attrs["encoding"])
            version = int(f.attrs.get("format_version", 1))
            if version not in READABLE_VERSIONS:
                problems.append(f"{name}: format version {version}, this alexrepro reads "
                                f"{', '.join(map(str, READABLE_VERSIONS))}")
                return result
            if not count == len(labels) == len(keys) == expect_count:
                problems.append(f"{name}: count {count}, {len(labels)} labels, {len(keys)} keys, "
                                f"manifest says {expect_count}")
            bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
            if len(bad):
                problems.append(f"{name}: {len(bad)} labels outside 0..{num_classes - 1} (first at {int(bad[0])})")
            for i, key in enumerate(keys[: len(labels)]):
                m = WNID_IN_KEY.search(key)
                if m and m[1] in wnid_index and labels[i] != wnid_index[m[1]]:
                    problems.append(f"{name}: image {i} ({key}) labelled {int(labels[i])}, its class folder "
                                    f"{m[1]} is {wnid_index[m[1]]}")
            checksums = stored_checksums(f)
            if checksums is None and version >= 2:
                problems.append(f"{name}: no {CHECKSUMS} dataset, which every format version {version} shard holds")
            elif checksums is not None and checksums.shape != (count,):
                problems.append(f"{name}: {CHECKSUMS} has shape {checksums.shape}, expected ({count},)")
                checksums = None
            result.without_checksums = checksums is None and version == 1
            image_problems, result.checksummed = _check_images(f, name, encoding, count, keys, checksums)
            problems += image_problems
    except (OSError, KeyError, ValueError) as e:
        problems.append(f"{name}: unreadable ({' '.join(str(e).split())})")
    return result


def _check_images(
    f: h5py.File, name: str, encoding: str, count: int, keys: list[str], checksums: np.ndarray | None
) -> tuple[list[str], int]:
    """The shard's image problems, and how many images had their bytes compared with their checksum."""
    from PIL import UnidentifiedImageError  # PIL loads when images are checked, not for every CLI start

    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    problems: list[str] = []

    def image_problem(i: int, reason: str) -> str:
        return f"{name}: image {i} ({keys[i] if i < len(keys) else 'no key'}) {reason}"

    def compare(start: int, got: np.ndarray) -> None:
        for j in np.flatnonzero(got != checksums[start : start + len(got)]):
            i = start + int(j)
            problems.append(image_problem(i, f"checksum mismatch (stored crc32 {int(checksums[i]):08x}, "
                                             f"its bytes give {int(got[j]):08x})"))

    if encoding == "raw":
        images = f["images"]
        if images.shape[1:] != shape or images.shape[0] != count or images.dtype != np.uint8:
            problems.append(f"{name}: images dataset is {images.shape} {images.dtype}, expected ({count}, 256, 256, 3) "
                            "uint8")
            return problems, 0
        if checksums is None:
            return problems, 0
        for start in range(0, count, RAW_BLOCK):
            compare(start, image_checksums(images[start : start + RAW_BLOCK]))
        return problems, count
    offsets = f["offsets"][:]
    data = f["data"]
    if len(offsets) != count + 1 or offsets[0] != 0 or offsets[-1] != data.shape[0] or np.any(np.diff(offsets) <= 0):
        problems.append(f"{name}: offsets are not 0 ≤ increasing ≤ {data.shape[0]} with {count + 1} entries")
        return problems, 0
    block = data[:]  # the whole shard's bytes in one read, for the checksums and the decode alike
    encoded = [block[offsets[i] : offsets[i + 1]] for i in range(count)]
    if checksums is not None:
        compare(0, image_checksums(encoded))
    for i, stored in enumerate(encoded):
        try:
            img = decode_jpeg(stored)
            if img.shape != shape:
                problems.append(image_problem(i, f"decodes to {img.shape}, expected {shape}"))
        except (OSError, ValueError, SyntaxError) as e:
            reason = "not an image" if isinstance(e, UnidentifiedImageError) else " ".join(str(e).split())
            problems.append(image_problem(i, f"does not decode ({reason})"))
    return problems, 0 if checksums is None else count


def verify(out: Path, progress: bool = True, raise_on_problems: bool = True) -> dict[str, Any]:
    """Read every shard of every split; raise WorkFailed listing the problems (or, with
    raise_on_problems=False, return them under "problems" with "verified" False), else return the counts."""
    out = Path(out)
    manifest = read_manifest(out)
    wnid_index = {c.wnid: c.index for c in manifest.classes}
    problems: list[str] = []
    checked: dict[str, int] = {}
    checksummed: dict[str, int] = {}
    shards = without = 0  # shards read, and those of them (format version 1) without checksums
    with make_progress(show=progress) as bar:
        for name, split in manifest.splits.items():
            task = bar.add_task(f"verify {name}", total=split.count, unit="images")
            problems += _split_count_problems(name, split)
            checksummed[name] = 0
            for shard in split.shards:
                result = check_shard(out / shard.file, shard.count, len(manifest.classes), wnid_index)
                problems += result.problems
                checksummed[name] += result.checksummed
                shards += 1
                without += result.without_checksums
                bar.advance(task, shard.count)
            checked[name] = split.count
    notes = [_no_checksums_note(without, shards, manifest.encoding)] if without else []
    for note in notes:
        console.print(f"note: {note}")
    if (out / STATS).is_file():
        try:
            read_stats(out)  # every dataset's shape, type and values
        except UserError as e:
            problems.append(str(e))
    report = {"verified": not problems, "images": checked, "checksummed": checksummed, "notes": notes,
              "problems": problems}
    if problems and raise_on_problems:
        raise verification_failed(out, problems)
    return report


def _split_count_problems(name: str, split: SplitEntry) -> list[str]:
    """Whether the manifest's counts of a split add up: its shards to its count, written + skipped to found."""
    problems = []
    total = sum(shard.count for shard in split.shards)
    if total != split.count:
        problems.append(f"{name}: shard counts add up to {total}, manifest says {split.count}")
    if split.found is not None and split.count + split.skipped != split.found:
        problems.append(f"{name}: {split.count} written + {split.skipped} skipped != {split.found} found")
    return problems


def verification_failed(out: Path, problems: list[str]) -> WorkFailed:
    """The one-line failure: how many problems, the first ten of them."""
    shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
    return WorkFailed(f"{out} failed verification ({len(problems)} problems): {shown}")


def _no_checksums_note(without: int, shards: int, encoding: str) -> str:
    """The one line a set with format version 1 shards gets: what was not checked, and how to get it checked."""
    checked = "only checked by decoding them" if encoding == "jpeg" else "not checked"
    return (f"{without} of {shards} shards were written by format version 1 and hold no per-image checksums, so "
            f"their image bytes were {checked}; for byte-level checks prepare the set again into a new OUT "
            "(a prep into this OUT resumes and keeps those shards)")
