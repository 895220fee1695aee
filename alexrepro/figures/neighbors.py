"""Figure 4 (right): query images and the training images whose fc7 vectors are nearest in Euclidean distance.

The fc7 vectors (4096-d for the paper net, after the ReLU) of the indexed training images are cached
in RUN/fc7-index-<split>.h5 as float32 (float16 would halve the disk but ties the near-equal vectors
of a barely trained net). The cache is keyed on the checkpoint file (size and SHA-256), the prepared set (its manifest's
SHA-256), the split, the images indexed and the recipe's input size and mean; a mismatch rebuilds it.
Queries are cast to the index's dtype before the search, so an image that is in the index finds
itself at (or, across batch sizes, within rounding of) distance 0. Every image is seen on its centre patch (as `eval --crops 1`).
A file of `alexrepro features` can be the index instead (`index=`): the queries are then taken at its layer,
and it is refused unless its vectors come from this net (weights and input conventions) and this set.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from alexrepro.errors import UserError
from alexrepro.export.features import file_sha256, net_digest, read_feature_attrs
from alexrepro.figures.common import (
    FIGURE_HINT,
    Loaded,
    center_patches,
    check_same_classes,
    class_names,
    figure_path,
    input_colour,
    iter_center_batches,
    load_net,
    new_figure,
    pick_indices,
    resolve_run,
    save_figure,
)
from alexrepro.loaders.augment import Colour
from alexrepro.process.atomic import atomic_path, described_write_errors, writable_file
from alexrepro.progress import console, make_progress

INDEX_VERSION = 1
INDEX_DTYPE = np.float32
DEFAULT_INDEX_SIZE = 50_000  # evenly spaced training images (820 MB of fc7); ImageNet's 1.28 M would be 21 GB
CELL_IN = 2.0  # inches per image cell
TITLE_IN = 0.6  # inches above the grid for the figure's title and the first row's


def index_path(run_dir: Path, split: str) -> Path:
    """RUN/fc7-index-<split>.h5."""
    return Path(run_dir) / f"fc7-index-{split}.h5"


def nearest_neighbors(
    index_feats: Any, query_feats: np.ndarray, k: int, block: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """(row indices Q×k, Euclidean distances Q×k) of each query's k nearest index rows, nearest first.

    `index_feats` is any N×D array that slices by rows (numpy or an h5py dataset), read `block` rows at
    a time. Candidates are chosen with ‖a‖² + ‖b‖² − 2a·b and their distances recomputed as ‖a − b‖, so
    an exact match is at distance 0; ties go to the lower row.
    """
    q = np.asarray(query_feats, dtype=np.float64)
    n = int(index_feats.shape[0])
    if q.ndim != 2 or len(index_feats.shape) != 2 or q.shape[1] != index_feats.shape[1]:
        raise ValueError(f"queries {q.shape} and index {tuple(index_feats.shape)} must be Q×D and N×D")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the index size {n}, got {k}")
    best_i = np.zeros((len(q), 0), dtype=np.int64)
    best_d = np.zeros((len(q), 0), dtype=np.float64)
    q_sq = (q**2).sum(1)
    for lo in range(0, n, block):
        rows = np.asarray(index_feats[lo : lo + block], dtype=np.float64)
        approx = q_sq[:, None] + (rows**2).sum(1)[None, :] - 2.0 * q @ rows.T
        m = min(k, len(rows))
        cand = np.argpartition(approx, m - 1, axis=1)[:, :m] if m < len(rows) else np.tile(np.arange(len(rows)), (len(q), 1))
        exact = np.linalg.norm(rows[cand] - q[:, None, :], axis=2)
        all_i = np.concatenate([best_i, cand + lo], axis=1)
        all_d = np.concatenate([best_d, exact], axis=1)
        order = np.lexsort((all_i, all_d), axis=1)[:, :k]  # by distance, then by row
        best_i = np.take_along_axis(all_i, order, 1)
        best_d = np.take_along_axis(all_d, order, 1)
    return best_i, best_d


def index_indices(n_total: int, size: int) -> np.ndarray:
    """Which images of a split of n_total the index holds: all when size is 0 or ≥ n_total, else `size` evenly spaced."""
    if size < 0:
        raise UserError(f"--index-size must be 0 (all) or positive, got {size}")
    if size == 0 or size >= n_total:
        return np.arange(n_total, dtype=np.int64)
    return np.unique(np.linspace(0, n_total - 1, size).round().astype(np.int64))


def index_key(loaded: Loaded, out: Path, split: str, indices: np.ndarray) -> str:
    """The cache key: what the index's vectors depend on, as canonical JSON."""
    from alexrepro.data.manifest import manifest_path

    d = loaded.recipe.data
    key = {
        "version": INDEX_VERSION,
        "checkpoint": {"size": loaded.path.stat().st_size, "sha256": file_sha256(loaded.path)},
        "set": {"path": str(Path(out).resolve()), "manifest_sha256": file_sha256(manifest_path(out))},
        "split": split,
        "dtype": np.dtype(INDEX_DTYPE).name,
        "indices_sha256": hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest(),
        "input": {"image_size": d.image_size, "crop_size": d.crop_size, "mean": d.mean},
    }
    return json.dumps(key, sort_keys=True)


def fc7_batches(loaded: Loaded, dataset: Any, indices: Sequence[int], colour: Colour, device: torch.device,
                batch_size: int, on_batch: Any = None, layer: str = "fc7"):  # noqa: ANN201 - a generator
    """(fc7 vectors, or another layer's, as float32 numpy, labels) for the dataset's `indices`, batch by batch."""
    from alexrepro.nets.activations import layer_activations

    with torch.inference_mode():
        for x, _, labels in iter_center_batches(dataset, indices, loaded.recipe.data, colour, device, batch_size):
            feats = layer_activations(loaded.model, x, layer).float().cpu().numpy()
            if on_batch is not None:
                on_batch(len(labels))
            yield feats, labels


def build_index(path: Path, key: str, loaded: Loaded, dataset: Any, indices: np.ndarray, colour: Colour,
                device: torch.device, batch_size: int, show_progress: bool = True) -> None:
    """Extract the fc7 vectors of `indices` and write the index file atomically, rows filled as batches finish."""
    progress = make_progress(transient=True, show=show_progress)
    with progress, described_write_errors(path, FIGURE_HINT), atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        task = progress.add_task(f"fc7 index ({dataset.split})", total=len(indices), unit="images")
        feats_ds = None
        labels_out = np.zeros(len(indices), dtype=np.int64)
        row = 0
        for feats, labels in fc7_batches(loaded, dataset, indices, colour, device, batch_size,
                                         on_batch=lambda n: progress.advance(task, n)):
            if feats_ds is None:
                feats_ds = f.create_dataset("features", shape=(len(indices), feats.shape[1]), dtype=INDEX_DTYPE,
                                            chunks=(min(1024, len(indices)), feats.shape[1]))
            feats_ds[row : row + len(feats)] = feats.astype(INDEX_DTYPE)
            labels_out[row : row + len(feats)] = labels
            row += len(feats)
        f.create_dataset("indices", data=indices.astype(np.int64))
        f.create_dataset("labels", data=labels_out)
        f.attrs["key"] = key
        f.attrs["split"] = dataset.split


def ensure_index(run_dir: Path, loaded: Loaded, out: Path, split: str, size: int, colour: Colour,
                 device: torch.device, batch_size: int) -> tuple[Path, bool]:
    """(the index file, whether it was reused): reuse RUN/fc7-index-<split>.h5 when its key matches, else build it."""
    from alexrepro.data.split import open_split

    dataset = open_split(out, split)
    indices = index_indices(len(dataset), size)
    if len(indices) == 0:
        raise UserError(f"{out} split {split!r} holds no images to search; prepare it again")
    if len(indices) < len(dataset):
        console.print(f"indexing {len(indices):,} of {len(dataset):,} {split} images, evenly spaced "
                      "(--index-size 0 indexes all)")
    path = index_path(run_dir, split)
    key = index_key(loaded, out, split, indices)
    if path.is_file():
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("key") == key and "features" in f:
                    return path, True
        except OSError:
            pass  # an unreadable cache is rebuilt below
        console.print(f"rebuilding {path.name}: the checkpoint, the set or the options changed")
    writable_file(path, "the fc7 index cache", "it is kept in the run folder: make that writable, or copy the run")
    build_index(path, key, loaded, dataset, indices, colour, device, batch_size)
    return path, False


def given_index(path: Path, loaded: Loaded, out: Path, index_split: str | None) -> tuple[str, str]:
    """(split, layer) of a feature file to search, after checking its vectors are this net's on this set."""
    from alexrepro.data.manifest import manifest_path
    from alexrepro.loaders.colour import saved_mean

    attrs = read_feature_attrs(path)
    if index_split is not None and index_split != attrs["split"]:
        raise UserError(f"{path} holds the {attrs['split']} split, not {index_split}; drop --index-split or give "
                        f"a feature file of {index_split}")
    mean = saved_mean(loaded.ckpt.stats, out, loaded.recipe.data).mean
    if attrs.get("net") != net_digest(loaded.model.state_dict(), loaded.recipe.data, mean):
        raise UserError(f"{path} holds the vectors of another net than {loaded.path} (other weights or input); "
                        f"write them with: alexrepro features {out} --checkpoint {loaded.path}")
    if attrs.get("manifest_sha256") != file_sha256(manifest_path(out)):
        raise UserError(f"{path} was computed on another prepared set than {out}; give the set it was "
                        "computed on, or compute it again on this one")
    return str(attrs["split"]), str(attrs["layer"])


def search_index(path: Path, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rows, distances) of each query's k nearest vectors in an index file, and the file's image indices and
    labels."""
    with h5py.File(path, "r") as f:
        feats = f["features"]
        if k > feats.shape[0]:
            raise UserError(f"--k {k} is more than the {feats.shape[0]} indexed images; ask for fewer")
        rows, dists = nearest_neighbors(feats, q, k)
        return rows, dists, f["indices"][:], f["labels"][:]


def _check_counts(queries: int, k: int, batch_size: int) -> None:
    """A UserError for a count out of range."""
    if not 1 <= queries <= 32:
        raise UserError(f"--queries must be between 1 and 32, got {queries}")
    if not 1 <= k <= 32:
        raise UserError(f"--k must be between 1 and 32, got {k}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")


def draw_neighbors(
    target: str | os.PathLike[str], out: str | os.PathLike[str], queries: int = 5, k: int = 6,
    split: str = "val", index_split: str | None = None, index_size: int = DEFAULT_INDEX_SIZE, seed: int = 0,
    png: str | os.PathLike[str] | None = None, device: str = "auto", batch_size: int = 128,
    index: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Write the fc7-neighbour figure; returns {"path", "index", "index_reused", "queries": [...]}.

    The images searched are `index_split`'s (default train), in the cache RUN/fc7-index-<split>.h5, or those
    of a feature file of `alexrepro features` (`index`), at its layer."""
    from alexrepro.data.split import open_split
    from alexrepro.runtime import resolve_device

    _check_counts(queries, k, batch_size)
    run, ckpt_path = resolve_run(target)
    fig_path = figure_path(run, f"neighbors-{split}.png", png)
    dev = resolve_device(device)
    out = Path(out)
    query_set = open_split(out, split)
    loaded = load_net(ckpt_path, dev)
    layer = "fc7"
    if index is not None:
        index_split, layer = given_index(Path(index), loaded, out, index_split)
    index_split = index_split or "train"
    train_set = open_split(out, index_split)
    check_same_classes(loaded, train_set.classes, out)
    names = class_names(loaded.classes, loaded.recipe.model.num_classes)
    colour = input_colour(loaded, out, dev)
    if index is not None:
        path_idx, reused = Path(index), True
    else:
        path_idx, reused = ensure_index(run, loaded, out, index_split, index_size, colour, dev, batch_size)
    q_idx = pick_indices(len(query_set), queries, seed)
    q_feats, q_labels = zip(*fc7_batches(loaded, query_set, q_idx, colour, dev, batch_size, layer=layer),
                            strict=True)
    q = np.concatenate(q_feats).astype(INDEX_DTYPE)  # the index's rounding (see above)
    rows, dists, set_indices, index_labels = search_index(path_idx, q, k)
    q_labels = np.concatenate(q_labels)

    fig = new_figure(CELL_IN * (k + 1), CELL_IN * queries + TITLE_IN)
    axes = fig.subplots(queries, k + 1, squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - TITLE_IN / (CELL_IN * queries + TITLE_IN),
                        wspace=0.05, hspace=0.25)
    report = []
    for r in range(queries):
        q_patch = _patch(loaded, query_set, int(q_idx[r]))
        _show(axes[r][0], q_patch, f"query: {names[int(q_labels[r])]}", "black", bold=True)
        hits = [{"index": int(set_indices[rows[r, j]]), "label": int(index_labels[rows[r, j]]),
                 "distance": float(f"{dists[r, j]:.6g}")} for j in range(k)]
        _show_neighbors(axes[r][1:], loaded, train_set, hits, dists[r], int(q_labels[r]), names)
        report.append({"index": int(q_idx[r]), "label": int(q_labels[r]), "neighbors": hits})
    fig.suptitle(f"{layer} nearest neighbours: {split} queries, {index_split} images (green: same class as the "
                 "query)", fontsize=11, y=1 - 0.08 / fig.get_figheight(), va="top")
    path = save_figure(fig, fig_path)
    return {
        "path": str(path), "checkpoint": str(ckpt_path), "index": str(path_idx), "index_reused": reused,
        "index_images": int(len(set_indices)), "split": split, "index_split": index_split, "layer": layer, "k": k,
        "queries": report, "width": round(CELL_IN * (k + 1) * fig.dpi),
        "height": round((CELL_IN * queries + TITLE_IN) * fig.dpi),
    }


def _show_neighbors(axes: Any, loaded: Loaded, train_set: Any, hits: list[dict[str, Any]], dists: np.ndarray,
                    query_label: int, names: list[str]) -> None:
    """One query's neighbours, nearest first: green where the class is the query's, red where not."""
    for ax, hit, d in zip(axes, hits, dists, strict=True):
        colour = "tab:green" if hit["label"] == query_label else "tab:red"
        _show(ax, _patch(loaded, train_set, hit["index"]), f"{names[hit['label']]}  d={d:.3g}", colour)


def _patch(loaded: Loaded, dataset: Any, i: int) -> np.ndarray:
    return center_patches([dataset[i][0]], loaded.recipe.data)[0]


def _show(ax: Any, image: np.ndarray, title: str, colour: str, bold: bool = False) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_edgecolor(colour)
        side.set_linewidth(3 if bold else 1.5)
    ax.set_title(title, fontsize=8, color=colour, fontweight="bold" if bold else "normal")
