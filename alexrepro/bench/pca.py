"""Benchmark `alexrepro pca`'s pass against a plain numpy one (`alexrepro bench pca OUT`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from alexrepro.data.split import open_split
from alexrepro.data.stats import covariance_from_sums, eigen_rgb, pca_sums, sample_indices
from alexrepro.errors import UserError

# The baseline holds every pixel in memory (np.cov makes float64 copies: ~3 MB per image for
# each copy), so both sides use at most this many images, the same ones, chosen with seed 0.
BASELINE_MAX_IMAGES = 256


def _baseline(out: Path, indices: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending) of np.cov over the stacked pixels of the given training images."""
    dataset = open_split(out, "train")
    pixels = np.stack([dataset[int(i)][0] for i in indices]).reshape(-1, 3)
    cov = np.cov(pixels, rowvar=False)  # unbiased, as ours
    return np.sort(np.linalg.eigvalsh(cov))[::-1]


def bench_pca(out: Path, workers: int, max_images: int = BASELINE_MAX_IMAGES) -> dict[str, Any]:
    """Our PCA pass (exact streamed sums, `workers` processes) vs a plain numpy pass, same images."""
    out = Path(out)
    if max_images < 1:
        raise UserError(f"--max-images must be at least 1, got {max_images}")
    total = len(open_split(out, "train"))
    indices = sample_indices(total, max_images, seed=0)
    sample = None if len(indices) == total else max_images

    started = time.perf_counter()
    _, pixels, pixel_sum, outer_sum = pca_sums(out, sample=sample, workers=workers, seed=0, progress=False)
    ours_eigval, _ = eigen_rgb(covariance_from_sums(pixels, pixel_sum, outer_sum))
    ours_seconds = time.perf_counter() - started

    started = time.perf_counter()
    numpy_eigval = _baseline(out, indices)
    numpy_seconds = time.perf_counter() - started

    images = len(indices)
    ours_rate, numpy_rate = images / ours_seconds, images / numpy_seconds
    return {
        "out": str(out),
        "images": images,
        "workers": workers,
        "ours_seconds": round(ours_seconds, 4),
        "ours_images_per_s": round(ours_rate, 2),
        "numpy_seconds": round(numpy_seconds, 4),
        "numpy_images_per_s": round(numpy_rate, 2),
        "speedup": round(ours_rate / numpy_rate, 3),
        "eigval_ours": ours_eigval,
        "eigval_numpy": numpy_eigval,
        "eigval_max_rel_diff": float(np.max(np.abs(ours_eigval - numpy_eigval) / np.abs(numpy_eigval).clip(1e-12))),
    }
