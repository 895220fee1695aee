"""torchvision's `alexnet`: the "one weird trick" variant (Krizhevsky 2014), not the net of §3.

One tower of 64-192-384-256-256 kernels (§3.5's net has 96-256-384-384-256 in two towers), no LRN,
no grouped convolutions, a 6×6 adaptive average pool before fc6, and dropout on the inputs of fc6 and
fc7 (as torchvision places it; §4.2 drops the outputs of fc6 and fc7, the same positions). Layers keep
our names (conv1..conv5, fc6..fc8) so that the optimiser's groups, the summary and the figures read
this net as they read ours; alexrepro.imports.torchvision maps torchvision's keys onto them.
From the recipe's [model] section it reads num_classes, width, fc_width and dropout; weights start
as torchvision's do (PyTorch's default initialisation), since this net exists for imported weights.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from alexrepro.errors import UserError
from alexrepro.recipe import ModelConfig

KERNELS = (64, 192, 384, 256, 256)  # torchvision's alexnet, conv1..conv5
# (kernel, stride, padding) as torchvision's features: 11/4/2, 5/1/2, then 3/1/1.
GEOMETRY = {"conv1": (11, 4, 2), "conv2": (5, 1, 2), "conv3": (3, 1, 1), "conv4": (3, 1, 1), "conv5": (3, 1, 1)}
POOLED = 6  # the adaptive average pool's output side


def torchvision_channels(cfg: ModelConfig) -> tuple[int, ...]:
    """Kernel counts of conv1..conv5 at the recipe's width (1.0 gives torchvision's)."""
    return tuple(max(1, round(c * cfg.width)) for c in KERNELS)


def pool5_size(crop_size: int) -> int:
    """Side of pool5's maps for square crops (224 → 6); the adaptive pool then makes it 6 whatever it is."""
    s = crop_size
    for name in ("conv1", "pool", "conv2", "pool", "conv3", "conv4", "conv5", "pool"):
        if name == "pool":
            s = (s - 3) // 2 + 1 if s >= 3 else 0
        else:
            k, stride, pad = GEOMETRY[name]
            s = (s + 2 * pad - k) // stride + 1
        if s < 1:
            raise UserError(f"crop size {crop_size} is too small for torchvision's alexnet (use 224)")
    return s


class TorchvisionAlexNet(nn.Module):
    """torchvision.models.alexnet's function, with our layer names and fc7 features."""

    def __init__(self, cfg: ModelConfig, crop_size: int) -> None:
        super().__init__()
        self.cfg = dataclasses.replace(cfg)  # a private copy, as AlexNet keeps
        self.crop_size = crop_size
        pool5_size(crop_size)
        c1, c2, c3, c4, c5 = torchvision_channels(cfg)
        for name, c_in, c_out in (("conv1", 3, c1), ("conv2", c1, c2), ("conv3", c2, c3),
                                  ("conv4", c3, c4), ("conv5", c4, c5)):
            k, stride, pad = GEOMETRY[name]
            setattr(self, name, nn.Conv2d(c_in, c_out, k, stride=stride, padding=pad))
        self.pool = nn.MaxPool2d(3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((POOLED, POOLED))
        self.drop6 = nn.Dropout(cfg.dropout)  # torchvision: dropout before fc6 and before fc7
        self.fc6 = nn.Linear(c5 * POOLED * POOLED, cfg.fc_width)
        self.drop7 = nn.Dropout(cfg.dropout)
        self.fc7 = nn.Linear(cfg.fc_width, cfg.fc_width)
        self.fc8 = nn.Linear(cfg.fc_width, cfg.num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fc7 activations after the ReLU (4096-d at full width), as AlexNet.forward_features."""
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = F.relu(self.conv4(x))
        x = self.pool(F.relu(self.conv5(x)))
        x = torch.flatten(self.avgpool(x), 1)
        x = F.relu(self.fc6(self.drop6(x)))
        return F.relu(self.fc7(self.drop7(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits)."""
        return self.fc8(self.forward_features(x))


def build_torchvision_alexnet(cfg: ModelConfig, crop_size: int) -> TorchvisionAlexNet:
    """torchvision's alexnet for square crops of `crop_size` (any size from 63 up; 224 as torchvision)."""
    if crop_size < 1:
        raise UserError(f"crop size must be positive, got {crop_size}")
    return TorchvisionAlexNet(cfg, crop_size)
