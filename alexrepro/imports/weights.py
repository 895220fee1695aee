"""What an import of published weights gives: our net's state_dict, the recipe that runs it as its source did."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexrepro.errors import UserError
from alexrepro.recipe import DataConfig, ModelConfig


@dataclass
class ImportedWeights:
    """Imported weights under our nets' state_dict keys, with the [model] and [data] values that reproduce
    the source's geometry and input conventions."""

    state_dict: dict[str, torch.Tensor]
    model: ModelConfig
    data: DataConfig
    mean_image: np.ndarray | None  # RGB H×W×3 float32 on 0–255 (as stats.h5's mean), or None
    source: dict[str, Any] = field(default_factory=dict)  # format, file, sha256, net, published accuracy

    def build(self) -> nn.Module:
        """The net the recipe describes with these weights loaded (strictly), in eval mode."""
        net = bare_net(self.model, self.data.crop_size)
        net.load_state_dict(self.state_dict, strict=True, assign=True)
        return net.eval()


def bare_net(model: ModelConfig, crop_size: int) -> nn.Module:
    """The recipe's net with its tensors on the meta device: shapes only, never initialised (no cost)."""
    from alexrepro.nets.alexnet import AlexNet
    from alexrepro.nets.torchvision_alexnet import build_torchvision_alexnet

    with torch.device("meta"):
        if model.arch == "torchvision-alexnet":
            return build_torchvision_alexnet(model, crop_size)
        return AlexNet(model, crop_size)


def read_weight_file(path: str | Path, what: str) -> bytes:
    """The bytes of a weights file, or a one-line UserError saying why it cannot be read."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a folder; give the {what} file itself")
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{what} file {p} does not exist") from None
    except OSError as e:
        raise UserError(f"cannot read {what} file {p}: {e.strerror or e}") from None


def sha256(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes (recorded so a checkpoint names the exact weights it came from)."""
    return hashlib.sha256(data).hexdigest()


def check_shape(key: str, got: tuple[int, ...], want: tuple[int, ...], path: Path, net: str) -> None:
    """Refuse, in one line naming the layer, a tensor whose shape does not fit our net."""
    if tuple(got) != tuple(want):
        raise UserError(
            f"{path}: {key} has shape {tuple(got)}, {net} needs {tuple(want)}: the file holds another net"
        )
