"""stats.h5: the colour statistics of a prepared set's training split (mean image, channel mean, PCA).

    mean           float32 256×256×3, §2's per-pixel mean image (RGB, 0–255)
    channel_mean   float64 (3,)
    pixel_count    attribute: pixels that went into the statistics
    eigval/eigvec  after `alexrepro pca`: §4.1's eigenvalues (3,) and eigenvectors (3×3, columns)
    scale          attribute: the pixel scale of every number above ("0-255")

Computing them is alexrepro.data.stats; the file is described in docs/FORMAT.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from alexrepro.data.shards import IMAGE_SIZE
from alexrepro.errors import UserError
from alexrepro.process.atomic import atomic_path

STATS = "stats.h5"


@dataclass
class Stats:
    """Colour statistics of the training split, all on the 0–255 scale (RGB)."""

    mean: np.ndarray  # float32 256×256×3: §2's per-pixel mean image
    channel_mean: np.ndarray  # float64 (3,)
    pixel_count: int
    eigval: np.ndarray | None = None  # (3,), descending: §4.1's λ_i of the RGB covariance
    eigvec: np.ndarray | None = None  # 3×3, columns are the eigenvectors p_i
    scale: str = "0-255"  # the pixel scale the numbers are stated on


def write_stats(out: str | os.PathLike[str], stats: Stats) -> None:
    """Write stats.h5 atomically (replacing the whole file)."""
    with atomic_path(Path(out) / STATS) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("mean", data=np.asarray(stats.mean, dtype=np.float32))
            f.create_dataset("channel_mean", data=np.asarray(stats.channel_mean, dtype=np.float64))
            f.attrs["pixel_count"] = int(stats.pixel_count)
            f.attrs["scale"] = stats.scale
            if stats.eigval is not None and stats.eigvec is not None:
                f.create_dataset("eigval", data=np.asarray(stats.eigval, dtype=np.float64))
                f.create_dataset("eigvec", data=np.asarray(stats.eigvec, dtype=np.float64))


def read_stats(out: str | os.PathLike[str], need_pca: bool = False, with_pca: bool = True) -> Stats:
    """Read stats.h5, every dataset's shape, type and values checked; a UserError naming the command to run if
    it (or the PCA) is missing or damaged. `with_pca` False leaves a stored PCA unread (pca, about to redo it)."""
    path = Path(out) / STATS
    if not path.is_file():
        raise UserError(f"{out} has no {STATS} (the mean image); finish preparing it first: alexrepro prep SRC {out}")
    redo_mean = f"delete it and run alexrepro prep SRC {out} again (it recomputes the mean), then alexrepro pca {out}"
    try:
        with h5py.File(path, "r") as f:
            pca = with_pca and ("eigval" in f or "eigvec" in f)
            stats = Stats(
                mean=_dataset(f, "mean"),
                channel_mean=_dataset(f, "channel_mean"),
                pixel_count=int(f.attrs["pixel_count"]),
                eigval=_dataset(f, "eigval") if pca else None,
                eigvec=_dataset(f, "eigvec") if pca else None,
                scale=str(f.attrs.get("scale", "0-255")),
            )
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        detail = e.args[0] if isinstance(e, KeyError) and e.args else e  # str(KeyError) adds quotes
        raise UserError(f"{path} is corrupt ({' '.join(str(detail).split())[:200]}); {redo_mean}") from None
    problem = _misshapen(stats, ("mean", "channel_mean"))
    if problem:
        raise UserError(f"{path} is corrupt ({problem}); {redo_mean}")
    problem = _misshapen(stats, ("eigval", "eigvec")) if stats.eigval is not None else None
    if problem:
        raise UserError(f"{path} is corrupt ({problem}); run alexrepro pca {out} again")
    if need_pca and stats.eigval is None:
        raise UserError(f"{out} has no PCA colour statistics; run: alexrepro pca {out}")
    return stats


# What each dataset of stats.h5 holds: the mean image is §2's 256×256 RGB, the PCA §4.1's 3 eigenpairs.
SHAPES = {"mean": (IMAGE_SIZE, IMAGE_SIZE, 3), "channel_mean": (3,), "eigval": (3,), "eigvec": (3, 3)}


def _dataset(f: h5py.File, name: str) -> np.ndarray:
    """A dataset's values; a KeyError naming it when it is missing or not a dataset."""
    item = f.get(name)
    if not isinstance(item, h5py.Dataset):
        raise KeyError(f"no {name} dataset")
    return item[()]


def _misshapen(stats: Stats, names: tuple[str, ...]) -> str | None:
    """What is wrong with these arrays of `stats` (shape, type, a value not finite), or None."""
    for name in names:
        value = np.asarray(getattr(stats, name))
        want = SHAPES[name]
        if value.shape != want:
            return f"{name} is {'×'.join(map(str, value.shape)) or 'a scalar'}, not {'×'.join(map(str, want))}"
        if value.dtype.kind != "f":
            return f"{name} holds {value.dtype}, not floating-point numbers"
        if not np.isfinite(value).all():
            return f"{name} holds values that are not finite"
    return None
