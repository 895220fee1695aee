"""`alexrepro export safetensors`: a checkpoint's net as a weight file that no pickle is involved in reading.

The format is `alexrepro/training/weight_file.py`'s (docs/FORMAT.md, "Weight files"); `alexrepro.load`,
`eval`, `predict` and `export onnx` read it as they read the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alexrepro.atomic import writable_file


def export_safetensors(checkpoint: Path, out: Path) -> dict[str, Any]:
    """Write the checkpoint's weights, recipe, classes, mean and origin to `out`; returns the --json summary."""
    from alexrepro.training.checkpoint import model_from_checkpoint
    from alexrepro.training.weight_file import read_net, save_weights

    writable_file(out, "--out")
    ckpt = read_net(checkpoint)
    model_from_checkpoint(ckpt)  # the weights must fit their recipe's net before they are written
    meta = save_weights(out, ckpt)
    stats = ckpt.stats or {}
    return {
        "command": "export safetensors", "checkpoint": str(checkpoint), "out": str(out),
        "bytes": Path(out).stat().st_size, "tensors": len(ckpt.model), "arch": ckpt.recipe.model.arch,
        "recipe": ckpt.recipe.name, "classes": len(ckpt.classes), "mean": ckpt.recipe.data.mean,
        "mean_image": stats.get("mean") is not None,
        "origin": None if ckpt.origin is None else ckpt.origin.to_payload(),
        "metadata": sorted(meta), "checksum": meta["checksum"], "epoch": ckpt.epoch, "step": ckpt.step,
    }
