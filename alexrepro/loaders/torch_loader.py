"""The PyTorch backend: a DataLoader whose workers decode, crop and mirror in uint8; the float maths after.

The batch sampler (main process) yields, per sample, (global index, crop y, x, flip, α1, α2, α3)
drawn by `alexrepro.loaders.augment`'s one sampler; worker processes open the shards lazily, read the
batch with one HDF5 read per shard, decode (PIL), resize if image_size < 256, cut and mirror (at the
drawn views when training, at the test-time preset's views otherwise), and collate uint8 N×c×c×3;
`finish_batch` then does mean subtraction, lighting and NCHW on the device.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from alexrepro.data.split import SplitDataset
from alexrepro.loaders.augment import CropParams, crop_flip, finish_batch, resize_image
from alexrepro.loaders.base import Loader, LoaderSpec
from alexrepro.loaders.batch_read import decoded, read_batch
from alexrepro.loaders.order import rank_batch
from alexrepro.loaders.presets import EvalPreset
from alexrepro.process import lifetime

Item = tuple[int, int, int, bool, float, float, float]  # (index, y, x, flip, α1, α2, α3)


class CropDataset(Dataset):
    """Worker side: a list of items → uint8 crops (N×c×c×3, or N×V×c×c×3), labels and the items.

    preset None: training, each image cut at its drawn (y, x, flip); else the preset's test views.
    """

    def __init__(self, split: SplitDataset, image_size: int, crop_size: int, preset: EvalPreset | None) -> None:
        self.split = split
        self.image_size = image_size
        self.crop_size = crop_size
        self.preset = preset

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, item: Item) -> dict[str, np.ndarray]:
        return self.__getitems__([item])

    def __getitems__(self, items: list[Item]) -> dict[str, np.ndarray]:
        """One batch: read its images with one read per shard, decode, resize, cut and mirror."""
        arr = np.array(items, dtype=np.float64).reshape(len(items), 7)
        idx = arr[:, 0].astype(np.int64)
        c = self.crop_size
        shape = (c, c, 3) if self.preset is None else self.preset.crop_shape
        crops = np.empty((len(items), *shape), dtype=np.uint8)
        for k, stored in enumerate(read_batch(self.split, idx)):
            image = decoded(self.split, int(idx[k]), stored)
            if self.preset is not None:
                crops[k] = self.preset.cut(image)
            else:
                image = resize_image(image, self.image_size)
                crops[k] = crop_flip(image, int(arr[k, 1]), int(arr[k, 2]), c, bool(arr[k, 3]))
        labels = self.split.labels[idx] if len(idx) else np.zeros(0, np.int64)
        return {"crops": crops, "labels": labels.astype(np.int64), "items": arr}


def collate(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The dataset already returns whole batches: only wrap the arrays as tensors."""
    return {k: torch.from_numpy(v) for k, v in batch.items()}


class BatchItems:
    """Batch sampler: this rank's items of each global batch from start_batch, drawn by the one sampler."""

    def __init__(self, loader: TorchLoader) -> None:
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[list[Item]]:
        lo = self.loader
        for b in range(lo.start_batch, lo.plan.num_batches):
            idx, p = rank_batch(lo.plan, lo.spec.data, lo.epoch, b)  # evaluation: the preset's views in workers
            yield [(int(i), int(y), int(x), bool(f), *map(float, a))
                   for i, y, x, f, a in zip(idx, p.y, p.x, p.flip, p.alpha, strict=True)]


class TorchLoader(Loader):
    """PyTorch DataLoader backend (worker processes; pinned memory when the device is CUDA)."""

    kind = "torch"

    def __init__(self, spec: LoaderSpec) -> None:
        super().__init__(spec)
        d = spec.data
        self.crop_data = CropDataset(self.dataset, d.image_size, d.crop_size, spec.preset)
        self.dataloader = self.data_loader(self.crop_data)

    def data_loader(self, dataset: Dataset) -> DataLoader:
        """A DataLoader over this loader's batches of items, run as training runs it (`bench loader --stages`
        gives it datasets that stop after reading or decoding)."""
        workers = self.spec.data.workers
        options: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": 2} if workers else {}
        return DataLoader(
            dataset,
            batch_sampler=BatchItems(self),
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.spec.device.type == "cuda",
            worker_init_fn=functools.partial(lifetime.init_loader_worker, os.getpid()),  # dies with this process
            **options,
        )

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        spec, preset = self.spec, self.spec.preset
        for batch in self.dataloader:
            items = batch["items"].numpy()
            n = len(items)
            if n == 0:
                yield self.empty_batch()
                continue
            if preset is not None:
                params = preset.params(n)
            else:
                params = CropParams(items[:, 1].astype(np.int64), items[:, 2].astype(np.int64),
                                    items[:, 3].astype(bool), items[:, 4:7])
            images = finish_batch(batch["crops"], params, self.colour, spec.device, spec.channels_last)
            yield images, batch["labels"].to(spec.device, non_blocking=True)

    def close(self) -> None:
        """Stop the persistent workers and close the shards."""
        it = getattr(self.dataloader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.dataloader._iterator = None
        super().close()
