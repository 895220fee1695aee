"""The colour set-up of an input (§2's mean image, §4.1's lighting basis): what `finish_batch` subtracts and adds.

`make_colour` turns a set's statistics (OUT's stats.h5) or a checkpoint's saved mean (`saved_mean`) into the
`Colour` on the device that both loader backends, `alexrepro predict` and the figures hand to `finish_batch`,
so each sees the same tensor for the same image. A recipe whose mean is "channel-std" (torchvision's weights)
takes its constants from the recipe instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from alexrepro.data.shards import IMAGE_SIZE
from alexrepro.data.stats import lighting_magnitudes
from alexrepro.errors import UserError
from alexrepro.loaders.augment import Colour, channel_std_mean_and_scale, mean_image_for

if TYPE_CHECKING:
    import torch

    from alexrepro.data.stats_file import Stats
    from alexrepro.recipe import DataConfig


@dataclass(frozen=True)
class MeanImage:
    """§2's colour statistics an input needs: the stored-size mean image and the channel mean."""

    mean: np.ndarray  # float32 256×256×3 on the 0–255 scale
    channel_mean: np.ndarray  # float64 (3,)
    source: str  # "checkpoint", or the stats.h5 they were read from


def saved_mean(saved: Mapping[str, Any] | None, out: Path | None, data: DataConfig | None = None) -> MeanImage:
    """The mean a checkpoint saved with its net (train and import store it), else OUT's stats.h5; UserError
    if neither. A recipe whose mean is "channel-std" needs neither: its constants are in the recipe."""
    import torch

    if data is not None and data.mean == "channel-std":
        m, _ = channel_std_mean_and_scale(data.mean_rgb, data.std_rgb)
        image = np.broadcast_to(m, (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
        return MeanImage(image, m.astype(np.float64), "recipe (channel-std)")
    mean = saved.get("mean") if isinstance(saved, Mapping) else None
    if mean is not None:
        mean = torch.as_tensor(mean).float().numpy()
        cm = saved.get("channel_mean")
        channel = torch.as_tensor(cm).double().numpy() if cm is not None else mean.reshape(-1, 3).mean(0)
        if mean.ndim == 1:  # a per-channel mean only
            channel = mean.astype(np.float64)
            mean = np.broadcast_to(mean.astype(np.float32), (IMAGE_SIZE, IMAGE_SIZE, 3)).copy()
        return MeanImage(mean, channel, "checkpoint")
    if out is None:
        raise UserError(
            "the checkpoint carries no mean image; give the prepared set it was trained on with --data OUT"
        )
    from alexrepro.data.stats_file import read_stats

    s = read_stats(out)
    source = str(Path(out) / "stats.h5")
    return MeanImage(np.asarray(s.mean, np.float32), np.asarray(s.channel_mean, np.float64), source)


def mean_colour(mean: np.ndarray, device: torch.device, scale: np.ndarray | None = None) -> Colour:
    """The Colour of a mean image already at the recipe's image size, without lighting (test time)."""
    import torch

    scale_t = None if scale is None else torch.as_tensor(scale, dtype=torch.float32).to(device)
    return Colour(torch.as_tensor(mean, dtype=torch.float32).to(device), None, None, scale_t)


def make_colour(
    stats: Stats | MeanImage, data: DataConfig, device: torch.device, lighting: bool = False
) -> Colour:
    """The recipe's colour set-up on `device`: §2's mean image (or a channel mean, and for "channel-std"
    torchvision's per-channel scale); if `lighting`, §4.1's basis."""
    scale = channel_std_mean_and_scale(data.mean_rgb, data.std_rgb)[1] if data.mean == "channel-std" else None
    colour = mean_colour(mean_image_for(stats.mean, stats.channel_mean, data), device, scale)
    if not lighting:
        return colour
    magnitudes = lighting_magnitudes(stats, data.lighting_scale)
    return Colour(colour.mean, np.asarray(stats.eigvec, np.float64), magnitudes, colour.scale)
