"""One split of a prepared set as a random-access dataset: `open_split(OUT, "train")[i]` is (image, label).

A SplitDataset reads its labels once and carries them when pickled to loader workers; its shards
open their files lazily in each process (alexrepro.data.shards). See docs/FORMAT.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from alexrepro.data.manifest import read_manifest
from alexrepro.data.shards import Shard
from alexrepro.errors import UserError


class SplitDataset:
    """One split of a prepared set: `ds[i]` is (uint8 256×256×3 RGB array, int label)."""

    def __init__(self, out: str | os.PathLike[str], split: str) -> None:
        self.out = Path(out)
        self.manifest = read_manifest(out)
        splits = self.manifest.splits
        if split not in splits:
            have = ", ".join(splits) or "none"
            raise UserError(f"{out} has no split {split!r} (it has: {have})")
        self.split = split
        self.encoding = self.manifest.encoding
        entries = splits[split].shards
        self.shards = [Shard(self.out / e.file) for e in entries]
        counts = np.array([e.count for e in entries], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, index within the shard) of global index i."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        s = int(np.searchsorted(self.starts, i, side="right") - 1)
        return s, int(i - self.starts[s])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        s, j = self.locate(int(i))
        return self.shards[s].image(j), int(self.labels[i])

    def encoded(self, i: int) -> np.ndarray:
        s, j = self.locate(int(i))
        return self.shards[s].encoded(j)

    @property
    def labels(self) -> np.ndarray:
        """Every label of the split in order (read once, cached)."""
        if self._labels is None:
            parts = [sh.labels() for sh in self.shards]
            self._labels = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return self._labels

    def keys(self) -> list[str]:
        return [k for sh in self.shards for k in sh.keys()]

    @property
    def classes(self) -> list[dict[str, Any]]:
        """The set's classes in their JSON form (index, wnid, name), as checkpoints carry them."""
        return self.manifest.class_list()

    @property
    def num_classes(self) -> int:
        return len(self.manifest.classes)

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the labels read here, once, instead of each opening every shard for them.
        state = dict(self.__dict__)
        state["_labels"] = self.labels
        return state


def open_split(out: str | os.PathLike[str], split: str) -> SplitDataset:
    """Random-access dataset of (uint8 H×W×3 RGB array, int label) for one split of a prepared set."""
    return SplitDataset(out, split)
