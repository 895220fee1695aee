"""torchvision's input normalisation as a pure function: RGB on 0–1, minus a channel mean, over a channel std.

Our loaders keep pixels on 0–255 and subtract a mean (§2); the same normalisation is that subtraction
with mean 255·mean_rgb, then a per-channel scale 1 / (255·std_rgb): `channel_std_mean_and_scale`
gives the two, so the loaders' float step can apply it without a second code path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def channel_std_normalize(
    x: torch.Tensor | np.ndarray, mean_rgb: Sequence[float], std_rgb: Sequence[float]
) -> torch.Tensor | np.ndarray:
    """(x / 255 − mean_rgb) / std_rgb for channels-last RGB pixels on 0–255 (…×3), as float32."""
    if x.shape[-1] != 3:
        raise ValueError(f"expected channels-last RGB (…×3), got shape {tuple(x.shape)}")
    if isinstance(x, torch.Tensor):
        mean = torch.tensor(mean_rgb, dtype=torch.float32, device=x.device)
        std = torch.tensor(std_rgb, dtype=torch.float32, device=x.device)
        return (x.to(torch.float32) / 255.0 - mean) / std
    mean, std = np.asarray(mean_rgb, np.float32), np.asarray(std_rgb, np.float32)
    return (np.asarray(x, np.float32) / np.float32(255.0) - mean) / std


def channel_std_mean_and_scale(
    mean_rgb: Sequence[float], std_rgb: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(m, s) on the 0–255 scale with (x − m)·s = channel_std_normalize(x): m = 255·mean, s = 1 / (255·std)."""
    mean = np.asarray(mean_rgb, np.float64) * 255.0
    scale = 1.0 / (np.asarray(std_rgb, np.float64) * 255.0)
    return mean.astype(np.float32), scale.astype(np.float32)
