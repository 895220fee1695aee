"""`alexrepro export check`: an exported file (ONNX or safetensors) against its checkpoint, image by image.

Each image goes through the checkpoint's preprocessing (`Classifier.inputs`) and both nets: the checkpoint's
in PyTorch, the file's in onnxruntime (an ONNX graph) or PyTorch (a weight file, with the preprocessing it
carries). They agree when the largest difference of their logits is within TOLERANCE of the largest logit
(at least 1); the top classes of each are reported too (near-ties may swap within that tolerance).
`alexrepro export onnx` runs the same check on random images before it keeps the file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexrepro.errors import UserError
from alexrepro.export.classifier import Classifier, load, stored_image
from alexrepro.export.onnx_format import OnnxNet
from alexrepro.loaders.presets import EvalPreset, variant_for

TOLERANCE = 1e-4  # on the logits, times max(1, the largest |logit|): float32 rounding of two conv libraries
RANDOM_IMAGES = 2  # the images of a check without image files: uniform noise, seeded
TOP = 5


def check_export(file: Path, checkpoint: Path, images: Sequence[Path] = (), crops: int = 1,
                 data: Path | None = None) -> dict[str, Any]:
    """Compare an exported file with its checkpoint on image files (or random images); the --json report."""
    from alexrepro.training.weight_file import is_weight_file

    variant_for(crops)
    stored = [stored_image(Path(p)) for p in images] or random_images()
    names = [str(p) for p in images] or [f"random image {k}" for k in range(len(stored))]
    ref = load(checkpoint, device="cpu", data=data)
    if Path(file).is_file() and is_weight_file(file):
        result = check_weights(Path(file), ref, stored, crops, data)
    else:
        result = check_onnx(Path(file), ref, stored, crops)
    for item, name in zip(result["images"], names, strict=True):
        item["image"] = name
    return {"command": "export check", "file": str(file), "checkpoint": str(checkpoint), **result}


def check_onnx(path: Path, ref: Classifier, stored: Sequence[np.ndarray] | None = None,
               crops: int = 1) -> dict[str, Any]:
    """An ONNX file's logits against the classifier's on the same images."""
    net = OnnxNet(path)
    shape = net.session.get_inputs()[0].shape  # [batch, 3, c, c]
    if list(shape[1:]) != [3, ref.crop_size, ref.crop_size]:
        raise UserError(f"{path} takes {'×'.join(map(str, shape[1:]))} inputs, the net of {ref.path} 3×{ref.crop_size}"
                        f"×{ref.crop_size}: it was exported from another net; give its own checkpoint")
    stored = random_images() if stored is None else stored
    if net.mean_in_graph:
        if crops != 1:
            raise UserError(f"{path} subtracts the mean image's centre patch in its graph, so it takes centre "
                            "patches only; check it with --crops 1")
        preset = EvalPreset.for_data(ref.recipe.data)

        def pixels(ims: Sequence[np.ndarray]) -> torch.Tensor:  # the centre patches' pixels, 0–255
            return torch.from_numpy(preset.cut_all(ims)).permute(0, 3, 1, 2).float()

        return compare(net, pixels, ref, stored, crops) | {"kind": "onnx", "mean_in_graph": True}
    return compare(net, lambda ims: ref.inputs(ims, crops), ref, stored, crops) | {"kind": "onnx",
                                                                                  "mean_in_graph": False}


def check_weights(path: Path, ref: Classifier, stored: Sequence[np.ndarray], crops: int = 1,
                  data: Path | None = None) -> dict[str, Any]:
    """A weight file's net, with its own preprocessing, against the checkpoint's."""
    other = load(path, device="cpu", data=data)
    return compare(other.net, lambda ims: other.inputs(ims, crops), ref, stored, crops) | {"kind": "safetensors"}


class _Recorder:
    """A net that keeps the logits of its last call (the test-time functions see only probabilities)."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.net, self.logits = net, torch.zeros(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.logits = self.net(x).float().cpu()
        return self.logits


def compare(net: Callable[[torch.Tensor], torch.Tensor], inputs: Callable[[Sequence[np.ndarray]], torch.Tensor],
            ref: Classifier, stored: Sequence[np.ndarray], crops: int) -> dict[str, Any]:
    """Per image: both nets' top classes; over all: the largest logit difference and whether it is tolerable."""
    from alexrepro.evaluation.metrics import topk_classes
    from alexrepro.evaluation.variants import TEST_TIME

    variant = variant_for(crops)
    mine, theirs = _Recorder(net), _Recorder(ref.net)
    items, diff, largest = [], 0.0, 1.0
    for image in stored:
        with torch.inference_mode():
            p_file = TEST_TIME[variant](mine, inputs([image]))
            p_ref = TEST_TIME[variant](theirs, ref.inputs([image], crops))
        diff = max(diff, float((mine.logits - theirs.logits).abs().max()))
        largest = max(largest, float(theirs.logits.abs().max()))
        top_file, top_ref = (topk_classes(p, TOP)[1][0].tolist() for p in (p_file, p_ref))
        items.append({"top": top_file, "checkpoint_top": top_ref, "same_top": top_file == top_ref,
                      "probs": [round(float(v), 6) for v in topk_classes(p_file, TOP)[0][0]]})
    tolerance = TOLERANCE * largest
    return {"crops": crops, "images": items, "max_abs_diff": diff, "tolerance": tolerance, "agree": diff <= tolerance}


def random_images(n: int = RANDOM_IMAGES, seed: int = 0) -> list[np.ndarray]:
    """n stored-size images of uniform noise (uint8 256×256×3)."""
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8))
