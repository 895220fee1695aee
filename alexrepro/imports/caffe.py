"""Caffe's bvlc_alexnet onto the paper's net (§3), with the recipe that reproduces Caffe's conventions.

bvlc_alexnet is §3's two-tower net: conv2, conv4 and conv5 grouped in two, LRN after the ReLU and
before the max-pooling of conv1 and conv2, 3×3 stride-2 pooling. Its weights load as they are; what
differs from our paper recipe is recorded in the recipe the import returns (docs/FAITHFULNESS.md):

- 227×227 crops with no conv1 padding (also 55×55 maps), where ours pads 224 crops by 2;
- BGR input: conv1's input channels are reversed here so that the net reads our RGB images;
- LRN with k = 1 (§3.3: k = 2) and α divided by n, its window over all of a layer's maps (Caffe's LRN
  layer has no groups, so it crosses the towers' boundary, where §3.3 normalises within each GPU);
- inputs on 0–255 minus a 256×256 per-pixel mean image (imagenet_mean.binaryproto, BGR, read here as RGB).
Caffe's pooling rounds output sizes up, ours down; on AlexNet's maps (55, 27, 13) both give 27, 13, 6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from alexrepro.errors import UserError
from alexrepro.imports.caffe_proto import Layer, Net, ProtoError, parse_blob, parse_net
from alexrepro.imports.weights import ImportedWeights, bare_net, check_shape, read_weight_file, sha256
from alexrepro.nets.alexnet import LAYERS, conv_geometry
from alexrepro.recipe import DataConfig, ModelConfig

CAFFE_CROP = 227  # bvlc_alexnet's train_val.prototxt: crop_size 227
CAFFE_IMAGE = 256  # its images and mean: 256×256
# bvlc_alexnet's deploy.prototxt LRN values, used when a file carries no LRN layer parameters.
CAFFE_LRN = {"local_size": 5, "alpha": 1e-4, "beta": 0.75, "norm_region": 0, "k": 1.0}
# Published accuracy of bvlc_alexnet on ILSVRC-2012 val (models/bvlc_alexnet/readme.md in Caffe's model zoo):
# the centre 227 crop of each image warped to 256×256 (convert_imageset), minus the mean image.
PUBLISHED = {"top1_acc": 57.1, "top5_acc": 80.2, "crops": 1, "resize": "warp",
             "protocol": "centre crop, 227 of the 256×256 warped image",
             "reference": "Caffe model zoo, bvlc_alexnet"}
LAYER_TYPES = {name: "Convolution" if name.startswith("conv") else "InnerProduct" for name in LAYERS}
BGR_TO_RGB = [2, 1, 0]
NET = "the paper's AlexNet (bvlc_alexnet)"


def import_caffe(model_path: str | Path, mean_path: str | Path | None = None) -> ImportedWeights:
    """A .caffemodel of bvlc_alexnet (either layer format) as our two-tower net's weights and Caffe's recipe.

    The mean image comes from `mean_path` (imagenet_mean.binaryproto) when given; without it the
    recipe still says mean = "image", to be taken from the prepared set's stats.
    """
    path = Path(model_path)
    raw = read_weight_file(path, "caffemodel")
    try:
        net = parse_net(raw)
    except ProtoError as e:
        raise UserError(f"{path} is not a readable caffemodel ({e}); give Caffe's bvlc_alexnet.caffemodel") from None
    layers = _layers_by_name(net, path)
    lrn = _check_order_and_lrn(net, path)
    model, data = caffe_recipe(layers, lrn)
    state = _state_dict(layers, model, path)
    mean = read_caffe_mean(mean_path) if mean_path is not None else None
    source = {"format": "caffe", "file": path.name, "sha256": sha256(raw), "net": net.name,
              "layer_format": net.format, "published": dict(PUBLISHED)}
    return ImportedWeights(state, model, data, mean, source)


def caffe_recipe(layers: dict[str, Layer], lrn: dict[str, float]) -> tuple[ModelConfig, DataConfig]:
    """[model] and [data] values that run bvlc_alexnet's weights as Caffe does (see the module docstring)."""
    conv1 = layers["conv1"].conv or {}
    pad_h, pad_w = conv1.get("pad", (0, 0))
    if pad_h != pad_w:
        raise UserError(f"conv1 pads {pad_h} rows but {pad_w} columns; the paper's net pads both sides alike")
    model = ModelConfig(
        arch="alexnet",
        num_classes=_outputs(layers["fc8"], 1000),
        fc_width=_outputs(layers["fc6"], 4096),
        layout="two-tower",
        lrn=True,
        lrn_size=int(lrn["local_size"]),
        lrn_k=float(lrn["k"]),
        lrn_alpha=float(lrn["alpha"]),
        lrn_beta=float(lrn["beta"]),
        lrn_alpha_convention="divided-by-n",  # Caffe's LRN scales the sum of squares by α / local_size
        lrn_across_towers=True,  # one LRN layer over all maps of conv1 (96) and conv2 (256)
        conv1_padding=int(pad_h),
        init="caffe",  # how bvlc_alexnet was initialised, should the imported net be trained further
    )
    # Caffe's ImageNet recipe: mirrored random crops, no PCA lighting (train_val.prototxt).
    data = DataConfig(image_size=CAFFE_IMAGE, crop_size=CAFFE_CROP, mean="image", mirror=True, lighting=False)
    return model, data


def read_caffe_mean(path: str | Path) -> np.ndarray:
    """A .binaryproto mean (BlobProto 1×3×256×256, BGR, 0–255) as RGB 256×256×3 float32 (stats.h5's layout)."""
    p = Path(path)
    raw = read_weight_file(p, "mean (.binaryproto)")
    try:
        blob = parse_blob(raw)
    except ProtoError as e:
        raise UserError(f"{p} is not a readable .binaryproto mean: {e}") from None
    shape = tuple(d for d in blob.shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if shape != (3, CAFFE_IMAGE, CAFFE_IMAGE):
        raise UserError(
            f"{p}: the mean has shape {blob.shape}, expected 1×3×{CAFFE_IMAGE}×{CAFFE_IMAGE} "
            "(Caffe's imagenet_mean.binaryproto)"
        )
    chw = blob.data.reshape(shape)[BGR_TO_RGB]
    return np.ascontiguousarray(chw.transpose(1, 2, 0), dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------
def _outputs(fc: Layer, default: int) -> int:
    """An fc layer's outputs, read from its weights: fc8's classes (a fine-tuned bvlc_alexnet may have other
    than 1000) and fc6's width (4096; narrower in tests). Every other shape must be the paper's."""
    shape = fc.blobs[0].shape if fc.blobs else ()
    return int(shape[-2]) if len(shape) >= 2 and shape[-2] >= 2 else default


def _layers_by_name(net: Net, path: Path) -> dict[str, Layer]:
    """conv1..fc8 by name, each of the right type; the first that is missing or wrong is named."""
    found = {layer.name: layer for layer in net.layers}
    for name in LAYERS:
        if name not in found:
            raise UserError(f"{path}: no layer {name}: not {NET}; its layers are {_names(net)}")
        if found[name].type != LAYER_TYPES[name]:
            raise UserError(
                f"{path}: layer {name} is a {found[name].type} layer, {NET} has a {LAYER_TYPES[name]} there"
            )
    return found


def _names(net: Net) -> str:
    names = [layer.name for layer in net.layers if layer.blobs]
    return ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")


def _check_order_and_lrn(net: Net, path: Path) -> dict[str, float]:
    """§3.3/§3.4: conv1 and conv2 are followed by LRN, then pooling; the LRN layers' shared parameters.

    CaffeNet (bvlc_reference_caffenet) has the same weights' shapes but pools before normalising;
    its layer order tells it apart.
    """
    names = [layer.name for layer in net.layers]
    lrns = []
    for conv, nxt in (("conv1", "conv2"), ("conv2", "conv3")):
        between = net.layers[names.index(conv) + 1:names.index(nxt)]
        kinds = [layer.type for layer in between if layer.type in ("LRN", "Pooling")]
        if not kinds and not any(layer.type in ("LRN", "Pooling") for layer in net.layers):
            continue  # a weights-only file: no layer order to check
        if kinds[:2] != ["LRN", "Pooling"]:
            order = " then ".join(kinds) or "no LRN or pooling"
            raise UserError(
                f"{path}: after {conv} the file has {order}; {NET} normalises (LRN) then pools "
                "(CaffeNet pools first and is not supported)"
            )
        lrn = next(layer for layer in between if layer.type == "LRN")
        lrns.append((lrn.name, lrn.lrn or dict(CAFFE_LRN)))
    if not lrns:
        return dict(CAFFE_LRN)
    first = lrns[0][1]
    for name, params in lrns:
        if params["norm_region"] != 0:
            raise UserError(f"{path}: layer {name} normalises within channels; {NET} normalises across them")
        if params != first:
            raise UserError(f"{path}: layer {name}'s LRN parameters differ from {lrns[0][0]}'s: {params}")
    return first


def _state_dict(layers: dict[str, Layer], model: ModelConfig, path: Path) -> dict[str, torch.Tensor]:
    """Every blob checked against our net's shapes (legacy leading 1s dropped) and copied as float32."""
    want = bare_net(model, CAFFE_CROP).state_dict()
    geometry = conv_geometry(model)
    state = {}
    for name in LAYERS:
        layer = layers[name]
        if len(layer.blobs) != 2:
            raise UserError(f"{path}: layer {name} has {len(layer.blobs)} blobs; {NET} has weights and biases")
        if name in geometry:
            _check_conv(name, layer, geometry[name], path)
        for blob, part in zip(layer.blobs, ("weight", "bias"), strict=True):
            key = f"{name}.{part}"
            target = tuple(want[key].shape)
            shape = _drop_leading_ones(blob.shape, len(target))
            check_shape(f"layer {name}'s {part}", shape, target, path, NET)
            state[key] = torch.from_numpy(blob.data.reshape(target).copy())
    state["conv1.weight"] = state["conv1.weight"][:, BGR_TO_RGB].contiguous()  # Caffe's BGR → our RGB
    return state


def _drop_leading_ones(shape: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    """Caffe's legacy 4-D shapes pad with leading 1s (an fc weight is 1×1×out×in, a bias 1×1×1×out)."""
    shape = tuple(shape)
    while len(shape) > ndim and shape[0] == 1:
        shape = shape[1:]
    return shape


def _check_conv(name: str, layer: Layer, geometry: tuple[int, int, int], path: Path) -> None:
    """Strides and padding must be ours (kernel sizes and groups are checked by the weights' shapes)."""
    if layer.conv is None:
        return  # a weights-only file: the shapes are all there is to check
    k, stride, pad = geometry
    got_stride, got_pad = layer.conv["stride"], layer.conv["pad"]
    if got_stride != (stride, stride) or (name != "conv1" and got_pad != (pad, pad)):
        raise UserError(
            f"{path}: layer {name} has stride {got_stride[0]} and padding {got_pad[0]}, "
            f"{NET} has stride {stride} and padding {pad}: the file holds another net"
        )
