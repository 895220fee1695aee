"""Local response normalization (§3.3) as a pure function, with the two readings of α and per-tower groups.

b[c] = a[c] / (k + α' Σ_{j} a[j]²)^β, the sum over the `size` channels centred on c at the same position,
clipped at the edges of the channel range (or of the tower's half when groups = 2). α' = α as printed in
§3.3 ("printed"), or α / size as in PyTorch, Caffe and cuda-convnet ("divided-by-n").
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from alexrepro.errors import UserError

Convention = Literal["printed", "divided-by-n"]
CONVENTIONS: tuple[str, ...] = ("printed", "divided-by-n")


def effective_alpha(alpha: float, size: int, convention: str) -> float:
    """The α' that multiplies the sum of squares under a convention."""
    if convention == "printed":
        return alpha  # §3.3 as printed: α multiplies Σ a²
    if convention == "divided-by-n":
        return alpha / size  # PyTorch / Caffe / cuda-convnet: α/n multiplies Σ a²
    raise UserError(f"unknown LRN convention {convention!r}; use one of {', '.join(CONVENTIONS)}")


def local_response_norm(
    x: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    convention: str = "printed",
    groups: int = 1,
) -> torch.Tensor:
    """Normalise N×C×H×W activations over `size` adjacent channels, never across the `groups` channel blocks."""
    if x.dim() != 4:
        raise UserError(f"LRN expects N×C×H×W activations, got shape {tuple(x.shape)}")
    if size < 1:
        raise UserError(f"LRN size must be at least 1, got {size}")
    n, c, h, w = x.shape
    if groups < 1 or c % groups:
        raise UserError(f"LRN groups={groups} must divide the {c} channels evenly")
    a = effective_alpha(alpha, size, convention)
    # Square, fold each group into the batch so that the zero padding below is also the group edge,
    # then sum over a window of `size` channels: avg_pool3d over the channel axis times `size`.
    sq = x.square().reshape(n * groups, 1, c // groups, h, w)
    sq = F.pad(sq, (0, 0, 0, 0, size // 2, (size - 1) // 2))
    window_sum = F.avg_pool3d(sq, (size, 1, 1), stride=1) * size
    denom = (window_sum.reshape(n, c, h, w) * a + k).pow(beta)
    return x / denom


class LocalResponseNorm(nn.Module):
    """Module wrapper of `local_response_norm` with fixed hyper-parameters."""

    def __init__(
        self, size: int, alpha: float, beta: float, k: float, convention: str = "printed", groups: int = 1
    ) -> None:
        super().__init__()
        effective_alpha(alpha, size, convention)  # reject an unknown convention at build time
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.convention, self.groups = convention, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.convention, self.groups)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"convention={self.convention!r}, groups={self.groups}"
        )
