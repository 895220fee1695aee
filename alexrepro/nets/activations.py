"""A net's activations at a named layer: the vectors of `alexrepro features` and `alexrepro.load(...).features`.

Every net in NETS names its learned layers conv1..conv5, fc6..fc8 (§3.5). A layer's activation is its
output after the nonlinearity that follows it (the ReLU of §3.1, or the recipe's tanh), before LRN and
pooling; fc8's is the logits. fc7's is the 4,096-d vector whose Euclidean neighbours Figure 4 shows (§6.1),
the same as `forward_features`. The net runs only as far as the layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from alexrepro.errors import UserError

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
LOGITS = "fc8"  # no nonlinearity after it: the class scores


class _Reached(Exception):
    """Raised from the layer's hook to end the forward pass there."""

    def __init__(self, output: torch.Tensor) -> None:
        super().__init__()
        self.output = output


def check_layer(net: nn.Module, layer: str) -> str:
    """The layer's name if the net has it; a one-line UserError naming the layers it has if not."""
    if layer not in LAYERS or not isinstance(getattr(net, layer, None), nn.Module):
        have = [name for name in LAYERS if isinstance(getattr(net, name, None), nn.Module)]
        raise UserError(f"unknown layer {layer!r}; use one of {', '.join(have)}")
    return layer


def layer_activations(net: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The activations of `layer` for inputs x (N×3×c×c), flattened to N×D."""
    module = getattr(net, check_layer(net, layer))

    def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        raise _Reached(output)

    handle = module.register_forward_hook(hook)
    try:
        net(x)
    except _Reached as reached:
        out = reached.output
    else:  # pragma: no cover - every layer of LAYERS runs in forward
        raise RuntimeError(f"{layer} did not run in the net's forward pass")
    finally:
        handle.remove()
    if layer != LOGITS:
        out = net.act(out) if hasattr(net, "act") else F.relu(out)  # torchvision's net: ReLU throughout
    return torch.flatten(out, 1)
