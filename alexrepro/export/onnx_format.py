"""The ONNX files `alexrepro export onnx` writes: their names and metadata entries, the optional libraries,
and `OnnxNet`, such a file run in onnxruntime and called like a net."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexrepro.errors import UserError

FORMAT = "alexrepro-onnx"
VERSION = 1
OPSET = 17
INPUT, PIXELS, OUTPUT = "image", "pixels", "logits"  # the graph's input (preprocessed | pixels) and output
META, PREPROCESS = "alexrepro", "preprocess"  # the metadata entries (JSON)
EXTRA = "pip install 'alexrepro[export]' (onnx and onnxruntime)"


def need_onnx() -> tuple[Any, Any]:
    """(onnx, onnxruntime), or a UserError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise UserError(f"ONNX needs the export extra ({e.name} is not installed): {EXTRA}") from None
    return onnx, onnxruntime


class OnnxNet:
    """An ONNX file exported by alexrepro, run in onnxruntime on the CPU, called like a net on tensors."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        _, ort = need_onnx()
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}; give an .onnx file")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: onnxruntime's notes would break the progress display
        try:
            self.session = ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
        except (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.Fail, ort_errors.InvalidArgument,
                ort_errors.NotImplemented, ort_errors.RuntimeException) as e:
            first = " ".join(str(e).split())
            raise UserError(f"{path} is not a readable ONNX model ({first}); export it again") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.meta = json.loads(meta[META])
            self.preprocess = json.loads(meta[PREPROCESS])
        except (KeyError, ValueError):
            self.meta, self.preprocess = {}, {}
        if self.meta.get("format") != FORMAT:
            raise UserError(f"{path} is an ONNX model but not one alexrepro exported (no '{META}' metadata); "
                            "export it with: alexrepro export onnx CHECKPOINT")
        self.input = self.session.get_inputs()[0].name
        self.mean_in_graph = bool(self.preprocess.get("mean_in_graph"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(out)
