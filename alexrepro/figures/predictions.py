"""Figure 4 (left): images with their true label and the net's five most probable classes as bars.

Each image is scored on its centre patch (as `alexrepro eval --crops 1`), and shown as that patch;
the bar of the true class is highlighted (red), the others are blue. Images are drawn from the
split with a seed, so a figure can be made again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexrepro.errors import UserError
from alexrepro.figures.common import (
    check_same_classes,
    class_names,
    figure_path,
    input_colour,
    iter_center_batches,
    load_net,
    new_figure,
    pick_indices,
    resolve_run,
    save_figure,
)

TOP = 5  # §6: the five labels the figure shows
MAX_IMAGES = 64
COLS = 4  # images per row (the paper's Figure 4 shows eight in one row; four keep the names legible)
CELL_W_IN, CELL_H_IN = 3.0, 4.5  # inches per image: the patch above, its five bars below
TRUE_COLOUR, OTHER_COLOUR = "tab:red", "tab:blue"


def predictions_size(n: int) -> tuple[float, float]:
    """Figure size in inches for n images: COLS per row."""
    cols = min(n, COLS)
    return cols * CELL_W_IN, math.ceil(n / cols) * CELL_H_IN


def top_classes(probs: torch.Tensor, k: int = TOP) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of each row's k most probable classes, most probable first (k capped at K)."""
    k = min(k, probs.shape[1])
    vals, idx = torch.topk(probs.float(), k, dim=1)
    return idx.cpu().numpy(), vals.cpu().numpy()


def draw_predictions(
    target: str | os.PathLike[str], out: str | os.PathLike[str], n: int = 8, split: str = "val",
    seed: int = 0, png: str | os.PathLike[str] | None = None, device: str = "auto",
) -> dict[str, Any]:
    """Write the top-5 figure for n images of a split; returns {"path", "images": [{"index", "label", "top5"}]}."""
    from alexrepro.data.split import open_split
    from alexrepro.runtime import resolve_device

    if not 1 <= n <= MAX_IMAGES:
        raise UserError(f"--n must be between 1 and {MAX_IMAGES}, got {n}")
    run, ckpt_path = resolve_run(target)
    fig_path = figure_path(run, f"predictions-{split}.png", png)
    dev = resolve_device(device)
    dataset = open_split(out, split)
    loaded = load_net(ckpt_path, dev)
    check_same_classes(loaded, dataset.classes, Path(out))
    names = class_names(loaded.classes, loaded.recipe.model.num_classes)
    indices = pick_indices(len(dataset), n, seed)
    colour = input_colour(loaded, Path(out), dev)
    x, patches, labels = next(iter_center_batches(dataset, indices, loaded.recipe.data, colour, dev, len(indices)))
    with torch.inference_mode():
        probs = torch.softmax(loaded.model(x).float(), dim=1)
    top, top_p = top_classes(probs)

    w_in, h_in = predictions_size(n)
    fig = new_figure(w_in, h_in)
    cols = min(n, COLS)
    outer = fig.add_gridspec(math.ceil(n / cols), cols, left=0.03, right=0.97, top=0.97, bottom=0.03,
                             hspace=0.25, wspace=0.15)
    report = []
    for j in range(n):
        r, c = divmod(j, cols)
        cell = outer[r, c].subgridspec(2, 1, height_ratios=[3, 2], hspace=0.08)
        ax_img = fig.add_subplot(cell[0])
        ax_img.imshow(patches[j], interpolation="nearest")
        ax_img.set_axis_off()
        y = int(labels[j])
        ax_img.set_title(names[y], fontsize=10, fontweight="bold")
        _draw_bars(fig.add_subplot(cell[1]), top[j], top_p[j], y, names)
        report.append({
            "index": int(indices[j]), "label": y, "name": names[y], "top5": [int(t) for t in top[j]],
            "prob": [round(float(p), 6) for p in top_p[j]], "top1_correct": bool(top[j][0] == y),
            "top5_correct": bool(y in top[j]),
        })
    path = save_figure(fig, fig_path)
    return {
        "path": str(path), "checkpoint": str(ckpt_path), "split": split, "seed": seed, "images": report,
        "width": round(w_in * fig.dpi), "height": round(h_in * fig.dpi),
    }


def _draw_bars(ax: Any, top: np.ndarray, top_p: np.ndarray, label: int, names: list[str]) -> None:
    """One image's top classes as bars, most probable on top, the true class in its colour."""
    colours = [TRUE_COLOUR if int(cls) == label else OTHER_COLOUR for cls in top]
    ax.barh(np.arange(len(top)), top_p, color=colours, alpha=0.45)
    for row, cls in enumerate(top):  # names inside the bars, as in Figure 4, so none is cut off
        true = int(cls) == label
        ax.text(0.02, row, names[int(cls)], va="center", fontsize=8,
                color=TRUE_COLOUR if true else "black", fontweight="bold" if true else "normal")
    ax.set_yticks([])
    ax.invert_yaxis()  # most probable on top, as in Figure 4
    ax.set_xlim(0, 1)
    ax.tick_params(axis="x", labelsize=7)
    if label not in top:
        ax.set_xlabel("true class not in top 5", fontsize=7, color=TRUE_COLOUR)
