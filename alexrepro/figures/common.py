"""What every figure needs: the run and its checkpoint, centre-patch inputs (the preset's), atomic PNG writes.

Figures are drawn on `matplotlib.figure.Figure` objects with the Agg backend (headless: files, never
windows), at a fixed size and dpi and without `bbox_inches="tight"`, so a PNG is exactly
figsize × dpi pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display is ever needed

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from alexrepro.errors import UserError  # noqa: E402
from alexrepro.loaders.augment import Colour  # noqa: E402
from alexrepro.process.atomic import atomic_path, described_write_errors, writable_file  # noqa: E402
from alexrepro.recipe import DataConfig, Recipe  # noqa: E402
from alexrepro.training.checkpoint import Checkpoint  # noqa: E402

FIGURES = "figures"  # RUN/figures/ holds the default outputs
DPI = 100  # every figure: its PNG is figsize × DPI pixels
FIGURE_HINT = "free space there (or fix its permissions), then run it again"  # a PNG that could not be written
RUN_HELP = "a run folder (alexrepro train --run RUN) or a checkpoint .pt"


# --------------------------------------------------------------------------------------------- runs
def resolve_run(target: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(run folder, checkpoint file) for a RUN folder or a .pt path: best.pt, else last.pt, else the newest."""
    from alexrepro.training.checkpoint import BEST, LAST, checkpoint_dir, find_resumable

    path = Path(target)
    if path.is_file():
        run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return run, path
    if not path.is_dir():
        raise UserError(f"{path} does not exist; give {RUN_HELP}")
    folder = checkpoint_dir(path)
    for name in (BEST, LAST):  # best.pt: the net with the lowest validation error, as the paper reports
        if (folder / name).is_file():
            return path, folder / name
    newest = find_resumable(path)
    if newest is None:
        raise UserError(f"{path} has no checkpoints in {folder}; train it first or give a checkpoint .pt")
    return path, newest


def figure_path(run_dir: Path, name: str, png: str | os.PathLike[str] | None) -> Path:
    """The PNG to write: `png` (--out) when given, else RUN/figures/<name>; a UserError if it cannot be written."""
    if png is not None:
        return writable_file(png, "--out")
    return writable_file(Path(run_dir) / FIGURES / name, "the figure", "give --out FILE.png to write it elsewhere")


@dataclass
class Loaded:
    """A checkpoint read for figures: the net in eval mode, its recipe, classes and the checkpoint."""

    path: Path
    model: nn.Module
    recipe: Recipe
    classes: list[dict[str, Any]]
    ckpt: Checkpoint


def load_net(path: Path, device: torch.device) -> Loaded:
    """Load a checkpoint and its net; UserError if it is missing, corrupt or not an alexrepro net."""
    from alexrepro.training.checkpoint import model_from_checkpoint, read_checkpoint

    ckpt = read_checkpoint(path)  # refuses a file without weights and recipe
    model, recipe, classes = model_from_checkpoint(ckpt)
    if not hasattr(model, "forward_features"):
        raise UserError(f"{path}: this net has no fc7 features; give an AlexNet checkpoint")
    return Loaded(Path(path), model.to(device).eval(), recipe, classes, ckpt)


def class_names(classes: list[dict[str, Any]], num_classes: int) -> list[str]:
    """A short display name per class index: the first synonym of its name, else its WNID, else its number."""
    names = [str(i) for i in range(num_classes)]
    for c in classes:
        i = int(c["index"])
        if 0 <= i < num_classes:
            full = str(c.get("name") or c.get("wnid") or i)
            names[i] = full.split(",")[0].strip()[:24]
    return names


def check_same_classes(loaded: Loaded, set_classes: list[dict[str, Any]], out: Path) -> None:
    """UserError unless the net was trained on the prepared set's classes (labels would mean other things)."""
    from alexrepro.evaluation.classes import same_classes

    if loaded.recipe.model.num_classes != len(set_classes) or not same_classes(loaded.classes, set_classes):
        raise UserError(
            f"{loaded.path} was trained on other classes than {out} ({loaded.recipe.model.num_classes} vs "
            f"{len(set_classes)}, or other WNIDs); give the prepared set the run was trained on"
        )


# --------------------------------------------------------------------------------------------- inputs
def input_colour(loaded: Loaded, out: Path, device: torch.device) -> Colour:
    """The recipe's colour set-up (the preset's): §2's mean image from the checkpoint, else OUT/stats.h5
    (or torchvision's channel mean and std for a "channel-std" recipe), on `device`."""
    from alexrepro.loaders.colour import make_colour, saved_mean

    return make_colour(saved_mean(loaded.ckpt.stats, out, loaded.recipe.data), loaded.recipe.data, device)


def center_patches(images: Sequence[np.ndarray], data: DataConfig) -> np.ndarray:
    """The uint8 centre patches N×c×c×3 of stored images, resized to the recipe's image size first."""
    from alexrepro.loaders.presets import EvalPreset

    return EvalPreset.for_data(data).cut_all(images)


def center_batch(
    images: Sequence[np.ndarray], data: DataConfig, colour: Colour, device: torch.device
) -> tuple[torch.Tensor, np.ndarray]:
    """(net input N×3×c×c, uint8 centre patches N×c×c×3) of stored 256² images, as `eval --crops 1` sees them."""
    from alexrepro.loaders.presets import EvalPreset

    preset = EvalPreset.for_data(data)
    patches = preset.cut_all(images)
    return preset.finish(torch.from_numpy(patches), colour, device), patches


def iter_center_batches(
    dataset: Any, indices: Sequence[int], data: DataConfig, colour: Colour, device: torch.device, batch_size: int
) -> Iterator[tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    """(inputs, uint8 patches, labels) for the dataset's `indices`, in order, `batch_size` at a time."""
    for lo in range(0, len(indices), batch_size):
        chunk = [dataset[int(i)] for i in indices[lo : lo + batch_size]]
        x, patches = center_batch([im for im, _ in chunk], data, colour, device)
        yield x, patches, np.array([y for _, y in chunk], dtype=np.int64)


def pick_indices(n_total: int, n: int, seed: int) -> np.ndarray:
    """`n` distinct image indices of a split of `n_total`, drawn with `seed`, in increasing order."""
    if n < 1:
        raise UserError(f"ask for at least one image, got {n}")
    if n > n_total:
        raise UserError(f"the split holds {n_total} images, fewer than the {n} asked for; ask for fewer")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=n, replace=False))


# --------------------------------------------------------------------------------------------- output
def new_figure(width_in: float, height_in: float) -> Figure:
    """A headless figure of width_in × height_in inches at DPI (its PNG: that times DPI pixels)."""
    return Figure(figsize=(width_in, height_in), dpi=DPI)


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write the figure as a PNG atomically (never bbox 'tight': the pixel size stays figsize × DPI)."""
    path = Path(path)
    with described_write_errors(path, FIGURE_HINT), atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def save_rgb(image: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a uint8 H×W×3 array as a PNG of exactly those pixels, atomically."""
    from PIL import Image

    path = Path(path)
    with described_write_errors(path, FIGURE_HINT), atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB").save(tmp, format="PNG")
    return path
