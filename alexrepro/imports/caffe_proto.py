"""Caffe's weight files read without the protobuf runtime: the wire format, a net's layers and its blobs.

A .caffemodel is a serialised NetParameter; a .binaryproto mean is a serialised BlobProto. Field numbers
are those of Caffe's own schema (BVLC/caffe, src/caffe/proto/caffe.proto):

  NetParameter          name = 1; layers = 2 (V1LayerParameter, deprecated); layer = 100 (LayerParameter)
  LayerParameter        name = 1; type = 2 (string); blobs = 7; convolution_param = 106; lrn_param = 118
  V1LayerParameter      name = 4; type = 5 (enum LayerType); blobs = 6; convolution_param = 10; lrn_param = 18
  BlobProto             num = 1, channels = 2, height = 3, width = 4 (the legacy 4-D shape); data = 5
                        (float, packed); diff = 6; shape = 7 (BlobShape: dim = 1, int64, packed); double_data = 8
  ConvolutionParameter  num_output = 1; pad = 3; kernel_size = 4; group = 5; stride = 6; pad_h = 9; pad_w = 10;
                        kernel_h = 11; kernel_w = 12; stride_h = 13; stride_w = 14
  LRNParameter          local_size = 1 (default 5); alpha = 2 (default 1); beta = 3 (default 0.75);
                        norm_region = 4 (ACROSS_CHANNELS = 0); k = 5 (default 1)

Wire format (protobuf's encoding): each field is a varint key (number << 3 | wire type) and a value:
a varint (type 0), 8 bytes (1), a varint length and that many bytes (2: strings, messages, packed
repeated numbers) or 4 bytes (5). Repeated floats come packed (one type-2 field) or unpacked (one
type-5 field per value); both are read, the unpacked form with numpy rather than value by value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

VARINT, I64, LEN, I32 = 0, 1, 2, 5
WIRE_SIZES = {I64: 8, I32: 4}

# V1LayerParameter.LayerType values with the type strings LayerParameter uses for the same layers
# (Caffe's UpgradeV1LayerType).
V1_TYPES = {
    1: "Accuracy", 3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout", 8: "Flatten", 12: "ImageData",
    14: "InnerProduct", 15: "LRN", 17: "Pooling", 18: "ReLU", 19: "Sigmoid", 20: "Softmax",
    21: "SoftmaxWithLoss", 22: "Split", 23: "TanH", 25: "Eltwise", 29: "MemoryData", 39: "Deconvolution",
}
# (name, type, blobs, convolution_param, lrn_param) field numbers in each layer message.
LAYER_FIELDS = {"layer": (1, 2, 7, 106, 118), "V1 layers": (4, 5, 6, 10, 18)}


class ProtoError(ValueError):
    """Bytes that are not the expected protobuf message; the message is the reason, on one line."""


@dataclass
class Blob:
    """One BlobProto: its shape (legacy num/channels/height/width, or BlobShape) and its values."""

    shape: tuple[int, ...]
    data: np.ndarray  # float32, flat, prod(shape) values


@dataclass
class Layer:
    """The parts of one layer an import reads."""

    name: str
    type: str  # LayerParameter's type string ("Convolution"); V1 enums are named the same way
    blobs: list[Blob] = field(default_factory=list)
    conv: dict[str, object] | None = None  # pad, kernel, stride (each (h, w)) and group
    lrn: dict[str, float] | None = None  # local_size, alpha, beta, norm_region, k


@dataclass
class Net:
    """A NetParameter: its name, its layers in file order, and which of the two layer formats it used."""

    name: str
    layers: list[Layer]
    format: str  # "layer" (LayerParameter, field 100) or "V1 layers" (V1LayerParameter, field 2)


# ------------------------------------------------------------------------------------------------ wire format
def read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    """The varint starting at buf[pos] and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError(f"truncated: a number runs past the end of the data at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError(f"not protobuf: a number longer than 10 bytes at byte {pos}")


def next_field(buf: memoryview, pos: int) -> tuple[int, int, int | memoryview, int]:
    """(field number, wire type, value, position after it) of the field at buf[pos].

    The value is an int for varints, else the field's bytes (a view, never a copy).
    """
    start = pos
    key, pos = read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise ProtoError(f"not protobuf: field number 0 at byte {start}")
    if wire == VARINT:
        value, pos = read_varint(buf, pos)
        return number, wire, value, pos
    if wire == LEN:
        size, pos = read_varint(buf, pos)
    elif wire in WIRE_SIZES:
        size = WIRE_SIZES[wire]
    else:
        raise ProtoError(f"not protobuf: wire type {wire} (field {number}) at byte {start}")
    if pos + size > len(buf):
        raise ProtoError(
            f"truncated: field {number} at byte {start} needs {size} bytes, {len(buf) - pos} are left"
        )
    return number, wire, buf[pos:pos + size], pos + size


def _text(value: int | memoryview, what: str) -> str:
    if not isinstance(value, memoryview):
        raise ProtoError(f"not a Caffe file: {what} is not text")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        raise ProtoError(f"not a Caffe file: {what} is not UTF-8 text") from None


def _varints(value: int | memoryview) -> list[int]:
    """A repeated integer field's values: one varint, or a packed run of them."""
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = read_varint(value, pos)
        out.append(v)
    return out


def _numbers(buf: memoryview, pos: int, first: memoryview, wire: int, tag: int, dtype: str) -> tuple[np.ndarray, int]:
    """A repeated float/double field: packed (`first` holds them all) or unpacked (a run of `tag` fields).

    Unpacked values sit at a fixed stride (the one-byte tag, then the value), so numpy finds where the
    run of `tag` ends and reads the values in one pass.
    """
    width = np.dtype(dtype).itemsize
    if wire == LEN:
        if len(first) % width:
            raise ProtoError(f"corrupt: {len(first)} bytes of packed values are not a whole number of {dtype}")
        return np.frombuffer(first, dtype=dtype), pos
    stride = 1 + width
    rest = np.frombuffer(buf[pos:pos + (len(buf) - pos) // stride * stride], np.uint8).reshape(-1, stride)
    not_tag = np.flatnonzero(rest[:, 0] != tag)
    run = int(not_tag[0]) if len(not_tag) else len(rest)
    values = np.concatenate([np.frombuffer(first, np.uint8), rest[:run, 1:].reshape(-1)])
    return values.view(dtype), pos + run * stride


# ------------------------------------------------------------------------------------------------ messages
def parse_blob(data: bytes | memoryview) -> Blob:
    """A BlobProto: the legacy 4-D shape when any of its fields is set (as Caffe's Blob::FromProto), else
    the shape field; float data, else double_data as float32."""
    buf = memoryview(data)
    legacy: dict[int, int] = {}
    dims: list[int] | None = None
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    pos = 0
    while pos < len(buf):
        number, wire, value, pos = next_field(buf, pos)
        if number in (1, 2, 3, 4) and wire == VARINT:
            legacy[number] = _signed(value)
        elif number == 5 and wire in (LEN, I32):
            arr, pos = _numbers(buf, pos, value, wire, (5 << 3) | I32, "<f4")
            floats.append(arr)
        elif number == 8 and wire in (LEN, I64):
            arr, pos = _numbers(buf, pos, value, wire, (8 << 3) | I64, "<f8")
            doubles.append(arr)
        elif number == 7 and wire == LEN:
            dims = [_signed(d) for number_, _, v in _fields(value) if number_ == 1 for d in _varints(v)]
    if legacy:
        shape = tuple(legacy.get(i, 0) for i in (1, 2, 3, 4))
    else:
        shape = tuple(dims or ())
    if any(d < 0 for d in shape):
        raise ProtoError(f"corrupt: blob shape {shape} has a negative dimension")
    values = np.concatenate(floats) if floats else (
        np.concatenate(doubles).astype(np.float32) if doubles else np.zeros(0, np.float32))
    if values.size != math.prod(shape):
        raise ProtoError(f"corrupt: a blob of shape {shape} holds {values.size} values, not {math.prod(shape)}")
    return Blob(shape, values.astype("=f4", copy=False))


def _signed(v: int) -> int:
    """An int64 varint as a signed number (negative values are ten-byte two's complement)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _fields(buf: memoryview) -> list[tuple[int, int, int | memoryview]]:
    out, pos = [], 0
    while pos < len(buf):
        number, wire, value, pos = next_field(buf, pos)
        out.append((number, wire, value))
    return out


def _float(value: int | memoryview) -> float:
    if not isinstance(value, memoryview) or len(value) != 4:
        raise ProtoError("corrupt: a float field is not 4 bytes")
    return float(np.frombuffer(value, "<f4")[0])


def parse_conv(buf: memoryview) -> dict[str, object]:
    """A ConvolutionParameter's geometry: pad, kernel and stride as (h, w), and group (Caffe's defaults)."""
    got: dict[int, list[int]] = {}
    for number, _, value in _fields(buf):
        if number in (1, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14):
            got.setdefault(number, []).extend(_varints(value))

    def pair(both: int, h: int, w: int, default: int | None) -> tuple[int | None, int | None]:
        if h in got or w in got:
            return got.get(h, [default])[-1], got.get(w, [default])[-1]
        vals = got.get(both, [])
        return (vals[0], vals[-1]) if vals else (default, default)

    return {"pad": pair(3, 9, 10, 0), "kernel": pair(4, 11, 12, None), "stride": pair(6, 13, 14, 1),
            "group": got.get(5, [1])[-1], "num_output": got.get(1, [0])[-1]}


def parse_lrn(buf: memoryview) -> dict[str, float]:
    """An LRNParameter with Caffe's defaults for the fields a file leaves out."""
    out = {"local_size": 5, "alpha": 1.0, "beta": 0.75, "norm_region": 0, "k": 1.0}
    names = {1: "local_size", 2: "alpha", 3: "beta", 4: "norm_region", 5: "k"}
    for number, wire, value in _fields(buf):
        if number in names:
            out[names[number]] = int(value) if wire == VARINT else _float(value)
    return out


def parse_layer(buf: memoryview, form: str) -> Layer:
    """One LayerParameter (form "layer") or V1LayerParameter (form "V1 layers")."""
    f_name, f_type, f_blobs, f_conv, f_lrn = LAYER_FIELDS[form]
    layer = Layer(name="", type="")
    for number, wire, value in _fields(buf):
        if number == f_name:
            layer.name = _text(value, "a layer name")
        elif number == f_type:
            if form == "layer":
                layer.type = _text(value, "a layer type")
            else:
                layer.type = V1_TYPES.get(int(value), f"V1 type {value}") if wire == VARINT else "?"
        elif number == f_blobs and wire == LEN:
            layer.blobs.append(parse_blob(value))
        elif number == f_conv and wire == LEN:
            layer.conv = parse_conv(value)
        elif number == f_lrn and wire == LEN:
            layer.lrn = parse_lrn(value)
    return layer


def parse_net(data: bytes | memoryview) -> Net:
    """A NetParameter with its layers in either format; refuses bytes that hold no layers."""
    buf = memoryview(data)
    name, new, old = "", [], []
    for number, wire, value in _fields(buf):
        if number == 1 and wire == LEN:
            name = _text(value, "the net's name")
        elif number == 100 and wire == LEN:
            new.append(value)
        elif number == 2 and wire == LEN:
            old.append(value)
    if new and old:
        # Caffe's own upgrade refuses this too (UpgradeV1Net: "inconsistent NetParameter").
        raise ProtoError("corrupt: the net has both 'layer' and V1 'layers' fields")
    if not new and not old:
        raise ProtoError("not a Caffe model: the protobuf holds no layers")
    form = "layer" if new else "V1 layers"
    return Net(name, [parse_layer(v, form) for v in (new or old)], form)
