"""One timed run of a loader, or of a loader cut short at a stage, with what the host did meanwhile.

A run times `count` batches after the first one and reports, besides images/s: the first batch's time
(worker start-up, pipeline build, cold reads), the spread of the batch intervals, the CPU cores busy
(this process and its workers, every other process, the whole machine) and the share of the split's
shards in the page cache when it started. `alexrepro bench loader` (alexrepro.bench.loader) runs them.

Stages: "read" hands out the stored bytes only, "decode" adds the JPEG decoding, "crop" (DALI) adds
the crop and mirror inside the pipeline, "full" is the loader training uses (every step of §4.1 and
the mean subtraction, on the device).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from alexrepro.bench.host import CpuMeter, evict, page_cache_fraction
from alexrepro.data.split import SplitDataset
from alexrepro.loaders.base import Loader
from alexrepro.loaders.batch_read import decoded, read_batch
from alexrepro.progress import make_progress

TORCH_STAGES = ("read", "decode", "full")
DALI_STAGES = ("read", "decode", "crop", "full")


def shard_paths(loader: Loader) -> list[str]:
    """The files of the split this loader reads."""
    return [str(s.path) for s in loader.dataset.shards]


def time_stream(make: Callable[[], Iterator[Any]], count: int, label: str, size: Callable[[Any], int],
                device: torch.device, paths: list[str], cold: bool = False) -> dict[str, Any]:
    """images/s over `count` batches after the first, the first batch's seconds, batch intervals, CPU use.

    cold: drop the shards from the page cache first. The clock starts before the stream is made, so
    first_batch_s holds worker start-up and pipeline building.
    """
    if cold:
        evict(paths)
    cache = page_cache_fraction(paths)
    # forked workers inherit this thread's CPU mask: a library that narrowed it would slow the next loader
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    t0 = time.perf_counter()
    stream = make()
    next(stream)
    first = time.perf_counter() - t0
    meter = CpuMeter().start()
    images, gaps, last = 0, [], time.perf_counter()
    started = last
    with make_progress(transient=True) as progress:
        task = progress.add_task(label, total=count, unit="batches")
        for _ in range(count):
            try:
                batch = next(stream)
            except StopIteration:
                break
            images += size(batch)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            progress.advance(task)
    if images and device.type == "cuda":  # the last batch's copies and kernels may still be queued
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    cpu = meter.stop()
    ms = np.array(gaps) * 1e3 if gaps else np.zeros(1)
    # seconds to 6 significant figures, not 4 decimals: a short pass (a few ms on a small set) keeps the
    # precision its images/s was computed with
    return {"images": images, "seconds": float(f"{seconds:.6g}"), "images_per_s": round(images / seconds, 1) if seconds else 0.0,
            "first_batch_s": round(first, 4), "page_cache_before": cache, "affinity_cpus": affinity,
            "batch_ms": {"p50": round(float(np.percentile(ms, 50)), 3), "p90": round(float(np.percentile(ms, 90)), 3),
                         "max": round(float(ms.max()), 3)},
            "cpu": cpu}


def time_loader(loader: Loader, count: int, label: str, cold: bool = False) -> dict[str, Any]:
    """A run of the loader as training reads it: batches of float images on its device."""
    return time_stream(lambda: iter(loader), count, label, lambda b: int(b[0].shape[0]), loader.spec.device,
                       shard_paths(loader), cold)


def time_dali_stage(loader: Any, stage: str, count: int, cold: bool = False) -> dict[str, Any]:
    """A run of the DALI loader's pipeline stopped at `stage` (read, decode or crop), outputs left in DALI."""
    from alexrepro.loaders.dali_loader import close_pipeline
    from alexrepro.loaders.dali_source import real_count

    pipe = None

    def make() -> Iterator[Any]:
        nonlocal pipe
        pipe = loader.stage_pipeline(stage)
        while True:
            yield pipe.run()

    try:
        return time_stream(make, count, f"dali: {stage}", lambda out: real_count(out[1].as_array()), loader.spec.device,
                           shard_paths(loader), cold)
    finally:
        if pipe is not None:
            close_pipeline(pipe)


class StageDataset(Dataset):
    """The PyTorch loader's worker side cut short: read a batch's stored images (and decode them), hand back counts."""

    def __init__(self, split: SplitDataset, stage: str) -> None:
        self.split, self.stage = split, stage

    def __len__(self) -> int:
        return len(self.split)

    def __getitems__(self, items: list[tuple]) -> dict[str, np.ndarray]:
        idx = np.array([int(it[0]) for it in items], dtype=np.int64)
        stored = read_batch(self.split, idx)  # one pread per run of adjacent images, crc32 checked: as training
        if self.stage == "decode":
            for i, s in zip(idx, stored, strict=True):
                decoded(self.split, int(i), s)
        return {"images": np.array([len(idx)]), "bytes": np.array([sum(int(s.nbytes) for s in stored)])}


def time_torch_stage(loader: Any, stage: str, count: int, cold: bool = False) -> dict[str, Any]:
    """A run of the PyTorch loader's DataLoader (same workers, sampler, pinning) stopped at `stage`."""
    dataloader = loader.data_loader(StageDataset(loader.dataset, stage))
    try:
        return time_stream(lambda: iter(dataloader), count, f"torch: {stage}", lambda b: int(b["images"].sum()),
                           torch.device("cpu"), shard_paths(loader), cold)
    finally:
        it = getattr(dataloader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
