"""The DALI backend's external source: a picklable callable that hands DALI one batch of stored images.

It runs in DALI's Python worker processes (parallel external source, batch mode), so it imports
neither torch nor DALI: only the shard reader, the epoch plan and the one sampler. DALI calls it
with a BatchInfo (epoch_idx counts DALI epochs since the pipeline was built, iteration the batch
within it); the loader builds the pipeline for a first (epoch, start batch) and lets DALI epoch k
be our epoch first_epoch + k from batch 0, rebuilding it when asked for anything else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alexrepro.data.split import SplitDataset
from alexrepro.loaders.batch_read import read_batch
from alexrepro.loaders.order import BatchPlan, rank_batch
from alexrepro.process import lifetime
from alexrepro.recipe import DataConfig

_bound: int | None = None  # the DALI worker process this module has bound to its parent


def _bind_worker(parent: int) -> None:
    """DALI has no worker initialiser: bind its worker at its first batch (lifetime.init_loader_worker)."""
    global _bound
    lifetime.init_loader_worker(parent)
    _bound = os.getpid()


def nonempty_batches(plan: BatchPlan) -> int:
    """Batches in which this rank gets at least one image (all but possibly the kept last one)."""
    nb = plan.num_batches
    if nb == 0:
        return 0
    lo, hi = plan.rank_bounds(plan.batch_length(nb - 1))
    return nb - 1 if hi == lo else nb


@dataclass
class ShardSource:
    """Batch-mode source: (stored images, crop corners [y, x], flips, labels, α) of this rank's slice."""

    split: SplitDataset
    plan: BatchPlan
    data: DataConfig
    first_epoch: int
    first_start: int
    parent: int = field(default_factory=os.getpid)  # the process that built the pipeline

    def __call__(self, info: Any) -> tuple[list[np.ndarray], ...]:
        if os.getpid() not in (self.parent, _bound):  # first call in a DALI worker (forked or spawned)
            _bind_worker(self.parent)
        epoch_idx, iteration = int(info.epoch_idx), int(info.iteration)
        epoch = self.first_epoch + epoch_idx
        batch = (self.first_start if epoch_idx == 0 else 0) + iteration
        if batch >= nonempty_batches(self.plan):
            raise StopIteration
        # evaluation: the preset's views are constants of the pipeline; the centre params only fill the slots
        idx, p = rank_batch(self.plan, self.data, epoch, batch)
        stored = read_batch(self.split, idx)  # one pread per run of adjacent images in a shard
        labels = self.split.labels[idx]
        return (
            stored,
            [np.array([y, x], dtype=np.int32) for y, x in zip(p.y, p.x, strict=True)],
            [np.array(f, dtype=np.int32) for f in p.flip],
            [np.array(v, dtype=np.int64) for v in labels],
            [np.asarray(a, dtype=np.float64) for a in p.alpha],
        )
