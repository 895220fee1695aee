"""Caffe's bvlc_alexnet import: the wire format, both layer formats, Caffe's forward pass, wrong files refused.

The caffemodels are written here (tests/caffe_writer.py) with random weights of bvlc_alexnet's shapes (fc6/fc7
narrowed to keep the files small); nothing is downloaded. The reference forward below is Caffe's net written
out with torch's functional ops, independent of alexrepro.nets.alexnet.
"""

from __future__ import annotations

import dataclasses

import caffe_writer as cw
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexrepro.errors import UserError
from alexrepro.imports.caffe import import_caffe, read_caffe_mean
from alexrepro.imports.caffe_proto import ProtoError, next_field, parse_blob, read_varint
from alexrepro.loaders.augment import Colour, center_offset, eval_params, finish_batch
from alexrepro.nets.alexnet import build_model, model_parallel
from alexrepro.recipe import ModelConfig

FC = 64  # fc6/fc7 width of the test nets (bvlc_alexnet: 4096); every conv layer has bvlc_alexnet's shape
CLASSES = 10
LRN = {"local_size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}  # bvlc_alexnet's deploy.prototxt
caffemodel = cw.alexnet_caffemodel
bgr_mean = cw.bgr_mean


@pytest.fixture(scope="module")
def caffe_weights() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return cw.random_weights(FC, CLASSES)


def caffe_lrn(a: torch.Tensor) -> torch.Tensor:
    """Caffe's LRN layer (ACROSS_CHANNELS), one window over all of the blob's channels (it has no groups):
    b_c = a_c / (k + α/n · Σ_{j = c−2}^{c+2} a_j²)^β, the sum clipped at the first and last channel."""
    n, alpha, beta, k = LRN["local_size"], LRN["alpha"], LRN["beta"], LRN["k"]
    sq, c = a * a, a.shape[1]
    window = torch.stack([sq[:, max(0, i - n // 2):min(c, i + n // 2 + 1)].sum(1) for i in range(c)], 1)
    return a / (k + alpha / n * window) ** beta


def caffe_forward(weights, x_bgr: torch.Tensor) -> torch.Tensor:
    """bvlc_alexnet's deploy net: N×3×227×227 BGR inputs (mean subtracted) → fc8 scores; dropout off (test)."""
    p = {n: (torch.from_numpy(w), torch.from_numpy(b)) for n, (w, b) in weights.items()}
    pool = lambda t: F.max_pool2d(t, 3, 2, ceil_mode=True)  # noqa: E731  (Caffe rounds pooled sizes up)
    x = pool(caffe_lrn(F.relu(F.conv2d(x_bgr, *p["conv1"], stride=4))))  # 227 → 55 → 27, no padding
    x = pool(caffe_lrn(F.relu(F.conv2d(x, *p["conv2"], padding=2, groups=2))))  # → 13
    x = F.relu(F.conv2d(x, *p["conv3"], padding=1))
    x = F.relu(F.conv2d(x, *p["conv4"], padding=1, groups=2))
    x = pool(F.relu(F.conv2d(x, *p["conv5"], padding=1, groups=2)))  # → 6
    x = F.relu(F.linear(torch.flatten(x, 1), *p["fc6"]))
    x = F.relu(F.linear(x, *p["fc7"]))
    return F.linear(x, *p["fc8"])


def images_bgr(n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 256, 256, 3), dtype=np.uint8)  # N×H×W×(B, G, R)


def caffe_logits(weights, imgs_bgr: np.ndarray) -> torch.Tensor:
    """Caffe's test-time transform (centre 227 crop at (256 − 227) / 2 = 14, minus the mean's crop), then its net."""
    o = (256 - 227) // 2
    x = imgs_bgr.transpose(0, 3, 1, 2).astype(np.float32) - bgr_mean()[None]
    return caffe_forward(weights, torch.from_numpy(np.ascontiguousarray(x[:, :, o:o + 227, o:o + 227])))


def our_logits(imported, imgs_rgb: np.ndarray, mean_rgb: np.ndarray) -> torch.Tensor:
    """Our eval path: centre crop, finish_batch's mean subtraction, the imported net."""
    model = imported.build()
    c, s = imported.data.crop_size, imported.data.image_size
    params = eval_params(len(imgs_rgb), s, c)
    o = center_offset(s, c)
    crops = torch.from_numpy(np.ascontiguousarray(imgs_rgb[:, o:o + c, o:o + c]))
    colour = Colour(torch.from_numpy(mean_rgb), None, None)
    with torch.no_grad():
        return model(finish_batch(crops, params, colour, torch.device("cpu")))


# ------------------------------------------------------------------------------------------------- wire format
def test_wire_format_matches_protobufs_documented_encodings():
    # The protobuf encoding guide's examples: 150 in field 1 is 08 96 01; 300 is the varint ac 02.
    assert read_varint(memoryview(b"\xac\x02"), 0) == (300, 2)
    assert next_field(memoryview(b"\x08\x96\x01"), 0) == (1, 0, 150, 3)
    number, wire, value, end = next_field(memoryview(b"\x12\x07testing"), 0)  # field 2, "testing"
    assert (number, wire, bytes(value), end) == (2, 2, b"testing", 9)
    assert cw.varint(300) == b"\xac\x02" and cw.f_varint(1, 150) == b"\x08\x96\x01"


@pytest.mark.parametrize("legacy", [True, False])
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("double", [False, True])
def test_blob_shapes_and_values_in_every_encoding(legacy, packed, double):
    arr = np.random.default_rng(0).normal(size=(4, 3, 2, 5)).astype(np.float32)
    b = parse_blob(cw.blob(arr, legacy, packed, double))
    assert b.shape == (4, 3, 2, 5) and b.data.dtype == np.float32
    np.testing.assert_array_equal(b.data.reshape(arr.shape), arr)
    fc = parse_blob(cw.blob(arr.reshape(12, 10), legacy, packed, double))
    assert fc.shape == ((1, 1, 12, 10) if legacy else (12, 10))  # legacy blobs are 4-D with leading 1s


def test_mean_binaryproto_is_read_as_rgb_hwc(tmp_path):
    path = tmp_path / "imagenet_mean.binaryproto"
    path.write_bytes(cw.blob(bgr_mean()[None], legacy=True))  # 1×3×256×256, as Caffe's compute_image_mean
    mean = read_caffe_mean(path)
    assert mean.shape == (256, 256, 3) and mean.dtype == np.float32
    np.testing.assert_array_equal(mean, bgr_mean()[::-1].transpose(1, 2, 0))  # R, G, B in the last axis
    assert mean[0, 0].tolist() == [125.0, 115.0, 100.0]


# ------------------------------------------------------------------------------------------- Caffe's forward
@pytest.mark.parametrize("v1, legacy, packed", [
    (True, True, True),  # bvlc_alexnet.caffemodel as the model zoo ships it: V1 layers, num/channels/h/w
    (False, False, True),  # after Caffe's upgrade_net_proto_binary: LayerParameter, BlobShape
    (False, True, True),
    (True, False, False),  # unpacked floats
])
def test_imported_net_gives_caffes_logits(tmp_path, caffe_weights, v1, legacy, packed):
    model_path, mean_path = tmp_path / "bvlc_alexnet.caffemodel", tmp_path / "mean.binaryproto"
    model_path.write_bytes(caffemodel(caffe_weights, v1, legacy, packed))
    mean_path.write_bytes(cw.blob(bgr_mean()[None], legacy=True))
    imported = import_caffe(model_path, mean_path)
    m, d = imported.model, imported.data
    assert (d.crop_size, d.image_size, d.mean, m.conv1_padding) == (227, 256, "image", 0)
    assert (m.lrn_k, m.lrn_alpha, m.lrn_alpha_convention, m.lrn_across_towers) == (1.0, pytest.approx(1e-4),
                                                                                  "divided-by-n", True)
    assert (m.layout, m.num_classes, m.fc_width) == ("two-tower", CLASSES, FC)
    assert imported.source["layer_format"] == ("V1 layers" if v1 else "layer")

    imgs = images_bgr()
    want = caffe_logits(caffe_weights, imgs)
    got = our_logits(imported, imgs[..., ::-1], imported.mean_image)  # our images are RGB
    assert want.abs().max() > 1.0  # the logits are not all near zero
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_caffes_conventions_each_change_the_logits(tmp_path, caffe_weights):
    """The recipe's Caffe values are needed: per-tower LRN, k = 2, or unflipped BGR weights all differ."""
    path = tmp_path / "m.caffemodel"
    path.write_bytes(caffemodel(caffe_weights, v1=True, legacy=True))
    imported = import_caffe(path)
    imgs = images_bgr()
    want = caffe_logits(caffe_weights, imgs)
    mean_rgb = np.ascontiguousarray(bgr_mean()[::-1].transpose(1, 2, 0))
    scale = float(want.abs().max())
    for change in ({"lrn_across_towers": False}, {"lrn_k": 2.0}, {"lrn_alpha_convention": "printed"}):
        other = dataclasses.replace(imported, model=dataclasses.replace(imported.model, **change))
        assert (our_logits(other, imgs[..., ::-1], mean_rgb) - want).abs().max() > 1e-3 * scale, change
    assert (our_logits(imported, imgs, mean_rgb) - want).abs().max() > 1e-3 * scale  # BGR fed as RGB


def test_conv1_padding_sets_the_nets_geometry():
    m = ModelConfig(conv1_padding=0, fc_width=8)
    net = build_model(m, 227)
    assert net.conv1.padding == (0, 0) and net.fc6.in_features == 256 * 6 * 6
    assert build_model(dataclasses.replace(m, conv1_padding=2), 224).conv1.padding == (2, 2)


def test_model_parallel_keeps_conv1_padding_and_refuses_lrn_across_towers():
    """§3.2's two-GPU split uses the recipe's conv1 padding; it cannot run Caffe's LRN, which needs both towers."""
    torch.manual_seed(0)
    cfg = ModelConfig(width=0.25, fc_width=32, num_classes=10, conv1_padding=0)
    grouped = build_model(cfg, 131).eval()  # 131 → 31 → 15 → 7 → 3 without padding
    mp = model_parallel(grouped, (torch.device("cpu"), torch.device("cpu"))).eval()
    x = torch.randn(2, 3, 131, 131) * 30
    torch.testing.assert_close(mp(x), grouped(x))
    caffe_like = build_model(dataclasses.replace(cfg, lrn_across_towers=True), 131)
    with pytest.raises(UserError, match="use data parallelism"):
        model_parallel(caffe_like, (torch.device("cpu"), torch.device("cpu")))


# ---------------------------------------------------------------------------------------------- wrong files
def one_line_error(path) -> str:
    with pytest.raises(UserError) as e:
        import_caffe(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_bytes_that_are_not_protobuf(tmp_path):
    for name, data in {"jpeg": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "zip": b"PK\x03\x04" + bytes(60),
                       "text": b"name: 'AlexNet'\nlayer {\n"}.items():
        path = tmp_path / f"{name}.caffemodel"
        path.write_bytes(data)
        assert "not a readable caffemodel" in one_line_error(path)
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    assert "no layers" in one_line_error(empty)


def test_truncated_file(tmp_path, caffe_weights):
    data = caffemodel(caffe_weights, v1=True, legacy=True)
    for cut in (len(data) // 2, len(data) - 3):
        path = tmp_path / f"cut{cut}.caffemodel"
        path.write_bytes(data[:cut])
        assert "truncated" in one_line_error(path)


def test_another_net_is_refused_naming_the_first_layer_that_does_not_fit(tmp_path, caffe_weights):
    rng = np.random.default_rng(2)
    cases = {
        # conv2 without groups: 96 input maps per kernel (CaffeNet-like nets without towers)
        "conv2": {"conv2": (rng.normal(size=(256, 96, 5, 5)).astype(np.float32), np.zeros(256, np.float32))},
        "conv3": {"conv3": (rng.normal(size=(192, 256, 3, 3)).astype(np.float32), np.zeros(192, np.float32))},
    }
    for layer, replace in cases.items():
        path = tmp_path / f"{layer}.caffemodel"
        path.write_bytes(caffemodel(caffe_weights, v1=False, legacy=False, replace=replace))
        msg = one_line_error(path)
        assert f"layer {layer}'s weight has shape" in msg and "another net" in msg
    vgg = tmp_path / "vgg.caffemodel"
    vgg.write_bytes(cw.net("VGG", [cw.layer("conv1_1", "Convolution", False,
                                            [cw.blob(np.zeros((64, 3, 3, 3)), False)])], v1=False))
    assert "no layer conv1" in one_line_error(vgg)
    caffenet = tmp_path / "caffenet.caffemodel"  # same shapes, but pooling before LRN
    caffenet.write_bytes(caffemodel(caffe_weights, v1=True, legacy=True, order="pool-norm"))
    assert "Pooling then LRN" in one_line_error(caffenet)


def test_wrong_mean_file(tmp_path):
    path = tmp_path / "small.binaryproto"
    path.write_bytes(cw.blob(np.zeros((1, 3, 32, 32)), legacy=True))
    with pytest.raises(UserError, match="expected 1×3×256×256"):
        read_caffe_mean(path)
    path.write_bytes(b"\xff\xff")
    with pytest.raises(UserError, match="not a readable .binaryproto"):
        read_caffe_mean(path)
    with pytest.raises(ProtoError, match="truncated"):
        parse_blob(cw.blob(np.zeros((2, 2)), legacy=False)[:-1])
