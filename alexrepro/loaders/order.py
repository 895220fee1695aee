"""Which images each rank sees, in which order, batch by batch: epoch order, distributed split, resume.

Training: each epoch is a permutation of the split drawn from (seed, epoch), cut into global
batches of `batch_size`; each global batch is split into `world_size` disjoint contiguous slices
(rank r takes the r-th), so the union over ranks is exactly the single-process batch. The last
partial global batch is dropped when `drop_last`, kept otherwise (then split as evenly as possible;
a rank may get fewer, or no, images of that batch, so every rank still runs the same number of
batches). Evaluation: the split in stored order, cut and sliced the same way, nothing dropped or
duplicated. Resume: start at global batch `start_batch` of an epoch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from alexrepro.errors import UserError
from alexrepro.loaders.augment import CropParams, draw_train_params, eval_params
from alexrepro.recipe import DataConfig

# A non-zero tag ends the seed list so that this stream never equals augment.draw_train_params's
# [seed, epoch, batch, DRAW_TAG] (numpy ignores trailing zeros: [seed, epoch, 0] == [seed, epoch]).
ORDER_TAG = 1


@functools.lru_cache(maxsize=4)
def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The global index of every image in this epoch's order (a permutation of range(n) if shuffle)."""
    order = np.random.default_rng([seed, epoch, ORDER_TAG]).permutation(n) if shuffle else np.arange(n)
    order = order.astype(np.int64)
    order.flags.writeable = False  # cached: shared by every caller
    return order


@dataclass(frozen=True)
class BatchPlan:
    """Epoch order and this rank's slice of every global batch (pure; picklable to worker processes)."""

    n: int  # images in the split
    batch_size: int  # the GLOBAL batch
    train: bool  # shuffle, and drop the last partial batch if drop_last
    drop_last: bool
    seed: int = 0
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {self.batch_size}")
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise UserError(f"rank {self.rank} is not in a world of {self.world_size} processes")
        if self.batch_size % self.world_size:
            raise UserError(
                f"the global batch {self.batch_size} does not divide by {self.world_size} processes; "
                f"choose a batch size that is a multiple of {self.world_size}"
            )
        if self.seed < 0:
            raise UserError(f"seed must be 0 or more, got {self.seed}")

    @property
    def num_batches(self) -> int:
        """Global batches per epoch (the same on every rank)."""
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not (self.train and self.drop_last) else 0)

    @property
    def total_images(self) -> int:
        """Images seen per epoch over all ranks together."""
        return min(self.n, self.num_batches * self.batch_size)

    def batch_length(self, batch: int) -> int:
        """Images in global batch `batch`."""
        if not 0 <= batch < self.num_batches:
            raise IndexError(f"batch {batch} out of range for {self.num_batches} batches")
        return min(self.batch_size, self.n - batch * self.batch_size)

    def rank_bounds(self, length: int) -> tuple[int, int]:
        """[lo, hi) of this rank's contiguous slice of a global batch of `length` images."""
        base, extra = divmod(length, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def global_batch(self, epoch: int, batch: int) -> np.ndarray:
        """Global indices of the images of global batch `batch` in `epoch`."""
        lo = batch * self.batch_size
        return epoch_order(self.n, self.seed, epoch, self.train)[lo : lo + self.batch_length(batch)]

    def rank_count(self, start_batch: int = 0) -> int:
        """Images this rank sees from global batch `start_batch` to the end of the epoch."""
        total = 0
        for b in range(start_batch, self.num_batches):
            lo, hi = self.rank_bounds(self.batch_length(b))
            total += hi - lo
        return total

    def check_start(self, start_batch: int) -> None:
        """A UserError unless `start_batch` is a batch of this epoch (or its end)."""
        if not 0 <= start_batch <= self.num_batches:
            raise UserError(
                f"cannot resume at batch {start_batch}: an epoch has {self.num_batches} batches "
                f"of {self.batch_size}; was the checkpoint made with another batch size or data set?"
            )


def rank_batch(plan: BatchPlan, data: DataConfig, epoch: int, batch: int) -> tuple[np.ndarray, CropParams]:
    """This rank's global indices and augmentation parameters for global batch `batch` of `epoch`.

    Training draws for the whole GLOBAL batch (the one sampler) and keeps this rank's slice;
    evaluation takes the centre view (the backends cut the test-time preset's views, and take its params).
    """
    idx = plan.global_batch(epoch, batch)
    lo, hi = plan.rank_bounds(len(idx))
    if plan.train:
        params = draw_train_params(data, plan.seed, epoch, batch, len(idx)).take(lo, hi)
    else:
        params = eval_params(hi - lo, data.image_size, data.crop_size)
    return idx[lo:hi], params
