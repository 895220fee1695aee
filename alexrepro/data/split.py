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
        self._labels = self._checked_labels(counts)

    def _checked_labels(self, counts: np.ndarray) -> np.ndarray:
        """Every label, read once, after checking each shard's count against the manifest and every label
        against the classes: a set that disagrees with itself is refused here, in one line, rather than
        failing (or silently mislabelling) deep inside training. Reads no image."""
        hint = f"find every problem with alexrepro info {self.out} --verify and rebuild the set with alexrepro prep"
        parts = []
        for shard, expected in zip(self.shards, counts, strict=True):
            labels = shard.labels()
            count = shard.stored_count
            if count != expected or len(labels) != count:
                raise UserError(f"shard {shard.path} holds {count} images and {len(labels)} labels, but the "
                                f"manifest says {int(expected)}; {hint}")
            parts.append(labels)
        labels = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
        if len(bad):
            s, j = self.locate(int(bad[0]))
            raise UserError(f"{len(bad)} labels of the {self.split} split lie outside the manifest's "
                            f"{self.num_classes} classes (first: {int(labels[bad[0]])} at {self.shards[s].path} "
                            f"#{j}); {hint}")
        return labels

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
