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


def read_stats(out: str | os.PathLike[str], need_pca: bool = False) -> Stats:
    """Read stats.h5; a UserError naming the command to run if it (or the PCA) is missing."""
    path = Path(out) / STATS
    if not path.is_file():
        raise UserError(f"{out} has no {STATS} (the mean image); finish preparing it first: alexrepro prep SRC {out}")
    try:
        with h5py.File(path, "r") as f:
            stats = Stats(
                mean=f["mean"][:],
                channel_mean=f["channel_mean"][:],
                pixel_count=int(f.attrs["pixel_count"]),
                eigval=f["eigval"][:] if "eigval" in f else None,
                eigvec=f["eigvec"][:] if "eigvec" in f else None,
                scale=str(f.attrs.get("scale", "0-255")),
            )
    except (OSError, KeyError, ValueError) as e:
        raise UserError(
            f"{path} is corrupt ({' '.join(str(e).split())}); delete it and run alexrepro prep SRC {out} again "
            f"(it recomputes the mean), then alexrepro pca {out}"
        ) from None
    if need_pca and stats.eigval is None:
        raise UserError(f"{out} has no PCA colour statistics; run: alexrepro pca {out}")
    return stats
