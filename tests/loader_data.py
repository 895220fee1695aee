"""Tiny prepared sets for the loader tests, written directly with alexrepro.data.prepared (no prep run)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from alexrepro.data.prepared import IMAGE_SIZE, Stats, write_manifest, write_shard, write_stats

# Sizes of the shared `jpeg_set` / `raw_set` fixtures (conftest.py): labels are the global indices.
N_TRAIN, N_VAL = 20, 7

# A fixed PCA basis (an orthonormal rotation) and eigenvalues on the 0–255 scale, ImageNet-like.
EIGVAL = np.array([14145.0, 1223.0, 293.0])
EIGVEC = np.linalg.qr(np.array([[0.58, -0.72, 0.38], [0.57, 0.02, -0.82], [0.58, 0.69, 0.42]]))[0]


def structured_image(i: int, size: int = IMAGE_SIZE) -> np.ndarray:
    """A uint8 size×size×3 image with gradients, a per-image pattern and noise (no two alike)."""
    rng = np.random.default_rng(1000 + i)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    r = 255 * xx / (size - 1)
    g = 255 * yy / (size - 1)
    b = 127.5 + 100 * np.sin((xx + 3 * i) / (7 + i % 5)) * np.cos(yy / 11)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (size, size, 3))
    img[(i * 17) % 200 : (i * 17) % 200 + 40, 10:50] = (i * 37) % 256  # a block that tells images apart
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def make_set(
    out: Path,
    n_train: int = 20,
    n_val: int = 7,
    per_shard: int = 8,
    encoding: str = "jpeg",
    labels_are_indices: bool = True,
    pca: bool = True,
) -> Path:
    """A prepared set at `out`: train and val splits, shards of `per_shard`, mean image and PCA stats.

    With labels_are_indices, each image's label is its global index in its split (so tests can see
    exactly which images a loader produced).
    """
    out = Path(out)
    splits = {}
    all_train = []
    for split, n in (("train", n_train), ("val", n_val)):
        shards = []
        for s, start in enumerate(range(0, n, per_shard)):
            ids = list(range(start, min(n, start + per_shard)))
            offset = 0 if split == "train" else 500
            images = [structured_image(i + offset) for i in ids]
            if split == "train":
                all_train += images
            labels = ids if labels_are_indices else [i % 3 for i in ids]
            payload = [jpeg_bytes(im) for im in images] if encoding == "jpeg" else np.stack(images)
            rel = f"{split}/{s:05d}.h5"
            write_shard(out / rel, encoding, payload, labels, [f"{split}/img{i}.JPEG" for i in ids])
            shards.append({"file": rel, "count": len(ids)})
        splits[split] = {"count": n, "skipped": 0, "shards": shards}
    n_classes = max(n_train, n_val) if labels_are_indices else 3
    classes = [{"index": i, "wnid": f"n{i:08d}", "name": f"class {i}"} for i in range(n_classes)]
    write_manifest(out, {"splits": splits, "classes": classes, "encoding": encoding, "source": "test"})
    stack = np.stack(all_train).astype(np.float64)
    mean = stack.mean(axis=0).astype(np.float32)
    stats = Stats(mean=mean, channel_mean=stack.mean(axis=(0, 1, 2)), pixel_count=stack[..., 0].size,
                  eigval=EIGVAL if pca else None, eigvec=EIGVEC if pca else None)
    write_stats(out, stats)
    return out
