"""Colour statistics of the training split: §2's mean image and §4.1's RGB PCA for lighting.

Both are exact sums streamed over the stored images (decoded as stored), parallel over chunks
of shards in a process pool; partial sums are integers, so the result does not depend on the
number of workers or the order in which chunks finish. The pool's workers end with their parent
(alexrepro.process.lifetime) and write nothing; `alexrepro pca` holds OUT's lock (alexrepro.process.locking) while it runs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

import numpy as np

from alexrepro.data.shards import IMAGE_SIZE, Shard, decode_jpeg, reading
from alexrepro.data.split import open_split
from alexrepro.data.stats_file import STATS, Stats, read_stats, write_stats
from alexrepro.errors import UserError
from alexrepro.process import lifetime
from alexrepro.process.atomic import described_write_errors, writable_folder
from alexrepro.process.locking import command_line, lock_folder
from alexrepro.process.signals import Stopped
from alexrepro.progress import make_progress

# Published ImageNet PCA (fb.resnet.torch, datasets/imagenet.lua `pca`), pixels on [0, 1]:
# eigenvalues descending; eigenvector matrix with rows R, G, B and one eigenvector per column
# (its Lighting transform computes rgb_i = Σ_j eigvec[i, j] · α_j · λ_j).
IMAGENET_EIGVAL_UNIT = np.array([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = np.array(
    [
        [-0.5675, 0.7192, 0.4009],
        [-0.5808, -0.0045, -0.8140],
        [-0.5836, -0.6948, 0.4203],
    ]
)
IMAGENET_PCA_SOURCE = "fb.resnet.torch datasets/imagenet.lua (pixels on [0, 1])"

PIXEL_MAX = 255.0  # stored pixels are uint8 on the 0–255 scale
LIGHTING_SCALES = ("unit", "cuda-convnet")  # §4.1 formula on [0, 1]; Krizhevsky's code, √λ on 0–255
CHUNK = 64  # images per pool task: fine-grained progress and load balance, few round trips
IN_FLIGHT = 2  # pool tasks submitted per worker at a time: the parent holds O(workers) partial sums


# --------------------------------------------------------------------------------------------- pure math
def covariance_from_sums(n: int, s: np.ndarray, ss: np.ndarray) -> np.ndarray:
    """3×3 covariance of n vectors x from Σx (3,) and Σxxᵀ (3×3), unbiased (divides by n − 1, as np.cov)."""
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {n}")
    s = np.asarray(s, dtype=np.float64)
    ss = np.asarray(ss, dtype=np.float64)
    cov = (ss - np.outer(s, s) / n) / (n - 1)
    return (cov + cov.T) / 2  # symmetric to the last bit, for eigh


def eigen_rgb(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of a 3×3 covariance, signs fixed.

    Sign convention: each eigenvector's component of largest magnitude is positive (the first
    such component on a tie). That component is at least 1/√3 in size, so the choice is stable.
    """
    cov = np.asarray(cov, dtype=np.float64)
    if cov.shape != (3, 3):
        raise ValueError(f"expected a 3×3 covariance, got shape {cov.shape}")
    val, vec = np.linalg.eigh(cov)  # ascending
    order = np.argsort(val)[::-1]
    val, vec = val[order], vec[:, order]
    lead = vec[np.argmax(np.abs(vec), axis=0), np.arange(3)]
    vec = vec * np.where(lead < 0, -1.0, 1.0)
    return val, vec


def eigval_on_unit_scale(eigval: np.ndarray) -> np.ndarray:
    """Eigenvalues of the [0, 1]-scale covariance, given those on 0–255: λ / 255²."""
    return np.asarray(eigval, dtype=np.float64) / PIXEL_MAX**2


def lighting_magnitudes(stats: Stats, scale: str) -> np.ndarray:
    """(3,) m such that §4.1's lighting shift of a 0–255 pixel is eigvec @ (alpha * m).

    "unit": the paper's formula on [0, 1] pixels (eigenvalues λ/255², shift eigvec·(α⊙λ/255²)),
    restated on 0–255 by multiplying by 255: m = λ / 255.
    "cuda-convnet": Krizhevsky's released code, m = √λ with λ on the 0–255 scale.
    """
    if scale not in LIGHTING_SCALES:
        raise ValueError(f"lighting scale must be one of {LIGHTING_SCALES}, got {scale!r}")
    if stats.eigval is None:
        raise UserError("the colour statistics have no PCA; run: alexrepro pca OUT")
    if stats.scale != "0-255":
        raise ValueError(f"statistics on scale {stats.scale!r}; expected '0-255'")
    lam = np.clip(np.asarray(stats.eigval, dtype=np.float64), 0.0, None)  # rounding can give -0
    if scale == "unit":
        return lam / PIXEL_MAX
    return np.sqrt(lam)


def sample_indices(total: int, sample: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the images a pass uses: all of them, or `sample` drawn without replacement."""
    if sample is None or sample >= total:
        return np.arange(total, dtype=np.int64)
    if sample < 1:
        raise UserError(f"--sample must be a positive number of images, got {sample}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=sample, replace=False)).astype(np.int64)


# --------------------------------------------------------------------------------------------- workers
def _images(path: Path, idx: np.ndarray) -> Iterator[np.ndarray]:
    """The stored images at shard-local indices `idx` (sorted), decoded as stored, shape-checked."""
    shard = Shard(path)
    try:
        with reading(path):
            contiguous = len(idx) > 0 and idx[-1] - idx[0] == len(idx) - 1
            if shard.encoding == "raw" and contiguous:
                block = shard.file["images"][int(idx[0]) : int(idx[-1]) + 1]
                items: Iterator[np.ndarray] = iter(block)
            elif shard.encoding == "jpeg" and contiguous:
                encoded = shard.encoded_range(int(idx[0]), int(idx[-1]) + 1)
                items = (decode_jpeg(b, f"{path} #{int(i)}") for i, b in zip(idx, encoded, strict=True))
            else:
                items = (shard.image(int(i)) for i in idx)
            for i, img in zip(idx, items, strict=True):
                if img.shape != (IMAGE_SIZE, IMAGE_SIZE, 3) or img.dtype != np.uint8:
                    raise UserError(
                        f"{path} image {int(i)} decodes to {img.shape} {img.dtype}, not "
                        f"{IMAGE_SIZE}×{IMAGE_SIZE}×3 uint8; prepare the set again with alexrepro prep"
                    )
                yield img
    finally:
        shard.close()


def _mean_task(path: Path, idx: np.ndarray) -> tuple[int, np.ndarray]:
    """(images, per-pixel int64 sum) over one chunk of a shard."""
    total = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int64)
    n = 0
    for img in _images(path, idx):
        np.add(total, img, out=total)
        n += 1
    return n, total


def _pca_task(path: Path, idx: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(images, Σx int64 (3,), Σxxᵀ int64 3×3) over the pixels of one chunk of a shard."""
    s = np.zeros(3, dtype=np.int64)
    ss = np.zeros((3, 3), dtype=np.int64)
    n = 0
    for img in _images(path, idx):
        x = img.reshape(-1, 3).astype(np.float64)
        # One image: entries ≤ 65536·255² < 2^53, so the float64 products and sums are exact integers.
        s += x.sum(axis=0).astype(np.int64)
        ss += (x.T @ x).astype(np.int64)
        n += 1
    return n, s, ss


def _chunks(out: Path, indices: np.ndarray | None) -> tuple[list[tuple[Path, np.ndarray]], int]:
    """Pool tasks (shard path, local indices) covering the chosen training images, and their count."""
    ds = open_split(out, "train")
    if len(ds) == 0:
        raise UserError(f"{out} has no training images; prepare it again with alexrepro prep SRC {out}")
    chosen = np.arange(len(ds), dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    tasks: list[tuple[Path, np.ndarray]] = []
    for k, shard in enumerate(ds.shards):
        lo, hi = np.searchsorted(chosen, ds.starts[k : k + 2])  # `chosen` is sorted
        local = chosen[lo:hi] - ds.starts[k]
        for a in range(0, len(local), CHUNK):
            tasks.append((shard.path, local[a : a + CHUNK]))
    return tasks, int(len(chosen))


def _run(
    fn: Callable[[Path, np.ndarray], tuple],
    tasks: list[tuple[Path, np.ndarray]],
    total: int,
    workers: int,
    progress: bool,
    label: str,
    reduce: Callable[[tuple], None],
) -> None:
    """Run `fn` over every task (in a spawn pool when workers > 1), with a bar over images.

    Each result goes to `reduce` as it arrives and is dropped: the pool gets at most
    IN_FLIGHT × workers tasks at a time, so the parent never holds more partial results than that
    (a mean image's partial sum is 1.5 MiB, and ImageNet has ~20,000 chunks).
    """
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    with make_progress(show=progress) as bar:
        task_id = bar.add_task(label, total=total, unit="images")
        if workers == 1:
            for path, idx in tasks:
                reduce(fn(path, idx))
                bar.advance(task_id, len(idx))
        else:
            died = f"a {label} worker died (killed, or out of memory?); run the command again, with fewer --workers if memory is short"
            with lifetime.worker_pool(workers, died) as pool:  # a stop signal, a damaged shard: the workers end now
                todo = iter(tasks)
                futures: dict[Future, int] = {}

                def submit_next() -> None:
                    task = next(todo, None)
                    if task is not None:
                        futures[pool.submit(fn, *task)] = len(task[1])

                for _ in range(IN_FLIGHT * workers):
                    submit_next()
                while futures:
                    done, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in done:
                        images = futures.pop(fut)
                        reduce(fut.result())
                        bar.advance(task_id, images)
                        submit_next()
                    del done, fut  # the finished futures hold their results


# --------------------------------------------------------------------------------------------- passes
def compute_mean(out: Path, workers: int = 1, progress: bool = True) -> Stats:
    """§2's per-pixel mean image of every stored training image; writes stats.h5 (keeping any PCA)."""
    out = Path(out)
    tasks, total = _chunks(out, None)
    pixel_sum = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.int64)
    count = [0]

    def add(part: tuple[int, np.ndarray]) -> None:  # exact int64 sums: any order gives the same bits
        count[0] += part[0]
        np.add(pixel_sum, part[1], out=pixel_sum)

    _run(_mean_task, tasks, total, workers, progress, "mean image", add)
    n = count[0]
    mean = (pixel_sum / n).astype(np.float32)
    pixel_count = n * IMAGE_SIZE * IMAGE_SIZE
    channel_mean = pixel_sum.reshape(-1, 3).sum(axis=0) / pixel_count
    eigval = eigvec = None
    if (out / "stats.h5").is_file():
        with contextlib.suppress(UserError):  # a damaged earlier file is replaced whole; pca makes the PCA again
            old = read_stats(out)
            eigval, eigvec = old.eigval, old.eigvec
    stats = Stats(mean=mean, channel_mean=channel_mean, pixel_count=pixel_count, eigval=eigval, eigvec=eigvec)
    with described_write_errors(out / STATS, "free space on OUT's disk (or fix its permissions), then run the "
                                             "same prep again: it resumes with the mean image"):
        write_stats(out, stats)
    return stats


def pca_sums(
    out: Path, sample: int | None = None, workers: int = 1, seed: int = 0, progress: bool = True
) -> tuple[int, int, np.ndarray, np.ndarray]:
    """(images, pixels, Σx, Σxxᵀ) over the training pixels (or `sample` images), as exact int64 sums."""
    out = Path(out)
    total = len(open_split(out, "train"))
    indices = None if sample is None else sample_indices(total, sample, seed)
    tasks, n_images = _chunks(out, indices)
    s = np.zeros(3, dtype=np.int64)
    ss = np.zeros((3, 3), dtype=np.int64)

    def add(part: tuple[int, np.ndarray, np.ndarray]) -> None:
        np.add(s, part[1], out=s)
        np.add(ss, part[2], out=ss)

    _run(_pca_task, tasks, n_images, workers, progress, "colour PCA", add)
    return n_images, n_images * IMAGE_SIZE * IMAGE_SIZE, s, ss


def compute_pca(
    out: Path, sample: int | None = None, workers: int = 1, seed: int = 0, progress: bool = True
) -> Stats:
    """§4.1's RGB covariance eigen-decomposition of the training pixels, stored in stats.h5 (0–255 scale).

    Holds OUT's lock; stopped by a signal, it raises Stopped saying that stats.h5 is as it was.
    """
    out = Path(out)
    if not (out / STATS).is_file():
        open_split(out, "train")  # a clearer error first if OUT is not a prepared set at all
        raise UserError(f"{out} has no {STATS} (the mean image); finish preparing it first: alexrepro prep SRC {out}")
    writable_folder(out, "OUT")  # before the pass, not after it
    with lock_folder(out, "OUT"):
        stats = read_stats(out, with_pca=False)  # a damaged PCA is what this pass replaces
        try:
            _, pixels, s, ss = pca_sums(out, sample=sample, workers=workers, seed=seed, progress=progress)
        except Stopped as e:
            raise Stopped(e.signum, f"{out / STATS} is as it was (no PCA written); run it again: {command_line()}"
                          ) from None
        stats.eigval, stats.eigvec = eigen_rgb(covariance_from_sums(pixels, s, ss))
        stats.scale = "0-255"
        with described_write_errors(out / STATS, "free space on OUT's disk (or fix its permissions), then run "
                                                 f"alexrepro pca {out} again"):
            write_stats(out, stats)
    return stats


# --------------------------------------------------------------------------------------------- report
EIGVEC_LAYOUT = "rows R, G, B; column j is the eigenvector of eigval[j]"
SIGN_CONVENTION = "each eigenvector's largest-magnitude component is positive"  # as eigen_rgb fixes them


def pca_report(
    out: Path, sample: int | None = None, seed: int = 0, workers: int = 1, progress: bool = True
) -> dict[str, Any]:
    """Run `compute_pca` and describe the result beside the published ImageNet PCA (`alexrepro pca`'s report)."""
    total = len(open_split(out, "train"))
    images = len(sample_indices(total, sample, seed))
    started = time.perf_counter()
    stats = compute_pca(out, sample=sample, workers=workers, seed=seed, progress=progress)
    seconds = time.perf_counter() - started
    assert stats.eigval is not None and stats.eigvec is not None
    return {
        "out": str(out),
        "images": images,
        "pixels": images * stats.mean.shape[0] * stats.mean.shape[1],
        "sample": sample,
        "seed": seed,
        "seconds": round(seconds, 3),
        "scale": stats.scale,
        "eigval": stats.eigval,
        "eigvec": stats.eigvec,
        "eigvec_layout": EIGVEC_LAYOUT,
        "sign_convention": SIGN_CONVENTION,
        "eigval_unit": eigval_on_unit_scale(stats.eigval),
        "lighting_magnitudes": {
            "unit": lighting_magnitudes(stats, "unit"),
            "cuda-convnet": lighting_magnitudes(stats, "cuda-convnet"),
        },
        "imagenet_reference": {
            "source": IMAGENET_PCA_SOURCE,
            "eigval_unit": IMAGENET_EIGVAL_UNIT,
            "eigvec": IMAGENET_EIGVEC,
        },
        # |cos| of each eigenvector with the published one: a sign is arbitrary, a direction is not
        "alignment_with_reference": np.abs(np.sum(stats.eigvec * IMAGENET_EIGVEC, axis=0)),
    }
