"""Figure 3: the conv1 kernels as images, tower 1 (GPU 1) in the top rows and tower 2 (GPU 2) below.

The grouped layout stores the first half of conv1's kernels for tower 1 and the second half for
tower 2, so the 96 kernels of the paper net become an 8×12 grid: rows 1–4 tower 1, rows 5–8 tower 2.
Each kernel is shown with per-kernel min-max normalisation (its own minimum → 0, maximum → 255, over
all three colour channels together, so its colour balance is kept; a constant kernel is mid-grey),
as is common for such displays, and enlarged by pixel repetition (nearest neighbour) so that the
11×11 kernels stay sharp.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from alexrepro.errors import UserError
from alexrepro.figures.common import figure_path, resolve_run, save_rgb
from alexrepro.training.checkpoint import Checkpoint

PAPER_COLS = 12  # the brief's layout of Figure 3: 48 kernels per GPU as 4 rows of 12
BACKGROUND = 255  # white between kernels
SCALE, PAD, TOWER_GAP = 4, 2, 8  # pixels: kernel enlargement, space between kernels, extra space between towers


def grid_shape(per_tower: int, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) for one tower's kernels: 48 → 4×12 as in Figure 3; else the divisor nearest √(3n)."""
    if per_tower < 1:
        raise UserError("conv1 has no kernels to show")
    if cols is None:
        target = math.sqrt(3 * per_tower)  # 3:1 wide blocks, which gives 12 columns for 48 kernels
        divisors = [d for d in range(1, per_tower + 1) if per_tower % d == 0 and target / 2 <= d <= 2 * target]
        cols = min(divisors, key=lambda d: (abs(d - target), -d)) if divisors else round(target)
    if cols < 1:
        raise UserError(f"--cols must be at least 1, got {cols}")
    cols = min(cols, per_tower)
    return math.ceil(per_tower / cols), cols


def normalise_kernel(kernel: np.ndarray) -> np.ndarray:
    """Per-kernel min-max to [0, 1] over all of a kernel's values (colour balance kept); constant → 0.5."""
    k = np.asarray(kernel, dtype=np.float64)
    lo, hi = float(k.min()), float(k.max())
    if hi - lo <= 0:
        return np.full(k.shape, 0.5)
    return (k - lo) / (hi - lo)


def mosaic_size(n_kernels: int, towers: int, kernel_hw: tuple[int, int], cols: int | None = None,
                scale: int = SCALE, pad: int = PAD, gap: int = TOWER_GAP) -> tuple[int, int]:
    """(height, width) in pixels of `filter_mosaic`'s image."""
    rows, cols = grid_shape(n_kernels // towers, cols)
    h, w = kernel_hw[0] * scale, kernel_hw[1] * scale
    block_h = rows * (h + pad) + pad
    return towers * block_h + (towers - 1) * gap, cols * (w + pad) + pad


def filter_mosaic(weights: np.ndarray, towers: int, cols: int | None = None,
                  scale: int = SCALE, pad: int = PAD, gap: int = TOWER_GAP) -> np.ndarray:
    """conv1 weights (C×3×k×k) → uint8 RGB grid: tower t's kernels (the t-th block of C/towers) in their own rows."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 4 or w.shape[1] != 3:
        raise UserError(f"conv1 weights must be kernels × 3 × h × w (RGB), got shape {tuple(w.shape)}")
    n = w.shape[0]
    if towers < 1 or n % towers:
        raise UserError(f"{n} conv1 kernels do not split evenly into {towers} towers")
    per = n // towers
    rows, cols = grid_shape(per, cols)
    kh, kw = w.shape[2] * scale, w.shape[3] * scale
    height, width = mosaic_size(n, towers, (w.shape[2], w.shape[3]), cols, scale, pad, gap)
    grid = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    block_h = rows * (kh + pad) + pad
    for i in range(n):
        tower, j = divmod(i, per)  # grouped layout: the first `per` kernels are tower 1's
        r, c = divmod(j, cols)
        top = tower * (block_h + gap) + pad + r * (kh + pad)
        left = pad + c * (kw + pad)
        img = np.round(255 * normalise_kernel(w[i])).astype(np.uint8).transpose(1, 2, 0)  # 3×k×k → k×k×3
        grid[top : top + kh, left : left + kw] = np.repeat(np.repeat(img, scale, 0), scale, 1)
    return grid


def conv1_weights(ckpt: Checkpoint) -> np.ndarray:
    """conv1's kernels from a checkpoint's state_dict, as float32 C×3×k×k."""
    state = ckpt.model
    if not isinstance(state, dict) or "conv1.weight" not in state:
        raise UserError("the checkpoint has no conv1.weight; give a checkpoint of an alexrepro AlexNet")
    return state["conv1.weight"].detach().float().cpu().numpy()


def towers_of(ckpt: Checkpoint) -> int:
    """2 for the two-GPU net, 1 for the one-GPU ablation and other nets (torchvision's has one tower)."""
    model = ckpt.recipe.model
    return 2 if model.arch == "alexnet" and model.layout == "two-tower" else 1


def draw_filters(target: str | os.PathLike[str], png: str | os.PathLike[str] | None = None,
                 cols: int | None = None, scale: int = SCALE) -> dict[str, Any]:
    """Write Figure 3 for a run or checkpoint; returns {"path", "checkpoint", "kernels", "towers", "grid", ...}."""
    from alexrepro.training.checkpoint import read_checkpoint

    if scale < 1:
        raise UserError(f"--scale must be at least 1, got {scale}")
    run, ckpt_path = resolve_run(target)
    fig_path = figure_path(run, "filters.png", png)
    ckpt = read_checkpoint(ckpt_path)
    weights = conv1_weights(ckpt)
    towers = towers_of(ckpt)
    mosaic = filter_mosaic(weights, towers, cols, scale=scale)
    path = save_rgb(mosaic, fig_path)
    rows, used_cols = grid_shape(weights.shape[0] // towers, cols)
    return {
        "path": str(path),
        "checkpoint": str(ckpt_path),
        "kernels": int(weights.shape[0]),
        "kernel_size": list(weights.shape[2:]),
        "towers": towers,
        "grid": [rows * towers, used_cols],
        "width": int(mosaic.shape[1]),
        "height": int(mosaic.shape[0]),
        "normalisation": "per-kernel min-max",
    }

