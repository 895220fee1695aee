"""Weight files: a checkpoint's net in safetensors, with its recipe, classes and mean as metadata; no pickle.

A checkpoint (`checkpoint.py`) is a torch.save pickle that can resume a run; loading a pickle from a
stranger can run code, even though alexrepro reads its own with `weights_only`. A weight file holds the
net alone, in the safetensors format (a JSON header, then raw tensor bytes: reading it runs nothing):

- tensors: the net's state_dict under its own keys (`conv1.weight`, ..., `fc8.bias`), and the colour
  statistics under `stats.` (`stats.mean`, the 256×256×3 mean image, `stats.channel_mean`, ...);
- metadata (strings): format, version, recipe (JSON), recipe_name, classes (JSON), stats (JSON of the
  statistics' plain values), origin (JSON, imported weights only), epoch, step, written_by, and checksum,
  "sha256:<hex>" of everything else, verified on every read (docs/FORMAT.md, "Weight files").

`read_net` is the one reader of a trained net's file for `load`, `eval`, `predict` and the exports: a
weight file here, a checkpoint through `checkpoint.read_checkpoint`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from alexrepro.errors import UserError
from alexrepro.process.atomic import atomic_path
from alexrepro.recipe_reader import recipe_from_dict
from alexrepro.training.checkpoint import CHECKSUM, Checkpoint, Origin, contents_digest, read_checkpoint

FORMAT = "alexrepro-weights"
VERSION = 1
SUFFIX = ".safetensors"
STATS_PREFIX = "stats."  # tensors under it are the colour statistics, every other tensor is the net's
HEADER_MAX = 100 << 20  # safetensors' own limit on the JSON header (100 MB)


def save_weights(path: str | os.PathLike[str], ckpt: Checkpoint) -> dict[str, Any]:
    """Write the checkpoint's net, recipe, classes, statistics and origin as a weight file, atomically;
    returns the metadata written."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in ckpt.model.items()}
    plain = {}
    for name, value in (ckpt.stats or {}).items():
        if isinstance(value, torch.Tensor):
            tensors[STATS_PREFIX + name] = value.detach().cpu().contiguous()
        elif value is not None:
            plain[name] = value
    meta = {
        "format": FORMAT, "version": str(VERSION),
        "recipe": json.dumps(ckpt.recipe.to_dict()), "recipe_name": ckpt.recipe.name,
        "classes": json.dumps(ckpt.classes), "stats": json.dumps(plain),
        "epoch": str(ckpt.epoch), "step": str(ckpt.step), "written_by": _written_by(),
    }
    if ckpt.origin is not None:
        meta["origin"] = json.dumps(ckpt.origin.to_payload())
    meta[CHECKSUM] = _digest(meta, tensors)
    with atomic_path(path) as tmp:
        tmp.write_bytes(save(tensors, metadata=meta))
    return meta


def read_weights(path: str | os.PathLike[str]) -> Checkpoint:
    """A weight file as a Checkpoint (its training state empty); a one-line UserError if it is not one of ours,
    is truncated or damaged."""
    from safetensors import SafetensorError, safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            if meta.get("format") != FORMAT:
                raise UserError(f"{path} is a safetensors file but not an alexrepro weight file (its metadata has "
                                "no alexrepro net); export one with: alexrepro export safetensors CHECKPOINT")
            tensors = {k: f.get_tensor(k) for k in sorted(f.keys())}
    except (SafetensorError, OSError, ValueError) as e:
        first = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"{path} is not a readable safetensors file ({first}); export it again") from None
    if meta.get("version") != str(VERSION):
        raise UserError(f"{path} is weight file version {meta.get('version')}, this alexrepro reads {VERSION}")
    if meta.pop(CHECKSUM, None) != _digest(meta, tensors):
        raise UserError(f"{path} is damaged: its contents do not match the checksum written with it; export it again")
    try:
        recipe = recipe_from_dict(json.loads(meta["recipe"]), name=meta.get("recipe_name", "weights"))
        classes = json.loads(meta.get("classes", "[]"))
        stats = {k[len(STATS_PREFIX):]: v for k, v in tensors.items() if k.startswith(STATS_PREFIX)}
        stats.update(json.loads(meta.get("stats", "{}")))
        origin = Origin.from_payload(json.loads(meta["origin"])) if "origin" in meta else None
        epoch, step = int(meta.get("epoch", 0)), int(meta.get("step", 0))
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"{path}: its alexrepro metadata cannot be read ({type(e).__name__}: {e}); export it again") from None
    model = {k: v for k, v in tensors.items() if not k.startswith(STATS_PREFIX)}
    return Checkpoint(model=model, recipe=recipe, classes=classes, epoch=epoch, step=step, stats=stats or None,
                      origin=origin)


def is_weight_file(path: str | os.PathLike[str]) -> bool:
    """Whether a file is in the safetensors format: by its name, or by its header (8-byte length, then JSON)."""
    path = Path(path)
    if path.suffix == SUFFIX:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < HEADER_MAX


def read_net(path: str | os.PathLike[str]) -> Checkpoint:
    """A trained net's file (a checkpoint .pt or a weight file .safetensors) as a Checkpoint."""
    path = Path(path)
    if path.suffix == ".onnx":
        raise UserError(f"{path} is an ONNX model: it runs in onnxruntime (alexrepro export check compares it with "
                        "its checkpoint); give a checkpoint .pt or a .safetensors weight file")
    if path.is_file() and is_weight_file(path):
        return read_weights(path)
    return read_checkpoint(path)  # the one call of the checkpoint reader for trained nets' files


def _existing(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give a .safetensors weight file")
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a .safetensors file from alexrepro export safetensors")
    return path


def _digest(meta: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """The checksum of a weight file: every metadata entry but the checksum, and every tensor, in key order."""
    return contents_digest({"metadata": {k: meta[k] for k in sorted(meta) if k != CHECKSUM},
                            "tensors": {k: tensors[k] for k in sorted(tensors)}})


def _written_by() -> str:
    from alexrepro.version import __version__

    return f"alexrepro {__version__}"
