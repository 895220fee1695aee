"""A small writer of Caffe's protobuf messages (wire format by hand), for tests that need .caffemodel files.

Field numbers as in Caffe's caffe.proto (listed in alexrepro/imports/caffe_proto.py). It writes the two
layer formats (LayerParameter in NetParameter field 100, V1LayerParameter in field 2) and the two blob
shape encodings (legacy num/channels/height/width, BlobShape), packed or unpacked floats; and a whole
bvlc_alexnet (deploy.prototxt's layer sequence) with random weights, fc6/fc7 and fc8 of any width.
"""

from __future__ import annotations

import struct

import numpy as np

V1_ENUM = {"Convolution": 4, "InnerProduct": 14, "LRN": 15, "Pooling": 17, "ReLU": 18, "Dropout": 6,
           "Data": 5, "Softmax": 20, "SoftmaxWithLoss": 21, "Accuracy": 1}


def varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int64 as ten-byte two's complement
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def f_varint(number: int, v: int) -> bytes:
    return key(number, 0) + varint(v)


def f_len(number: int, payload: bytes) -> bytes:
    return key(number, 2) + varint(len(payload)) + payload


def f_float(number: int, v: float) -> bytes:
    return key(number, 5) + struct.pack("<f", v)


def f_string(number: int, text: str) -> bytes:
    return f_len(number, text.encode())


def blob(arr: np.ndarray, legacy: bool, packed: bool = True, double: bool = False) -> bytes:
    """A BlobProto. Legacy shapes are 4-D with leading 1s, as Caffe wrote them (fc weight 1×1×out×in)."""
    arr = np.asarray(arr)
    if legacy:
        dims = (1,) * (4 - arr.ndim) + arr.shape
        out = b"".join(f_varint(n, d) for n, d in zip((1, 2, 3, 4), dims, strict=True))
    else:
        out = f_len(7, f_len(1, b"".join(varint(d) for d in arr.shape)))  # BlobShape, dims packed
    number, fmt, wire = (8, "<f8", 1) if double else (5, "<f4", 5)
    values = arr.astype(fmt).reshape(-1)
    if packed:
        out += f_len(number, values.tobytes())
    else:  # one field per value: the one-byte tag, then the value (a numpy record array writes them all)
        rec = np.empty(values.size, dtype=[("tag", "u1"), ("value", fmt)])
        rec["tag"], rec["value"] = key(number, wire)[0], values
        out += rec.tobytes()
    return out


def conv_param(num_output: int, kernel: int, stride: int, pad: int, group: int) -> bytes:
    out = f_varint(1, num_output) + f_varint(4, kernel)
    out += f_varint(6, stride) if stride != 1 else b""
    out += f_varint(3, pad) if pad else b""
    return out + (f_varint(5, group) if group != 1 else b"")


def lrn_param(local_size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float | None = None,
              norm_region: int = 0) -> bytes:
    out = f_varint(1, local_size) + f_float(2, alpha) + f_float(3, beta)
    out += f_varint(4, norm_region) if norm_region else b""
    return out + (f_float(5, k) if k is not None else b"")


def layer(name: str, type_: str, v1: bool, blobs: list[bytes] = (), conv: bytes | None = None,
          lrn: bytes | None = None) -> bytes:
    """A LayerParameter (v1=False) or V1LayerParameter (v1=True)."""
    if v1:
        out = f_string(4, name) + f_varint(5, V1_ENUM[type_])
        out += b"".join(f_len(6, b) for b in blobs)
        out += f_len(10, conv) if conv is not None else b""
        return out + (f_len(18, lrn) if lrn is not None else b"")
    out = f_string(1, name) + f_string(2, type_)
    out += b"".join(f_len(7, b) for b in blobs)
    out += f_len(106, conv) if conv is not None else b""
    return out + (f_len(118, lrn) if lrn is not None else b"")


def net(name: str, layers: list[bytes], v1: bool) -> bytes:
    """A NetParameter holding the layers in field 2 (V1) or 100."""
    return f_string(1, name) + b"".join(f_len(2 if v1 else 100, x) for x in layers)


# bvlc_alexnet's conv layers: (name, Caffe weight shape, stride, pad, group); shapes are out × in/group × k × k.
CONV_LAYERS = [
    ("conv1", (96, 3, 11, 11), 4, 0, 1),
    ("conv2", (256, 48, 5, 5), 1, 2, 2),
    ("conv3", (384, 256, 3, 3), 1, 1, 1),
    ("conv4", (384, 192, 3, 3), 1, 1, 2),
    ("conv5", (256, 192, 3, 3), 1, 1, 2),
]
CONV = {name: (stride, pad, group) for name, _, stride, pad, group in CONV_LAYERS}
LAYER_NAMES = [name for name, *_ in CONV_LAYERS] + ["fc6", "fc7", "fc8"]


def random_weights(fc: int, classes: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """bvlc_alexnet's shapes (fc6/fc7 `fc` wide, fc8 `classes`), random weights scaled (He) so activations stay
    in the tens: LRN's α/n·Σa² term then matters."""
    shapes = {name: shape for name, shape, *_ in CONV_LAYERS}
    shapes.update(fc6=(fc, 256 * 6 * 6), fc7=(fc, fc), fc8=(classes, fc))
    rng = np.random.default_rng(seed)
    out = {}
    for name in LAYER_NAMES:
        shape = shapes[name]
        fan_in = int(np.prod(shape[1:]))
        std = 0.05 if name == "conv1" else np.sqrt(2.0 / fan_in)
        out[name] = (rng.normal(0, std, shape).astype(np.float32), rng.normal(0, 0.5, shape[0]).astype(np.float32))
    return out


def alexnet_caffemodel(weights, v1: bool, legacy: bool, packed: bool = True, order: str = "norm-pool",
                       replace: dict | None = None) -> bytes:
    """bvlc_alexnet's layer sequence (deploy.prototxt) as a NetParameter in either format."""
    replace = replace or {}
    layers = [layer("data", "Data", v1)]
    for name in LAYER_NAMES:
        w, b = replace.get(name, weights[name])
        blobs = [blob(w, legacy, packed), blob(b, legacy, packed)]
        if name.startswith("conv"):
            conv = conv_param(w.shape[0], w.shape[-1], *CONV[name])
            layers.append(layer(name, "Convolution", v1, blobs, conv=conv))
        else:
            layers.append(layer(name, "InnerProduct", v1, blobs))
        layers.append(layer(f"relu{name[-1]}", "ReLU", v1))
        if name in ("conv1", "conv2"):
            norm = layer(f"norm{name[-1]}", "LRN", v1, lrn=lrn_param(5, 1e-4, 0.75, k=1.0))
            pool = layer(f"pool{name[-1]}", "Pooling", v1)
            layers += [norm, pool] if order == "norm-pool" else [pool, norm]
        if name == "conv5":
            layers.append(layer("pool5", "Pooling", v1))
    layers.append(layer("prob", "Softmax", v1))
    return net("AlexNet", layers, v1)


def bgr_mean() -> np.ndarray:
    """A 3×256×256 BGR mean as imagenet_mean.binaryproto holds it: a distinct level and gradient per channel."""
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    return np.stack([100 + 0.1 * xx, 115 + 0.1 * yy, 125 - 0.05 * xx]).astype(np.float32)  # B, G, R
