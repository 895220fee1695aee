"""`alexrepro predict`: the top-5 classes of image files, preprocessed exactly as prep and the loaders do.

Each file goes through prep's §2 path (decode → RGB → shorter side 256 → central 256×256), then
the loaders' evaluation path (resize to the recipe's image_size, the centre patch or §4.1's ten
patches, minus the mean image cut at the same view). The mean image comes from the checkpoint's
`stats` when it carries them (alexrepro train stores them), else from `--data OUT`'s stats.h5.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexrepro.errors import UserError


def mean_from_checkpoint(ckpt: dict[str, Any], data: Path | None) -> tuple[np.ndarray, np.ndarray, str]:
    """(mean image 256×256×3, channel mean (3,), where from): the checkpoint's stats, else OUT's stats.h5."""
    if data is not None and not Path(data).is_dir():  # checked even where the checkpoint's mean wins
        what = "does not exist" if not Path(data).exists() else "is a file"
        raise UserError(f"--data {data} {what}; give the prepared set's folder (the OUT of alexrepro prep SRC OUT)")
    stats = ckpt.get("stats") or {}
    mean = stats.get("mean") if isinstance(stats, dict) else None
    if mean is not None:
        mean = torch.as_tensor(mean).float().numpy()
        cm = stats.get("channel_mean")
        channel = torch.as_tensor(cm).double().numpy() if cm is not None else mean.reshape(-1, 3).mean(0)
        if mean.ndim == 1:  # a per-channel mean only
            channel = mean.astype(np.float64)
            mean = np.broadcast_to(mean.astype(np.float32), (256, 256, 3)).copy()
        return mean, channel, "checkpoint"
    if data is None:
        raise UserError(
            "the checkpoint carries no mean image; give the prepared set it was trained on with --data OUT"
        )
    from alexrepro.prepared import read_stats

    s = read_stats(data)
    return np.asarray(s.mean, np.float32), np.asarray(s.channel_mean, np.float64), str(Path(data) / "stats.h5")


def load_image(path: Path) -> np.ndarray:
    """A file as prep stores it: uint8 256×256×3 RGB; raises BadImage or OSError with the reason."""
    from alexrepro.imaging import prepare_image

    data = Path(path).read_bytes()
    return np.asarray(prepare_image(data, encoding="raw"), dtype=np.uint8)


def image_views(image: np.ndarray, mean: torch.Tensor, data_cfg: Any, crops: int, device: torch.device) -> torch.Tensor:
    """One stored image → (1, 3, c, c) centre patch or (1, 10, 3, c, c) ten patches, mean subtracted."""
    from alexrepro.augment import Colour, crop_flip, eval_params, finish_batch, resize_image, ten_crop_params

    s, c = data_cfg.image_size, data_cfg.crop_size
    image = resize_image(image, s)
    params = ten_crop_params(1, s, c) if crops == 10 else eval_params(1, s, c)
    patches = [crop_flip(image, int(y), int(x), c, bool(f)) for y, x, f in zip(params.y, params.x, params.flip, strict=True)]
    stacked = torch.from_numpy(np.stack(patches))
    batch = stacked[None] if crops == 10 else stacked
    return finish_batch(batch, params, Colour(mean, None, None), device)


def predict_files(
    checkpoint: Path,
    images: Sequence[Path],
    crops: int = 10,
    data: Path | None = None,
    device: str = "auto",
    top: int = 5,
) -> dict[str, Any]:
    """Top classes with names and probabilities per file; unreadable files listed with their reason."""
    from alexrepro.augment import mean_image_for
    from alexrepro.checkpoint import load_checkpoint, model_from_checkpoint
    from alexrepro.evaluate import TEST_TIME, resolve_device, variant_for
    from alexrepro.imaging import BadImage
    from alexrepro.metrics import topk_classes

    variant = variant_for(crops)
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    for path in images:  # before the net is loaded: a typo is bad input, not a failed prediction
        if not Path(path).exists():
            raise UserError(f"image {path} does not exist; give image files (any format PIL reads)")
        if Path(path).is_dir():
            raise UserError(f"image {path} is a folder; give image files (any format PIL reads)")
    dev = resolve_device(device)
    ckpt = load_checkpoint(checkpoint)
    model, recipe, classes = model_from_checkpoint(ckpt)
    model = model.to(dev).eval()
    mean, channel, mean_source = mean_from_checkpoint(ckpt, data)
    mean_t = torch.as_tensor(mean_image_for(mean, channel, recipe.data), dtype=torch.float32, device=dev)
    by_index = {int(c["index"]): c for c in classes}
    results, failed = [], []
    for path in images:
        try:
            stored = load_image(Path(path))
        except (BadImage, OSError) as e:
            failed.append({"path": str(path), "reason": _reason(e)})
            continue
        with torch.inference_mode():
            probs = TEST_TIME[variant](model, image_views(stored, mean_t, recipe.data, crops, dev))
        vals, idx = topk_classes(probs, top)
        top_list = []
        for p, i in zip(vals[0].tolist(), idx[0].tolist(), strict=True):
            c = by_index.get(i, {})
            top_list.append({"index": i, "wnid": str(c.get("wnid", "")), "name": str(c.get("name", "")),
                             "prob": round(float(p), 6)})
        results.append({"path": str(path), "top": top_list})
    return {
        "command": "predict",
        "checkpoint": str(checkpoint),
        "crops": crops,
        "test_time": TEST_TIME[variant].__name__,
        "mean_from": mean_source,
        "device": str(dev),
        "images": results,
        "failed": failed,
    }


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror + (f" ({os.path.basename(str(e.filename))})" if e.filename else "")
    return " ".join(str(e).split()) or type(e).__name__
