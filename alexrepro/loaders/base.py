"""What every backend shares: the request (LoaderSpec), the colour set-up, and the epoch cursor."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from alexrepro.data.split import SplitDataset
from alexrepro.data.stats_file import read_stats
from alexrepro.errors import UserError
from alexrepro.loaders.augment import Colour
from alexrepro.loaders.colour import MeanImage, make_colour
from alexrepro.loaders.order import BatchPlan
from alexrepro.loaders.presets import EvalPreset
from alexrepro.recipe import DataConfig


@dataclass(frozen=True)
class LoaderSpec:
    """Everything a loader is asked for (the arguments of `make_loader`, checked)."""

    out: Path
    split: str
    data: DataConfig
    batch_size: int  # GLOBAL batch
    train: bool
    device: torch.device
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    crops: str = "center"
    channels_last: bool = False
    # Colour statistics to use instead of OUT's stats.h5 (eval: the mean the checkpoint carries).
    stats: MeanImage | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        EvalPreset.for_data(self.data, self.crops)  # a UserError naming the variants if crops is none of them
        if self.train and self.crops != "center":
            raise UserError("ten crops are for evaluation; training takes random crops (train=False for ten)")
        d = self.data
        if not 0 < d.crop_size <= d.image_size <= 256:
            raise UserError(f"need 0 < crop_size <= image_size <= 256, got {d.crop_size} and {d.image_size}")

    @property
    def preset(self) -> EvalPreset | None:
        """The test-time preset whose views an evaluation loader gives; None for training (random draws)."""
        return None if self.train else EvalPreset.for_data(self.data, self.crops)


def load_colour(spec: LoaderSpec) -> Colour:
    """The mean image to subtract (resized to image_size) and, for training with lighting, its basis: from
    the spec's stats when given, else OUT's stats.h5."""
    lighting = spec.train and spec.data.lighting
    if spec.stats is not None and not lighting:
        return make_colour(spec.stats, spec.data, spec.device)
    return make_colour(read_stats(spec.out, need_pca=lighting), spec.data, spec.device, lighting)


class Loader(ABC):
    """Batches of (float32 images NCHW on the device, int64 labels) for one rank; see make_loader."""

    kind = "base"

    def __init__(self, spec: LoaderSpec) -> None:
        self.spec = spec
        self.dataset = SplitDataset(spec.out, spec.split)
        if len(self.dataset) == 0:
            raise UserError(f"split {spec.split!r} of {spec.out} holds no images; prepare it again")
        _ = self.dataset.labels  # read once here: workers inherit (fork) or unpickle them, not re-read
        self.plan = BatchPlan(
            n=len(self.dataset), batch_size=spec.batch_size, train=spec.train,
            drop_last=spec.data.drop_last, seed=spec.seed, rank=spec.rank, world_size=spec.world_size,
        )
        self.colour = load_colour(spec)
        self.epoch = 0
        self.start_batch = 0
        self.position = 0  # the next global batch to hand out

    # ------------------------------------------------------------------ epoch cursor
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch (its order and draws) and the global batch to start at (resume)."""
        if epoch < 0:
            raise UserError(f"epoch must be 0 or more, got {epoch}")
        self.plan.check_start(start_batch)
        self.epoch, self.start_batch, self.position = int(epoch), int(start_batch), int(start_batch)

    def __len__(self) -> int:
        """Batches one iteration yields for this rank (from start_batch to the end of the epoch)."""
        return self.plan.num_batches - self.start_batch

    @property
    def num_images(self) -> int:
        """Images one iteration yields for this rank."""
        return self.plan.rank_count(self.start_batch)

    @property
    def total_images(self) -> int:
        """Images of a whole epoch over all ranks (the split's size unless the last batch is dropped)."""
        return self.plan.total_images

    def state_dict(self) -> dict[str, Any]:
        """Where this loader stands: epoch and the next global batch, with what must match on resume."""
        return {"epoch": self.epoch, "batch": self.position, "seed": self.plan.seed,
                "batch_size": self.plan.batch_size, "num_images": self.plan.n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume where `state_dict()` was taken: the same epoch, at the next batch."""
        for key in ("seed", "batch_size", "num_images"):
            want = {"seed": self.plan.seed, "batch_size": self.plan.batch_size, "num_images": self.plan.n}[key]
            if state.get(key) != want:
                raise UserError(
                    f"loader state has {key} = {state.get(key)}, this loader {want}; resume with the "
                    "same data set, seed and global batch size"
                )
        self.set_epoch(int(state["epoch"]), int(state["batch"]))

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) for batches start_batch.. of the epoch; iterating again repeats them."""
        self.position = self.start_batch
        for batch, (images, labels) in enumerate(self._batches(), start=self.start_batch):
            self.position = batch + 1
            yield images, labels

    @abstractmethod
    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The backend's batches from self.start_batch of self.epoch to the end of the epoch."""

    def empty_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of a rank that gets no image of the last partial batch (kept, so ranks stay in step)."""
        c = self.spec.data.crop_size
        views = () if self.spec.preset is None else self.spec.preset.view_axis
        return (torch.zeros((0, *views, 3, c, c), dtype=torch.float32, device=self.spec.device),
                torch.zeros(0, dtype=torch.int64, device=self.spec.device))

    def close(self) -> None:
        """Release worker processes and open files."""
        for shard in self.dataset.shards:
            shard.close()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
