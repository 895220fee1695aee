"""The DALI backend's external sources: picklable callables that hand DALI stored images and their draws.

They run in DALI's Python worker processes (parallel external source), so they import neither torch nor
DALI: only the shard reader, the epoch plan and the one sampler. `ShardSource` (batch mode, the default)
is called with a BatchInfo and returns a whole batch: DALI gives each batch to one worker. `SampleSource`
(sample mode, `DaliTuning(per_sample=True)`) is called with a SampleInfo for one image: DALI splits each
batch into one contiguous run of samples per worker, so every worker reads part of every batch. In both,
epoch_idx counts DALI epochs since the pipeline was built and iteration the batch within it; the loader
builds the pipeline for a first (epoch, start batch) and lets DALI epoch k be our epoch first_epoch + k
from batch 0, rebuilding it when asked for anything else.
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

    def _position(self, info: Any) -> tuple[int, int]:
        """(our epoch, global batch) of DALI's call; StopIteration past this rank's last non-empty batch."""
        if os.getpid() not in (self.parent, _bound):  # first call in a DALI worker (forked or spawned)
            _bind_worker(self.parent)
        epoch_idx, iteration = int(info.epoch_idx), int(info.iteration)
        batch = (self.first_start if epoch_idx == 0 else 0) + iteration
        if batch >= nonempty_batches(self.plan):
            raise StopIteration
        return self.first_epoch + epoch_idx, batch

    def __call__(self, info: Any) -> tuple[list[np.ndarray], ...]:
        # evaluation: the preset's views are constants of the pipeline; the centre params only fill the slots
        idx, p = rank_batch(self.plan, self.data, *self._position(info))
        stored = read_batch(self.split, idx)  # one pread per run of adjacent images in a shard
        labels = self.split.labels[idx]
        return (
            stored,
            [np.array([y, x], dtype=np.int32) for y, x in zip(p.y, p.x, strict=True)],
            [np.array(f, dtype=np.int32) for f in p.flip],
            [np.array(v, dtype=np.int64) for v in labels],
            [np.asarray(a, dtype=np.float64) for a in p.alpha],
        )


PAD_LABEL = -1  # the label of a sample that only fills a short batch up to DALI's fixed size in sample mode


@dataclass
class SampleSource(ShardSource):
    """Sample mode: (stored image, crop corner [y, x], flip, label, α) of one image of this rank's slice.

    DALI asks sample mode for a full batch every time, so a rank's short batch (the kept last one, or
    a rank's smaller slice of it) is filled up with copies of its first image labelled PAD_LABEL; the
    loader keeps only the batch's own images (`real_count`). DALI gives each worker a contiguous run of
    one batch's samples (batch size ÷ workers of them), so a worker computes the batch's indices and
    draws once, and reads `run` images from the one it is asked for in one `read_batch` (one pread per
    run of adjacent images in a shard) rather than one read per image. Which images are read together
    changes the speed only: any sample asked for is read if it was not.
    """

    run: int = 1  # images read together from the one asked for (the loader: batch size ÷ Python workers)
    _batch: tuple[tuple[int, int], np.ndarray, Any] | None = field(default=None, init=False, repr=False)
    _stored: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    def __call__(self, info: Any) -> tuple[np.ndarray, ...]:  # type: ignore[override]
        where = self._position(info)
        if self._batch is None or self._batch[0] != where:
            self._batch = (where, *rank_batch(self.plan, self.data, *where))
            self._stored = {}
        _, idx, p = self._batch
        i = int(info.idx_in_batch)
        label = int(self.split.labels[idx[i]]) if i < len(idx) else PAD_LABEL
        i = i if i < len(idx) else 0
        if i not in self._stored:
            end = min(i + self.run, len(idx))
            self._stored = dict(zip(range(i, end), read_batch(self.split, idx[i:end]), strict=True))
        return (self._stored[i], np.array([p.y[i], p.x[i]], dtype=np.int32),
                np.array(p.flip[i], dtype=np.int32), np.array(label, dtype=np.int64),
                np.asarray(p.alpha[i], dtype=np.float64))


def real_count(labels: np.ndarray) -> int:
    """How many of a batch's samples are its own images (the rest fill a short batch in sample mode)."""
    return int(np.count_nonzero(np.asarray(labels) != PAD_LABEL))
