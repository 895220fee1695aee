"""Prep throughput: our per-image path beside a plain torchvision baseline, and 1 vs 2 workers.

Run as `alexrepro bench prep SRC [--limit N] [--workers N]`.
The baseline is what a plain script does: PIL open → RGB → torchvision Resize(256) → CenterCrop(256) →
save JPEG quality 95. Both run on the same source bytes, already in memory (no disk in the timing).
"""

from __future__ import annotations

import io
import multiprocessing
import time
from pathlib import Path
from typing import Any

from alexrepro.data.imaging import BadImage, prepare_image
from alexrepro.data.options import JPEG_QUALITY
from alexrepro.data.shards import IMAGE_SIZE
from alexrepro.data.sources import find_sources, read_item
from alexrepro.errors import UserError


def load_sample(src: Path, limit: int) -> list[bytes]:
    """Up to `limit` source images' bytes, spread evenly over every split's sorted listing."""
    source = find_sources(Path(src))
    items = [it for split in source.splits.values() for it in split.items]
    step = max(1, len(items) // max(1, limit))
    return [read_item(it) for it in items[::step][:limit]]


def baseline_one(data: bytes) -> bytes:
    """The plain path: PIL → RGB → Resize(256) → CenterCrop(256) → JPEG q95."""
    from PIL import Image
    from torchvision import transforms

    image = Image.open(io.BytesIO(data)).convert("RGB")
    image = transforms.CenterCrop(IMAGE_SIZE)(transforms.Resize(IMAGE_SIZE)(image))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def ours_one(data: bytes) -> bytes:
    return prepare_image(data, "jpeg", JPEG_QUALITY)  # type: ignore[return-value]


def _usable(sample: list[bytes]) -> list[bytes]:
    good = []
    for data in sample:
        try:
            baseline_one(data)
            ours_one(data)
            good.append(data)
        except (BadImage, OSError, ValueError):
            pass  # broken files are not what we time
    return good


def _rates(fns: dict[str, Any], sample: list[bytes], repeat: int) -> dict[str, float]:
    """Images per second of each fn over the sample: passes interleaved, best pass kept (a busy machine)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            started = time.perf_counter()
            for data in sample:
                fn(data)
            best[name] = min(best[name], time.perf_counter() - started)
    return {name: len(sample) / seconds for name, seconds in best.items()}


def _ours_chunk(chunk: list[bytes]) -> int:
    for data in chunk:
        ours_one(data)
    return len(chunk)


def _pool_rate(sample: list[bytes], workers: int) -> float:
    """Images per second of our path in a spawn pool of `workers` (pool start-up not timed)."""
    ctx = multiprocessing.get_context("spawn")
    chunks = [sample[i : i + 8] for i in range(0, len(sample), 8)]
    with ctx.Pool(workers) as pool:
        pool.map(_ours_chunk, chunks[:workers])  # warm up: imports, first decode
        started = time.perf_counter()
        images = sum(pool.map(_ours_chunk, chunks, chunksize=1))
        return images / (time.perf_counter() - started)


def bench_prep(src: Path, limit: int = 200, workers: int = 2, repeat: int = 5) -> dict[str, Any]:
    """Images/s per core of our per-image path vs the plain baseline; and 1 vs `workers` processes."""
    from PIL import Image

    if limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    sample = _usable(load_sample(src, limit))
    if not sample:
        raise UserError(f"no readable image in {src}; point bench prep at an ImageNet-layout source (alexrepro synth makes one)")
    sides = sorted(min(Image.open(io.BytesIO(d)).size) for d in sample)
    rates = _rates({"baseline": baseline_one, "ours": ours_one}, sample, repeat)
    base, ours = rates["baseline"], rates["ours"]
    one = _pool_rate(sample, 1)
    many = _pool_rate(sample, workers) if workers > 1 else one
    return {
        "images": len(sample),
        "shorter_side_median": sides[len(sides) // 2],
        "baseline_images_per_s_per_core": round(base, 1),
        "ours_images_per_s_per_core": round(ours, 1),
        "speedup_per_core": round(ours / base, 3),
        "target_speedup": 1.3,
        "workers": workers,
        "pool_images_per_s": {"1": round(one, 1), str(workers): round(many, 1)},
        "scaling_efficiency": round(many / (one * workers), 3),
    }
