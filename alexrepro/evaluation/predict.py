"""`alexrepro predict`: the top-5 classes of image files, preprocessed exactly as prep and the loaders do.

Each file goes through prep's §2 path (decode → RGB → shorter side 256 → central 256×256), then
the loaders' test-time preset (`alexrepro.loaders.presets.EvalPreset`: resize to the recipe's
image_size, the centre patch or §4.1's ten patches, minus the mean image cut at the same view). The
mean image comes from the checkpoint's `stats` when it carries them (alexrepro train stores them, and
alexrepro import when it was given a mean), else from `--data OUT`'s stats.h5; a recipe whose mean is
"channel-std" (torchvision's weights) needs none.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexrepro.errors import UserError
from alexrepro.loaders.presets import EvalPreset, MeanImage, make_colour, saved_mean, variant_for
from alexrepro.training.checkpoint import Checkpoint, as_checkpoint


def mean_from_checkpoint(ckpt: Checkpoint | dict[str, Any], data: Path | None) -> MeanImage:
    """The mean image and channel mean to subtract: the checkpoint's stats, else OUT's stats.h5."""
    if data is not None and not Path(data).is_dir():  # checked even where the checkpoint's mean wins
        what = "does not exist" if not Path(data).exists() else "is a file"
        raise UserError(f"--data {data} {what}; give the prepared set's folder (the OUT of alexrepro prep SRC OUT)")
    saved = as_checkpoint(ckpt)
    return saved_mean(saved.stats, data, saved.recipe.data)  # a "channel-std" recipe needs no mean image


def load_image(path: Path) -> np.ndarray:
    """A file as prep stores it: uint8 256×256×3 RGB; raises BadImage or OSError with the reason."""
    from alexrepro.data.imaging import prepare_image

    data = Path(path).read_bytes()
    return np.asarray(prepare_image(data, encoding="raw"), dtype=np.uint8)


def predict_files(
    checkpoint: Path,
    images: Sequence[Path],
    crops: int = 10,
    data: Path | None = None,
    device: str = "auto",
    top: int = 5,
) -> dict[str, Any]:
    """Top classes with names and probabilities per file; unreadable files listed with their reason."""
    from alexrepro.data.imaging import BadImage
    from alexrepro.evaluation.classes import class_fields
    from alexrepro.evaluation.metrics import topk_classes
    from alexrepro.evaluation.test_time import TEST_TIME
    from alexrepro.runtime import resolve_device
    from alexrepro.training.checkpoint import model_from_checkpoint
    from alexrepro.training.weight_file import read_net

    variant = variant_for(crops)
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    for path in images:  # before the net is loaded: a typo is bad input, not a failed prediction
        if not Path(path).exists():
            raise UserError(f"image {path} does not exist; give image files (any format PIL reads)")
        if Path(path).is_dir():
            raise UserError(f"image {path} is a folder; give image files (any format PIL reads)")
    dev = resolve_device(device)
    ckpt = read_net(checkpoint)  # a checkpoint or a .safetensors weight file
    model, recipe, classes = model_from_checkpoint(ckpt)
    model = model.to(dev).eval()
    mean = mean_from_checkpoint(ckpt, data)
    colour = make_colour(mean, recipe.data, dev)
    preset = EvalPreset.for_data(recipe.data, variant)
    names = class_fields(classes)
    results, failed = [], []
    for path in images:
        try:
            stored = load_image(Path(path))
        except (BadImage, OSError) as e:
            failed.append({"path": str(path), "reason": _reason(e)})
            continue
        with torch.inference_mode():
            probs = TEST_TIME[variant](model, preset([stored], colour, dev))
        vals, idx = topk_classes(probs, top)
        top_list = []
        for p, i in zip(vals[0].tolist(), idx[0].tolist(), strict=True):
            wnid, name = names.get(i, ("", ""))
            top_list.append({"index": i, "wnid": wnid, "name": name, "prob": round(float(p), 6)})
        results.append({"path": str(path), "top": top_list})
    return {
        "command": "predict",
        "checkpoint": str(checkpoint),
        "crops": crops,
        "test_time": TEST_TIME[variant].__name__,
        "mean_from": mean.source,
        "device": str(dev),
        "images": results,
        "failed": failed,
    }


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f" ({os.path.basename(str(e.filename))})" if e.filename else "")
    return " ".join(str(e).split()) or type(e).__name__
