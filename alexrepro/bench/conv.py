"""Benchmark the net's grouped convolutions against the same FLOPs ungrouped (`alexrepro bench conv`).

§3.2's two towers make conv2, conv4 and conv5 grouped convolutions (groups = 2): each output map sees
only its tower's input maps. Libraries tune grouped convolutions less than plain ones, so a grouped
layer may cost more per FLOP. For each of conv1–conv5 on its real input shape (forward and backward:
the input gradient where the net needs one, and the weight gradient), this times

  net          the layer as the net has it (groups = 2 for conv2/4/5, 1 for conv1/3)
  same_flops   an ungrouped convolution with half the input maps: the same FLOPs and output shape
  full         the ungrouped convolution over all input maps (twice the FLOPs)
  two_convs    the two towers as two convolutions on the halves, joined: the grouped layer's function, as
               the net runs it with run.grouped_conv = "split" (nets/alexnet.py: TowerConv2d)

in each memory format (NCHW, channels_last) and, on CUDA, with cuDNN's autotuner off and on, the
variants taking turns. It reports ms per GFLOP of each and the ratios: grouped ÷ same FLOPs ungrouped
(how much more a FLOP costs grouped) and two convolutions ÷ grouped (whether splitting pays), with how
far the two formulations' outputs and gradients lie apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from alexrepro.bench.machine import machine_info
from alexrepro.bench.timing import sig, time_interleaved
from alexrepro.errors import UserError
from alexrepro.nets.alexnet import (
    GROUPED,
    TowerConv2d,
    conv_channels,
    conv_geometry,
    feature_sizes,
    set_grouped_conv,
)
from alexrepro.recipe_reader import load_recipe
from alexrepro.runtime import autocast_dtype, resolve_device

SWITCH_ABOVE = 1.3  # grouped ÷ ungrouped cost per FLOP above which the two-convolution form is worth a switch


@dataclass(frozen=True)
class ConvShape:
    """One conv layer of the net: its input (maps, side), outputs, kernel, stride, padding and groups."""

    name: str
    c_in: int
    side: int
    c_out: int
    kernel: int
    stride: int
    pad: int
    groups: int
    input_grad: bool  # conv1's input is the image: the net computes no gradient for it

    def out_side(self) -> int:
        return (self.side + 2 * self.pad - self.kernel) // self.stride + 1

    def gflop(self, n: int, c_in_per_group: int, c_out: int | None = None) -> float:
        """GFLOP of forward + backward at batch n (2 per multiply-add; backward: weight and maybe input grad)."""
        macs = n * self.out_side() ** 2 * (c_out or self.c_out) * c_in_per_group * self.kernel ** 2
        return 2 * macs * (3 if self.input_grad else 2) / 1e9


def conv_shapes(recipe: str, overrides: tuple[str, ...]) -> tuple[list[ConvShape], int]:
    """The recipe net's five conv layers on their real input shapes, and the recipe's batch size."""
    loaded = load_recipe(recipe, list(overrides))
    cfg, crop = loaded.model, loaded.data.crop_size
    channels, geometry, sizes = conv_channels(cfg), conv_geometry(cfg), feature_sizes(cfg, crop)
    towers = 2 if cfg.layout == "two-tower" else 1
    inputs = {"conv1": (3, crop), "conv2": (channels[0], sizes["pool1"]), "conv3": (channels[1], sizes["pool2"]),
              "conv4": (channels[2], sizes["conv3"]), "conv5": (channels[3], sizes["conv4"])}
    shapes = []
    for i, name in enumerate(("conv1", "conv2", "conv3", "conv4", "conv5")):
        c_in, side = inputs[name]
        k, stride, pad = geometry[name]
        shapes.append(ConvShape(name, c_in, side, channels[i], k, stride, pad, towers if name in GROUPED else 1,
                                name != "conv1"))
    return shapes, loaded.optim.batch_size


def split_copy(grouped: nn.Conv2d) -> TowerConv2d:
    """The grouped layer with its weights, as the net runs it with run.grouped_conv = "split": one convolution
    per tower on that tower's maps, joined."""
    split = TowerConv2d(grouped.in_channels, grouped.out_channels, grouped.kernel_size, grouped.stride,
                        grouped.padding, groups=grouped.groups, device=grouped.weight.device,
                        dtype=grouped.weight.dtype)
    split.load_state_dict(grouped.state_dict())
    return set_grouped_conv(split, "split")


def _variants(s: ConvShape, n: int) -> dict[str, tuple[nn.Module, int, float]]:
    """Each variant of the layer: (module, input maps, GFLOP forward + backward)."""
    def conv(c_in: int, groups: int = 1) -> nn.Conv2d:
        return nn.Conv2d(c_in, s.c_out, s.kernel, s.stride, s.pad, groups=groups)

    net = conv(s.c_in, s.groups)
    out = {"net": (net, s.c_in, s.gflop(n, s.c_in // s.groups))}
    if s.groups == 2:
        out["same_flops"] = (conv(s.c_in // 2), s.c_in // 2, s.gflop(n, s.c_in // 2))
        out["full"] = (conv(s.c_in), s.c_in, s.gflop(n, s.c_in))
        out["two_convs"] = (split_copy(net), s.c_in, s.gflop(n, s.c_in // 2))
    return out


def _step(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        module(x).backward(grad)
        for p in module.parameters():
            p.grad = None
        x.grad = None

    return step


def _agreement(s: ConvShape, n: int, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    """How far the two-convolution form lies from the grouped layer (output, input and weight gradients),
    relative to the largest magnitude of each, with the same weights and input."""
    gen = torch.Generator().manual_seed(0)
    grouped = nn.Conv2d(s.c_in, s.c_out, s.kernel, s.stride, s.pad, groups=2).to(device, dtype)
    split = split_copy(grouped)
    x = torch.randn(n, s.c_in, s.side, s.side, generator=gen).to(device, dtype)
    g = torch.randn(n, s.c_out, s.out_side(), s.out_side(), generator=gen).to(device, dtype)
    results = []
    for module in (grouped, split):
        xi = x.clone().requires_grad_(True)
        y = module(xi)
        y.backward(g)
        results.append((y.detach(), xi.grad, module.weight.grad))
    rel = [float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in zip(*results, strict=True)]
    return {"output": rel[0], "input_grad": rel[1], "weight_grad": rel[2], "bitwise_equal": all(r == 0 for r in rel)}


def _setting(shapes: list[ConvShape], n: int, device: torch.device, dtype: torch.dtype, channels_last: bool,
             steps: int, rounds: int) -> dict[str, Any]:
    """Every layer's variants in one memory format, taking turns: seconds, ms per GFLOP and the ratios."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    loops, flops = {}, {}
    for s in shapes:
        for name, (module, c_in, gflop) in _variants(s, n).items():
            module = module.to(device, dtype).to(memory_format=fmt)
            x = torch.randn(n, c_in, s.side, s.side, generator=gen).to(device, dtype).contiguous(memory_format=fmt)
            x.requires_grad_(s.input_grad)
            grad = torch.randn(n, s.c_out, s.out_side(), s.out_side(), generator=gen).to(device, dtype)
            loops[f"{s.name}/{name}"] = _step(module, x, grad.contiguous(memory_format=fmt))
            flops[f"{s.name}/{name}"] = gflop
    secs = time_interleaved(loops, steps, 2, rounds, device)
    layers: dict[str, Any] = {}
    for key, t in secs.items():
        layer, variant = key.split("/")
        layers.setdefault(layer, {})[variant] = {"seconds": sig(t), "gflop": float(f"{flops[key]:.6g}"),
                                                 "ms_per_gflop": sig(1e3 * t / flops[key])}
    for v in layers.values():
        if "same_flops" in v:
            per = {k: r["ms_per_gflop"] for k, r in v.items()}
            v["grouped_vs_ungrouped_per_flop"] = sig(per["net"] / per["same_flops"])
            v["grouped_vs_full_per_flop"] = sig(per["net"] / per["full"])
            v["two_convs_vs_grouped_time"] = sig(v["two_convs"]["seconds"] / v["net"]["seconds"])
    grouped = [v for v in layers.values() if "same_flops" in v]
    total = {k: sum(v[k]["seconds"] for v in grouped) for k in ("net", "same_flops", "two_convs")} if grouped else {}
    summary = {"net_seconds_all_layers": sig(sum(v["net"]["seconds"] for v in layers.values()))}
    if total:
        summary.update({"grouped_vs_ungrouped_per_flop": sig(total["net"] / total["same_flops"]),
                        "two_convs_vs_grouped_time": sig(total["two_convs"] / total["net"])})
    return {"layers": layers, **summary}


def bench_conv(recipe: str = "paper", overrides: tuple[str, ...] = (), batch_size: int | None = None,
               steps: int = 10, rounds: int = 3, device: str = "cpu", precision: str = "fp32") -> dict[str, Any]:
    """Grouped conv layers against the same FLOPs ungrouped and two convolutions, per memory format and autotuner."""
    if steps < 1 or rounds < 1:
        raise UserError(f"--steps and --rounds must be at least 1, got {steps} and {rounds}")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    dev = resolve_device(device)
    dtype = autocast_dtype(precision) or torch.float32
    shapes, recipe_batch = conv_shapes(recipe, overrides)
    n = batch_size or recipe_batch
    tuner = (False, True) if dev.type == "cuda" else (False,)  # cuDNN's autotuner does nothing on a CPU
    settings: dict[str, Any] = {}
    before = torch.backends.cudnn.benchmark
    try:
        for benchmark in tuner:
            torch.backends.cudnn.benchmark = benchmark
            for channels_last in (False, True):
                name = f"{'channels_last' if channels_last else 'nchw'}{', cudnn.benchmark' if benchmark else ''}"
                settings[name] = _setting(shapes, n, dev, dtype, channels_last, steps, rounds)
    finally:
        torch.backends.cudnn.benchmark = before
    grouped = [s for s in shapes if s.groups == 2]
    agreement = {s.name: _agreement(s, min(n, 8), dev, dtype) for s in grouped}
    report: dict[str, Any] = {
        "recipe": recipe, "batch_size": n, "device": str(dev), "precision": precision, "steps": steps, "rounds": rounds,
        "shapes": [vars(s) | {"out_side": s.out_side()} for s in shapes], "settings": settings,
        "two_convs_agreement": agreement, "switch_above": SWITCH_ABOVE,
    }
    # the setting training runs in: channels_last with the autotuner on CUDA (alexrepro.training.build sets it)
    training = "channels_last, cudnn.benchmark" if dev.type == "cuda" else "channels_last"
    report["training_setting"] = training
    ratio = settings[training].get("grouped_vs_ungrouped_per_flop")
    if ratio is not None:
        report["grouped_vs_ungrouped_per_flop"] = ratio
        report["two_convs_vs_grouped_time"] = settings[training]["two_convs_vs_grouped_time"]
        report["switch_suggested"] = bool(ratio > SWITCH_ABOVE and settings[training]["two_convs_vs_grouped_time"] < 1)
    report["machine"] = machine_info()
    return report
