"""`alexrepro features`: one layer's vectors of every image of a split, with its label, in one HDF5 file.

Each image is seen on its centre patch, as `eval --crops 1` sees it (the loaders' test-time preset, with the
mean the net carries), through `nets/activations.py`: a layer's output after its nonlinearity, fc7 by
default (§6.1: the 4,096-d vectors whose Euclidean neighbours Figure 4 shows). The file (docs/FORMAT.md,
"Feature files") is written atomically and names what its vectors depend on: the net (`net_digest`: its
weights and input conventions) and the prepared set (its manifest's SHA-256), so `viz neighbors --index`
can refuse vectors of another net or set.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexrepro.errors import UserError
from alexrepro.recipe import DataConfig

FORMAT = "alexrepro-features"
VERSION = 1
DTYPE = np.float32
CHUNK_ROWS = 1024


@dataclass
class FeatureOptions:
    """What `alexrepro features` takes."""

    out: Path  # the prepared set
    checkpoint: Path  # a checkpoint or a .safetensors weight file
    file: Path  # the HDF5 file to write
    layer: str = "fc7"
    split: str = "val"
    batch_size: int = 64
    device: str = "auto"
    loader: str = "auto"


def extract_features(opts: FeatureOptions, show_progress: bool = True) -> dict[str, Any]:
    """Write the layer's vectors and the labels of every image of the split; returns the --json summary."""
    import h5py

    from alexrepro.atomic import atomic_path, writable_file
    from alexrepro.data.prepared import manifest_path, open_split
    from alexrepro.evaluation.evaluate import rank_indices
    from alexrepro.export.classifier import load
    from alexrepro.loaders import make_loader
    from alexrepro.nets.activations import check_layer, layer_activations
    from alexrepro.progress import make_progress

    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {opts.batch_size}")
    writable_file(opts.file, "--out")
    dataset = open_split(opts.out, opts.split)  # UserError if OUT or the split does not exist
    n = len(dataset)
    if n == 0:
        raise UserError(f"{opts.out} split {opts.split!r} holds no images; prepare it again")
    clf = load(opts.checkpoint, device=opts.device, data=opts.out)
    check_layer(clf.net, opts.layer)
    loader = make_loader(opts.out, opts.split, clf.recipe.data, opts.batch_size, train=False, device=clf.device,
                         crops="center", kind=opts.loader, stats=clf.mean)
    start = time.perf_counter()
    progress = make_progress(transient=True)
    with progress, loader, atomic_path(opts.file) as tmp, h5py.File(tmp, "w") as f:
        task = progress.add_task(f"{opts.layer} features ({opts.split})", total=n, unit="images",
                                 visible=show_progress)
        rows, labels, feats = rank_indices(loader.plan), np.zeros(n, np.int64), None
        for x, y in loader:
            with torch.inference_mode():
                v = layer_activations(clf.net, x, opts.layer).float().cpu().numpy()
            if feats is None:
                feats = f.create_dataset("features", shape=(n, v.shape[1]), dtype=DTYPE,
                                         chunks=(min(CHUNK_ROWS, n), v.shape[1]))
            idx = [next(rows) for _ in range(len(v))]
            lo, hi = idx[0], idx[-1] + 1
            if idx != list(range(lo, hi)):  # an evaluation loader reads the split in order
                raise RuntimeError(f"the loader gave images {idx[:4]}... out of the split's order")
            feats[lo:hi] = v.astype(DTYPE)
            labels[lo:hi] = torch.as_tensor(y).cpu().numpy()
            progress.advance(task, len(v))
        f.create_dataset("labels", data=labels)
        f.create_dataset("indices", data=np.arange(n, dtype=np.int64))
        f.create_dataset("keys", data=np.array(dataset.keys(), dtype=object), dtype=h5py.string_dtype())
        attrs = {"format": FORMAT, "version": VERSION, "layer": opts.layer, "split": opts.split, "crops": "center",
                 "checkpoint": str(opts.checkpoint), "net": net_digest(clf.net.state_dict(), clf.recipe.data, clf.mean.mean), "set": str(Path(opts.out).resolve()),
                 "manifest_sha256": file_sha256(manifest_path(opts.out)), "classes": json.dumps(dataset.classes)}
        f.attrs.update(attrs)
        dim = int(feats.shape[1])
    seconds = time.perf_counter() - start
    return {"command": "features", "out": str(opts.file), "checkpoint": str(opts.checkpoint), "set": str(opts.out),
            "split": opts.split, "layer": opts.layer, "images": n, "dim": dim, "device": str(clf.device),
            "loader": loader.kind, "seconds": round(seconds, 3), "images_per_s": round(n / max(seconds, 1e-9), 1)}


def net_digest(weights: dict[str, torch.Tensor], data: DataConfig, mean_image: np.ndarray) -> str:
    """What a layer's vectors depend on besides the image: the weights and the input conventions (the recipe's
    sizes and mean, the mean image itself)."""
    from alexrepro.training.checkpoint import contents_digest

    return contents_digest({"weights": weights, "input": [data.image_size, data.crop_size, data.mean],
                            "scale": [list(data.mean_rgb), list(data.std_rgb)],
                            "mean": torch.from_numpy(np.ascontiguousarray(mean_image, dtype=np.float32))})


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def read_feature_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A feature file's attributes (a UserError if it is missing, unreadable or not one of `alexrepro features`)."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} {'is a folder' if path.is_dir() else 'does not exist'}; give a file written by "
                        "alexrepro features")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            complete = all(k in f for k in ("features", "labels", "indices"))
    except OSError as e:
        raise UserError(f"{path} is not a readable HDF5 file ({' '.join(str(e).split())})") from None
    if attrs.get("format") != FORMAT or not complete:
        raise UserError(f"{path} is not a feature file of alexrepro features; write one with alexrepro features OUT "
                        "--checkpoint CK --out FILE.h5")
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in attrs.items()}
