"""Evaluation maths as pure functions: softmax averaging, top-k error, Wilson intervals, per-class counts.

§4.1: at test time the net scores ten patches (four corners, centre, and their reflections) and
averages the softmax outputs; §6: several nets are combined by averaging their predictions. Both
are averages of probabilities, never of logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from alexrepro.topk import TOP_KS, check_k, true_class_rank

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities along the last dimension, computed in float32 or wider."""
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    return torch.softmax(x, dim=-1)


def average_crops(crop_probs: torch.Tensor) -> torch.Tensor:
    """(N, crops, K) softmax outputs → (N, K): §4.1's average over the test patches."""
    if crop_probs.dim() != 3:
        raise ValueError(f"expected (N, crops, K) probabilities, got shape {tuple(crop_probs.shape)}")
    return crop_probs.mean(dim=1)


def average_ensemble(member_probs: list[torch.Tensor]) -> torch.Tensor:
    """The mean of several nets' (N, K) softmax outputs (§6's averaged CNNs)."""
    if not member_probs:
        raise ValueError("an ensemble needs at least one member")
    shapes = {tuple(p.shape) for p in member_probs}
    if len(shapes) != 1:
        raise ValueError(f"ensemble members disagree on shape: {sorted(shapes)}")
    return torch.stack(list(member_probs)).mean(dim=0)


def topk_classes(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the k highest scores per row, highest first; k capped at the class count."""
    k = min(k, scores.shape[-1])
    return torch.topk(scores, k, dim=-1, largest=True, sorted=True)


def wilson_interval(errors: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion errors/n (95% by default)."""
    if n <= 0:
        raise ValueError("a confidence interval needs at least one image")
    if not 0 <= errors <= n:
        raise ValueError(f"errors must lie in [0, n], got {errors} of {n}")
    p = errors / n
    z2 = z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if errors == 0 else max(0.0, center - half)  # exact ends: rounding leaves 1e-17 there
    hi = 1.0 if errors == n else min(1.0, center + half)
    return lo, hi


@dataclass
class ErrorCounts:
    """Per-class tallies of images and top-k misses; sums across batches and ranks."""

    num_classes: int
    ks: tuple[int, ...] = TOP_KS
    images: np.ndarray = field(init=False)  # (num_classes,) images per true class
    misses: dict[int, np.ndarray] = field(init=False)  # k -> (num_classes,) top-k misses

    def __post_init__(self) -> None:
        for k in self.ks:
            check_k(k, self.num_classes)
        self.images = np.zeros(self.num_classes, dtype=np.int64)
        self.misses = {k: np.zeros(self.num_classes, dtype=np.int64) for k in self.ks}

    def update(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one batch of (N, K) scores and their true labels."""
        if scores.shape[-1] != self.num_classes:
            raise ValueError(f"scores have {scores.shape[-1]} classes, the counts {self.num_classes}")
        lab = torch.as_tensor(labels, dtype=torch.long).cpu().numpy()
        rank = true_class_rank(scores, torch.as_tensor(labels)).cpu().numpy()
        self.images += np.bincount(lab, minlength=self.num_classes)
        for k in self.ks:
            self.misses[k] += np.bincount(lab, weights=(rank >= k), minlength=self.num_classes).astype(np.int64)

    def as_array(self) -> np.ndarray:
        """(1 + len(ks), num_classes) int64: images, then misses per k (for all-reduce)."""
        return np.stack([self.images] + [self.misses[k] for k in self.ks])

    def add_array(self, arr: np.ndarray) -> None:
        """Add tallies in the `as_array` layout (another rank's, say)."""
        self.images += arr[0]
        for i, k in enumerate(self.ks):
            self.misses[k] += arr[1 + i]

    @property
    def total(self) -> int:
        return int(self.images.sum())

    def error(self, k: int) -> float:
        """Overall top-k error rate."""
        return float(self.misses[k].sum()) / self.total if self.total else float("nan")

    def interval(self, k: int, z: float = Z_95) -> tuple[float, float]:
        """Wilson 95% interval of the overall top-k error."""
        return wilson_interval(int(self.misses[k].sum()), self.total, z)

    def class_error(self, k: int) -> np.ndarray:
        """(num_classes,) top-k error per class; NaN for classes with no images."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.images > 0, self.misses[k] / np.maximum(self.images, 1), np.nan)
