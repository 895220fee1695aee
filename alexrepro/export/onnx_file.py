"""`alexrepro export onnx`: the net as an ONNX graph with a dynamic batch, its input conventions in the metadata.

LRN (§3.3) needs care: ONNX's LRN operator multiplies the window's sum of squares by alpha / size and has
no groups, where the paper's net normalises each tower's maps apart (§3.2) and its α as printed multiplies
the sum itself. At export time every `LocalResponseNorm` of the net is replaced by `OnnxLRN`, the same
function written as ONNX has it: one LRN operator per tower on that tower's channels (one over all of them
for Caffe's weights, `model.lrn_across_towers`), with alpha = α'·size, α' the factor of the recipe's
convention (`nets/lrn.py: effective_alpha`). Its window (floor((size−1)/2) maps below, ceil((size−1)/2)
above) is ours for the odd sizes recipes allow.

The graph takes N×3×c×c float32 RGB centre patches, preprocessed as `alexrepro.load(...).preprocess` gives
them; with `mean_in_graph` it takes the patches' pixels (0–255) and subtracts the mean image's centre
patch itself (and scales by 1/(255·std) for torchvision's weights). The metadata entry "preprocess" says
which, and how to make the input; "alexrepro" holds the recipe, classes and origin. The graph is written
by PyTorch's TorchScript-based exporter (`dynamo=False`: the torch.export-based one needs onnxscript and
has no place for the LRN operator), then run in onnxruntime against the net before the file is kept.
"""

from __future__ import annotations

import copy
import io
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexrepro.errors import WorkFailed
from alexrepro.export.classifier import Classifier
from alexrepro.export.onnx_format import (
    FORMAT,
    INPUT,
    META,
    OPSET,
    OUTPUT,
    PIXELS,
    PREPROCESS,
    VERSION,
    need_onnx,
)
from alexrepro.nets.lrn import LocalResponseNorm, effective_alpha, local_response_norm


# --------------------------------------------------------------------------------------------- LRN
class _OnnxLRNOp(torch.autograd.Function):
    """ONNX's LRN on all channels of x: x / (bias + alpha/size · Σ x²)^beta over `size` adjacent maps."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:  # noqa: ANN001
        return local_response_norm(x, size, alpha, beta, bias, "divided-by-n", groups=1)

    @staticmethod
    def symbolic(g, x, size: int, alpha: float, beta: float, bias: float):  # noqa: ANN001, ANN205
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=bias)


class OnnxLRN(nn.Module):
    """`LocalResponseNorm` as ONNX operators: the channels split into `groups` towers, one LRN each."""

    def __init__(self, size: int, alpha: float, beta: float, k: float, convention: str, groups: int) -> None:
        super().__init__()
        self.size, self.beta, self.k, self.groups = size, beta, k, groups
        # ONNX divides its alpha by size; the factor that multiplies the sum is α' (printed: α; divided-by-n: α/n)
        self.onnx_alpha = effective_alpha(alpha, size, convention) * size

    @classmethod
    def like(cls, lrn: LocalResponseNorm) -> OnnxLRN:
        return cls(lrn.size, lrn.alpha, lrn.beta, lrn.k, lrn.convention, lrn.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        towers = x.chunk(self.groups, 1) if self.groups > 1 else (x,)
        out = [_OnnxLRNOp.apply(t, self.size, self.onnx_alpha, self.beta, self.k) for t in towers]
        return out[0] if len(out) == 1 else torch.cat(out, 1)


def with_onnx_lrn(net: nn.Module) -> nn.Module:
    """A copy of the net with each LocalResponseNorm replaced by the same function as ONNX operators."""
    net = copy.deepcopy(net)
    for name, module in list(net.named_modules()):
        if isinstance(module, LocalResponseNorm):
            parent_name, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent_name) if parent_name else net, attr, OnnxLRN.like(module))
    return net


# --------------------------------------------------------------------------------------------- the graph
class _Graph(nn.Module):
    """The exported function: optionally (pixels − the mean's centre patch) · scale, then the net."""

    def __init__(self, net: nn.Module, mean: torch.Tensor | None, scale: torch.Tensor | None) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", mean)  # the mean image's centre patch, 3×c×c (or None)
        self.register_buffer("scale", scale)  # channel-std's 1/(255·std), 3×1×1 (or None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x - self.mean
        if self.scale is not None:
            x = x * self.scale  # in this order, as the loaders' finish_batch: the same float32 results
        return self.net(x)


def graph_module(clf: Classifier, mean_in_graph: bool) -> _Graph:
    """The module to export: the classifier's net with ONNX's LRN, and its preprocessing when asked."""
    net = with_onnx_lrn(clf.net).cpu().eval()
    if not mean_in_graph:
        return _Graph(net, None, None)
    from alexrepro.loaders.augment import mean_crops
    from alexrepro.loaders.presets import EvalPreset

    colour = clf.colour()
    preset = EvalPreset.for_data(clf.recipe.data)
    mean = mean_crops(colour.mean, preset.params(1), clf.crop_size)[0].permute(2, 0, 1).contiguous().cpu()
    scale = None if colour.scale is None else colour.scale.reshape(3, 1, 1).cpu()
    return _Graph(net, mean, scale)


def preprocess_note(clf: Classifier, mean_in_graph: bool) -> dict[str, Any]:
    """How to make the graph's input from an image file (the "preprocess" metadata entry)."""
    from alexrepro.loaders.augment import center_offset

    d, c = clf.recipe.data, clf.crop_size
    scale = None if clf.colour().scale is None else [float(v) for v in clf.colour().scale.cpu()]
    return {
        "input": PIXELS if mean_in_graph else INPUT,
        "layout": f"N×3×{c}×{c} float32, RGB, channels first",
        "stored_image": "decode, convert to RGB, shorter side to 256 (bilinear, antialiased), central 256×256",
        "image_size": d.image_size, "crop_size": c, "crop_offset": center_offset(d.image_size, c),
        "steps": f"resize the 256×256 image to {d.image_size}×{d.image_size} (bilinear, antialiased), take the "
                 f"centre {c}×{c} patch, x = (pixels on 0-255 − mean) · scale",
        "mean": d.mean, "mean_in_graph": mean_in_graph, "mean_from": clf.mean.source,
        "channel_mean": [float(v) for v in clf.mean.channel_mean],
        "scale": scale,
        "note": ("the graph subtracts the mean image's centre patch and scales: give it the patch's pixels"
                 if mean_in_graph else
                 "subtract the mean (for mean = 'image' the per-pixel mean image's centre patch: export with "
                 "--mean-in-graph to carry it) and multiply by scale (none: 1) before the graph"),
    }


def export_onnx(checkpoint: Path, out: Path, mean_in_graph: bool = False, data: Path | None = None,
                opset: int = OPSET) -> dict[str, Any]:
    """Write the checkpoint's net as ONNX at `out` (atomically, after onnxruntime agrees with torch on it)."""
    from alexrepro.export.check import check_onnx
    from alexrepro.export.classifier import load
    from alexrepro.process.atomic import atomic_path, writable_file

    onnx, _ = need_onnx()
    writable_file(out, "--out")
    start = time.perf_counter()
    clf = load(checkpoint, device="cpu", data=data)
    graph = graph_module(clf, mean_in_graph)
    name = PIXELS if mean_in_graph else INPUT
    model = onnx.load_from_string(onnx_bytes(graph, torch.zeros(2, 3, clf.crop_size, clf.crop_size), name, opset))
    describe(model, clf, mean_in_graph)
    onnx.checker.check_model(model)
    with atomic_path(out) as tmp:
        onnx.save(model, os.fspath(tmp))
        check = check_onnx(tmp, clf)  # random images, the centre patch: the file is kept only if it agrees
        if not check["agree"]:
            raise WorkFailed(f"onnxruntime's logits differ from torch's by {check['max_abs_diff']:.3g} "
                             f"(more than {check['tolerance']:.3g}); the file was not written")
    return {
        "command": "export onnx", "checkpoint": str(checkpoint), "out": str(out), "bytes": Path(out).stat().st_size,
        "opset": opset, "input": name, "output": OUTPUT, "mean_in_graph": mean_in_graph,
        "lrn": lrn_summary(model), "check": {k: check[k] for k in ("max_abs_diff", "tolerance", "agree", "images")},
        "seconds": round(time.perf_counter() - start, 3),
    }


def onnx_bytes(module: nn.Module, example: torch.Tensor, input_name: str = INPUT, opset: int = OPSET) -> bytes:
    """The module traced on `example` as a serialised ONNX model: one input, one output, the batch dynamic."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on itself, and the tracer's on Python ints
        torch.onnx.export(module, (example,), buf, dynamo=False, opset_version=opset, input_names=[input_name],
                          output_names=[OUTPUT], dynamic_axes={input_name: {0: "batch"}, OUTPUT: {0: "batch"}})
    return buf.getvalue()


def describe(model: Any, clf: Classifier, mean_in_graph: bool) -> None:
    """Name the producer and write the "alexrepro" and "preprocess" metadata entries into the model."""
    from alexrepro.version import __version__

    model.producer_name, model.producer_version = "alexrepro", __version__
    recipe = clf.recipe
    model.doc_string = (f"{recipe.model.arch} ({recipe.name}) from {clf.path.name}: {recipe.model.num_classes} "
                        "classes; see the metadata entry 'preprocess' for the input")
    origin = None if clf.origin is None else clf.origin.to_payload()
    entries = {
        META: {"format": FORMAT, "version": VERSION, "arch": recipe.model.arch, "recipe_name": recipe.name,
               "recipe": recipe.to_dict(), "classes": clf.classes, "origin": origin},
        PREPROCESS: preprocess_note(clf, mean_in_graph),
    }
    del model.metadata_props[:]
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, json.dumps(value)


def lrn_summary(model: Any) -> list[dict[str, Any]]:
    """The graph's LRN operators and their attributes (what the per-tower rewrite produced)."""
    from onnx import helper

    return [{a.name: helper.get_attribute_value(a) for a in node.attribute}
            for node in model.graph.node if node.op_type == "LRN"]
