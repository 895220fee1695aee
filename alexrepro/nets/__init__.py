"""The nets: the paper's AlexNet (§3), its LRN (§3.3), summaries, and `NETS`, the registry of nets by name.

A recipe's `model.arch` names an entry of `NETS`; `build_net` builds it. A new net: a builder
`(ModelConfig, crop_size) -> nn.Module` and one entry in `NETS`; the recipe then accepts its name
and the contract tests (tests/test_contracts.py) run on it. This module imports no torch, so the
recipe can check names against it cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from alexrepro.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from alexrepro.recipe import ModelConfig, RunConfig


def _alexnet(model_cfg: ModelConfig, crop_size: int) -> nn.Module:
    from alexrepro.nets.alexnet import build_model

    return build_model(model_cfg, crop_size)


def _torchvision_alexnet(model_cfg: ModelConfig, crop_size: int) -> nn.Module:
    from alexrepro.nets.torchvision_alexnet import build_torchvision_alexnet

    return build_torchvision_alexnet(model_cfg, crop_size)


# THE list of nets: recipe validation (model.arch) derives its choices from it. Each builder takes the
# recipe's [model] section and the crop size and returns the net initialised as the section says.
NETS: dict[str, Callable[[ModelConfig, int], nn.Module]] = {
    "alexnet": _alexnet,  # §3's net, in either layout (two-tower or one-tower) and any width
    # torchvision's "one weird trick" variant (no LRN, no groups), for its published weights
    "torchvision-alexnet": _torchvision_alexnet,
}


def build_net(model_cfg: ModelConfig, crop_size: int) -> nn.Module:
    """The net `model_cfg.arch` names, for square crops of `crop_size`, initialised by `model_cfg.init`."""
    if model_cfg.arch not in NETS:
        raise UserError(f"unknown net {model_cfg.arch!r}; model.arch must be one of {', '.join(NETS)}")
    return NETS[model_cfg.arch](model_cfg, crop_size)


def set_run_kernels(net: nn.Module, run: RunConfig) -> nn.Module:
    """The recipe's run options that choose `net`'s kernels, not its function: run.lrn_kernel for every LRN
    layer, run.grouped_conv for conv2/4/5's towers. Apply after model_parallel, which builds its own layers.
    Returns `net`."""
    from alexrepro.nets.alexnet import set_grouped_conv
    from alexrepro.nets.lrn import set_lrn_kernel

    return set_grouped_conv(set_lrn_kernel(net, run.lrn_kernel), run.grouped_conv)


__all__ = ["NETS", "build_net", "set_run_kernels"]
