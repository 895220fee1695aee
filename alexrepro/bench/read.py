"""Reading stored JPEG bytes in shuffled batches: h5py handles vs plain descriptors with pread (`bench read`).

Both readers run `read_batch` on the same shuffled index order, without decoding and without the
crc32 check; a third, `pread_checked`, is the loaders' own path (pread and each image's crc32
compared), so `checked_vs_pread` is what the check costs. The h5py path
(pread=False) keeps at most `max_open` HDF5 handles per process, least recently used closed first
(shard_files.MAX_OPEN_SHARDS, 256, by default), so with more shards than handles a shuffled batch
reopens shards; the pread path keeps one plain descriptor per shard. ImageNet has ~1,250 shards
against 256 handles; on a small set, `max_open` below its shard count emulates that (e.g. 30 for 150
shards keeps ImageNet's ratio of about 1 handle in 5 shards). The readers take turns for `rounds`
rounds and the best round of each counts (the first round also pays every first open).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from alexrepro.data import shard_files
from alexrepro.data.split import open_split
from alexrepro.errors import UserError
from alexrepro.loaders.batch_read import read_batch
from alexrepro.progress import make_progress


def shuffled_batches(n: int, batches: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """`batches` batches of indices from back-to-back random permutations of range(n) (epochs)."""
    rng = np.random.default_rng(seed)
    need = batches * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(-(-need // n))])[:need]
    return np.split(order, batches)


def _jpeg_split(out: Path, split: str) -> Any:
    """The split of a JPEG set, with at least one image (a UserError otherwise)."""
    ds = open_split(out, split)
    if ds.encoding != "jpeg":
        raise UserError(f"{out} stores raw arrays; bench read compares the readers of JPEG shards "
                        "(prepare a set with alexrepro prep --encoding jpeg)")
    if len(ds) == 0:
        raise UserError(f"{out} has no {split} images to read")
    return ds


def bench_read(
    out: Path,
    split: str = "train",
    batches: int = 50,
    batch_size: int = 128,
    max_open: int = shard_files.MAX_OPEN_SHARDS,
    rounds: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """images/s of stored-byte batch reads through h5py handles (at most `max_open`) and through pread."""
    for flag, value in (("--batches", batches), ("--batch-size", batch_size), ("--max-open", max_open),
                        ("--rounds", rounds)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    ds = _jpeg_split(out, split)
    order = shuffled_batches(len(ds), batches, batch_size, seed)
    readers: dict[str, Callable[[np.ndarray], list[np.ndarray]]] = {
        "h5py": lambda idx: read_batch(ds, idx, pread=False, check=False),
        "pread": lambda idx: read_batch(ds, idx, check=False),
        "pread_checked": lambda idx: read_batch(ds, idx),  # the loaders' path: each image's crc32 compared
    }
    best = {name: float("inf") for name in readers}
    saved_cap = shard_files.MAX_OPEN_SHARDS
    shard_files.MAX_OPEN_SHARDS = max_open  # the h5py path's handle cap, for this run only
    try:
        with make_progress(transient=True) as progress:
            task = progress.add_task("shuffled batch reads", total=rounds * len(readers) * batches, unit="batches")
            for _ in range(rounds):
                for name, read in readers.items():
                    t0 = time.perf_counter()
                    for idx in order:
                        read(idx)
                        progress.advance(task)
                    best[name] = min(best[name], time.perf_counter() - t0)
        # untimed: both readers must hand over the same bytes for the order they were timed on
        identical = all(
            [a.tobytes() for a in readers["h5py"](idx)] == [b.tobytes() for b in readers["pread"](idx)]
            for idx in order
        )
    finally:
        shard_files.MAX_OPEN_SHARDS = saved_cap
        for shard in ds.shards:
            shard.close()

    images = batches * batch_size
    sizes = np.concatenate([np.diff(sh.offsets) for sh in ds.shards])  # stored bytes of every image
    megabytes = float(sizes[np.concatenate(order)].sum()) / 1e6
    rates = {name: {"seconds": round(s, 6), "images_per_s": round(images / s, 1),
                    "mb_per_s": round(megabytes / s, 1)} for name, s in best.items()}
    shard_of = np.searchsorted(ds.starts, np.concatenate(order), side="right") - 1
    touched = np.mean([len(np.unique(b)) for b in np.split(shard_of, batches)])
    return {
        "split": split, "images_in_split": len(ds), "shards": len(ds.shards), "batches": batches,
        "batch_size": batch_size, "rounds": rounds, "max_open": max_open,
        "descriptor_cap": shard_files.descriptor_cap(), "shards_per_batch": round(float(touched), 1),
        "readers": rates, "pread_vs_h5py": round(best["h5py"] / best["pread"], 3),
        "checked_vs_pread": round(best["pread"] / best["pread_checked"], 3), "identical": identical,
    }
