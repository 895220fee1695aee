"""Per-layer output shapes, parameters, multiply-adds and neurons of the net, beside the paper's own counts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from alexrepro.nets import build_net
from alexrepro.nets.alexnet import feature_sizes
from alexrepro.recipe import ModelConfig, Recipe

# §3.5's table of layers, counted: the two-GPU net with grouped conv2/4/5 and 1000 classes; the abstract says
# "60 million parameters and 650,000 neurons".
PAPER_PARAMS = 60_965_224
PAPER_PARAMS_STATED = "60 million"
PAPER_NEURONS_STATED = 650_000
# §3.5: "the number of neurons in the network's remaining layers is given by 253,440–186,624–64,896–64,896–
# 43,264–4096–4096–1000". conv1's 253,440 is not 55·55·96 = 290,400, a known inconsistency in the paper.
PAPER_NEURONS_PER_LAYER = {
    "conv1": 253_440,
    "conv2": 186_624,
    "conv3": 64_896,
    "conv4": 64_896,
    "conv5": 43_264,
    "fc6": 4096,
    "fc7": 4096,
    "fc8": 1000,
}
PAPER_CROP = 224  # §4.1: 224×224 patches


@dataclass
class LayerRow:
    """One layer of the net: its output per image and what it costs."""

    name: str
    kind: str  # conv | lrn | pool | fc
    output: tuple[int, ...]  # C×H×W for maps, (F,) for FC layers; per image
    params: int
    macs: int  # multiply-adds per image in the forward pass (conv and FC only)
    neurons: int  # output units of a learned layer (the paper's count); 0 for LRN and pooling


def conv_macs(out_c: int, out_h: int, out_w: int, k: int, in_c: int, groups: int) -> int:
    """Multiply-adds of a k×k convolution: out_h·out_w·out_c·k·k·in_c/groups."""
    return out_h * out_w * out_c * k * k * in_c // groups


def fc_macs(n_in: int, n_out: int) -> int:
    """Multiply-adds of a fully connected layer: in·out."""
    return n_in * n_out


def summarize(model: nn.Module, crop_size: int) -> list[LayerRow]:
    """Run one blank crop through `model` (any device, meta included) and describe every layer it passes."""
    rows: list[LayerRow] = []

    def record(name: str, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        shape = tuple(output.shape[1:])
        params = sum(p.numel() for p in module.parameters(recurse=False))
        if isinstance(module, nn.Conv2d):
            c, h, w = shape
            macs = conv_macs(c, h, w, module.kernel_size[0], module.in_channels, module.groups)
            rows.append(LayerRow(name, "conv", shape, params, macs, c * h * w))
        elif isinstance(module, nn.Linear):
            rows.append(
                LayerRow(
                    name, "fc", shape, params, fc_macs(module.in_features, module.out_features), shape[0]
                )
            )
        elif isinstance(module, nn.MaxPool2d):
            rows.append(LayerRow(name, "pool", shape, params, 0, 0))
        else:
            rows.append(LayerRow(name, "lrn", shape, params, 0, 0))

    handles = []
    for name, module in model.named_children():
        if isinstance(module, (nn.Dropout, nn.Identity)):
            continue  # dropout and a switched-off LRN change no shape and cost nothing
        handles.append(module.register_forward_hook(lambda m, i, o, name=name: record(name, m, i, o)))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, crop_size, crop_size, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return rows


def summary_totals(rows: list[LayerRow]) -> dict[str, int]:
    """Total parameters, forward multiply-adds and neurons per image over the rows."""
    return {
        "params": sum(r.params for r in rows),
        "macs": sum(r.macs for r in rows),
        "neurons": sum(r.neurons for r in rows),
    }


def meta_model(cfg: ModelConfig, crop_size: int) -> nn.Module:
    """The net built on the meta device: shapes and counts without allocating or initialising weights."""
    with torch.device("meta"):
        return build_net(cfg, crop_size)


def forward_macs(cfg: ModelConfig, crop_size: int) -> int:
    """Multiply-adds of one forward pass of one image through the net a [model] section describes."""
    return summary_totals(summarize(meta_model(cfg, crop_size), crop_size))["macs"]


def is_paper_net(cfg: ModelConfig, crop_size: int) -> bool:
    """Whether the net has the paper's two-GPU shapes (same layers and map sizes), so its counts compare."""
    paper = ModelConfig()
    same = ("arch", "num_classes", "layout", "width", "fc_width")
    if any(getattr(cfg, f) != getattr(paper, f) for f in same):
        return False
    return feature_sizes(cfg, crop_size) == feature_sizes(paper, PAPER_CROP)


def paper_counts() -> dict[str, Any]:
    """The paper's own parameter and neuron counts (abstract, §3.5), as `model summary` reports them."""
    return {
        "params_exact": PAPER_PARAMS,
        "params_stated": PAPER_PARAMS_STATED,
        "neurons_stated": PAPER_NEURONS_STATED,
        "neurons_per_layer": PAPER_NEURONS_PER_LAYER,
        "neurons_per_layer_total": sum(PAPER_NEURONS_PER_LAYER.values()),
    }


def model_report(recipe: Recipe) -> dict[str, Any]:
    """Every layer of the net `recipe` builds and the totals, beside the paper's counts (`alexrepro model summary`)."""
    crop = recipe.data.crop_size
    rows = summarize(meta_model(recipe.model, crop), crop)
    totals = summary_totals(rows)
    return {
        "recipe": recipe.name,
        "crop_size": crop,
        "layout": recipe.model.layout,
        "layers": [dataclasses.asdict(r) for r in rows],
        "total_params": totals["params"],
        "total_macs": totals["macs"],
        "total_neurons": totals["neurons"],
        "paper_net": is_paper_net(recipe.model, crop),
        "matches_paper_params": totals["params"] == PAPER_PARAMS,
        "paper": paper_counts(),
    }
