"""`alexrepro info`: what a prepared set holds, and `--verify`: read every shard and check it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from alexrepro.errors import WorkFailed
from alexrepro.prepared import IMAGE_SIZE, STATS, decode_jpeg, read_manifest, read_stats
from alexrepro.progress import make_progress

FIRST = 5  # classes and skipped files listed by name
WNID_IN_KEY = re.compile(r"(?:^|/)(n\d{8})(?:\.tar)?/")  # the class folder (or class tar) in a source key


def describe(out: Path) -> dict[str, Any]:
    """A summary of the prepared set in OUT: splits, classes, format, sizes, statistics, skipped files."""
    out = Path(out)
    manifest = read_manifest(out)
    splits = {}
    for name, s in manifest.get("splits", {}).items():
        size = sum((out / e["file"]).stat().st_size for e in s["shards"] if (out / e["file"]).is_file())
        splits[name] = {
            "count": s["count"],
            "skipped": s.get("skipped", 0),
            "shards": len(s["shards"]),
            "bytes": size,
            "layout": s.get("layout", ""),
        }
    classes = manifest.get("classes", [])
    skipped = [f for s in manifest.get("splits", {}).values() for f in s.get("skipped_files", [])]
    info: dict[str, Any] = {
        "out": str(out),
        "source": manifest.get("source"),
        "encoding": manifest.get("encoding"),
        "quality": manifest.get("quality"),
        "image_size": manifest.get("image_size", IMAGE_SIZE),
        "splits": splits,
        "bytes": sum(s["bytes"] for s in splits.values()),
        "classes": {"count": len(classes), "first": classes[:FIRST]},
        "skipped": {"count": manifest.get("skipped", len(skipped)), "first": skipped[:FIRST]},
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


def check_shard(path: Path, expect_count: int, num_classes: int, wnid_index: dict[str, int]) -> list[str]:
    """Problems of one shard: counts, offsets, labels (range, and class folder in the key), images."""
    problems: list[str] = []
    name = path.as_posix()
    if not path.is_file():
        return [f"{name}: missing"]
    try:
        with h5py.File(path, "r") as f:
            labels = f["labels"][:]
            keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in f["keys"][:]]
            count = int(f.attrs["count"])
            encoding = str(f.attrs["encoding"])
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
            problems += _check_images(f, name, encoding, count)
    except (OSError, KeyError, ValueError) as e:
        problems.append(f"{name}: unreadable ({' '.join(str(e).split())})")
    return problems


def _check_images(f: h5py.File, name: str, encoding: str, count: int) -> list[str]:
    shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
    if encoding == "raw":
        images = f["images"]
        if images.shape[1:] != shape or images.shape[0] != count or images.dtype != np.uint8:
            return [f"{name}: images dataset is {images.shape} {images.dtype}, expected ({count}, 256, 256, 3) uint8"]
        return []
    offsets = f["offsets"][:]
    data = f["data"]
    if len(offsets) != count + 1 or offsets[0] != 0 or offsets[-1] != data.shape[0] or np.any(np.diff(offsets) <= 0):
        return [f"{name}: offsets are not 0 ≤ increasing ≤ {data.shape[0]} with {count + 1} entries"]
    problems = []
    block = data[:]
    for i in range(count):
        try:
            img = decode_jpeg(block[offsets[i] : offsets[i + 1]])
            if img.shape != shape:
                problems.append(f"{name}: image {i} decodes to {img.shape}, expected {shape}")
        except (OSError, ValueError, SyntaxError) as e:
            problems.append(f"{name}: image {i} does not decode ({' '.join(str(e).split())})")
    return problems


def verify(out: Path, progress: bool = True) -> dict[str, Any]:
    """Read every shard of every split; raise WorkFailed listing the problems, else return the counts."""
    out = Path(out)
    manifest = read_manifest(out)
    classes = manifest.get("classes", [])
    wnid_index = {c["wnid"]: int(c["index"]) for c in classes}
    splits = manifest.get("splits", {})
    problems: list[str] = []
    checked = {}
    bar = make_progress() if progress else None
    if bar is not None:
        bar.start()
    try:
        for name, s in splits.items():
            task = bar.add_task(f"verify {name}", total=s["count"], unit="images") if bar is not None else None
            total = sum(int(e["count"]) for e in s["shards"])
            if total != s["count"]:
                problems.append(f"{name}: shard counts add up to {total}, manifest says {s['count']}")
            if "found" in s and s["count"] + s.get("skipped", 0) != s["found"]:
                problems.append(f"{name}: {s['count']} written + {s['skipped']} skipped != {s['found']} found")
            for e in s["shards"]:
                problems += check_shard(out / e["file"], int(e["count"]), len(classes), wnid_index)
                if bar is not None:
                    bar.advance(task, int(e["count"]))
            checked[name] = s["count"]
    finally:
        if bar is not None:
            bar.stop()
    if (out / STATS).is_file() and read_stats(out).mean.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        problems.append(f"{STATS}: mean image is not 256×256×3")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise WorkFailed(f"{out} failed verification ({len(problems)} problems): {shown}")
    return {"verified": True, "images": checked}
