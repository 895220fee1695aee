"""`alexrepro synth`: a small ImageNet-layout source tree of generated, learnable images.

Each class is a family of shape, texture and layout (`alexrepro.synth_images.class_family`); colour,
background, lighting, scale, position and rotation are drawn independently of the class and a fifth
of the images are greyscale, so only structure tells the classes apart. The summary lists the
families (`families`) and how many of them are distinct (`distinct_families`: 120 at most; beyond
that, classes c and c + 120 share a family and cannot be told apart).

SRC/
  train/<wnid>/<wnid>_<i>.JPEG                       class-per-folder (ImageFolder reads it)
  val/ILSVRC2012_val_%08d.JPEG                       flat, classes shuffled across the numbers
  devkit/data/ILSVRC2012_validation_ground_truth.txt one ILSVRC2012_ID per val image
  devkit/data/meta.mat                               the devkit's `synsets` struct array (synth_devkit.py)
  LOC_synset_mapping.txt, LOC_val_solution.csv       the Kaggle layout of the same labels
  synth.json                                         what was written (and the marker of a synth tree)

Devkit ID order: the real devkit numbers its leaf synsets in an order of its own (ID 1 is
n02119789, kit fox, not the first sorted WNID), and readers that assume sorted order get
almost every label wrong. synth reproduces the trap: the IDs 1..N are a random permutation of the
sorted WNIDs drawn from the seed, redrawn until no class keeps its sorted place (a
derangement), so the order is deterministic per seed and a reader that assumes sorted
order gets every val label wrong.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from alexrepro.data.options import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE
from alexrepro.data.synth_devkit import class_synsets, meta_mat_bytes
from alexrepro.data.synth_images import (
    DISTINCT_FAMILIES,
    class_family,
    encode,
    quirk_bytes,
    render,
    sample_size,
)
from alexrepro.errors import UserError
from alexrepro.process.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    temp_name,
    writable_folder,
)
from alexrepro.progress import make_progress

GENERATOR = "alexrepro synth"
FORMAT_VERSION = 1
SUMMARY_FILE = "synth.json"
PATHS = {
    "train": "train",
    "val": "val",
    "devkit": "devkit",
    "ground_truth": "devkit/data/ILSVRC2012_validation_ground_truth.txt",
    "meta_mat": "devkit/data/meta.mat",
    "synset_mapping": "LOC_synset_mapping.txt",
    "val_solution": "LOC_val_solution.csv",
    "summary": SUMMARY_FILE,
}
MAX_CLASSES = 10_000
TRAIN_STRIDE = 1_000_000  # train image i of class c is drawn from key c * TRAIN_STRIDE + i
MAX_PER_CLASS = 100_000
SIZE_LIMITS = (16, 4000)

# The oddities of real ImageNet (train): kind -> (what is written, expected outcome of prep).
# Convertible ones are drawn images of their class; prep must turn each into RGB.
TRAIN_QUIRKS: dict[str, tuple[str, str]] = {
    "cmyk": ("CMYK JPEG", "converted"),
    "greyscale": ("greyscale (L) JPEG", "converted"),
    "png": ("RGB PNG named .JPEG", "converted"),
    "rgba_png": ("RGBA PNG named .JPEG, transparent around the object", "converted"),
    "palette": ("palette (P) GIF named .JPEG", "converted"),
    "tiny": ("40×30 JPEG", "converted"),
    "huge": ("2500×1800 JPEG", "converted"),
    "truncated": ("JPEG cut off after half its bytes", "skipped"),
    "empty": ("empty file", "skipped"),
    "text": ("an HTML error page named .JPEG", "skipped"),
}
VAL_QUIRK = "cmyk"  # one val image is CMYK (a real one would be too): still converted
TINY_SIZE = (40, 30)
HUGE_SIZE = (2500, 1800)

# Each stream of randomness gets its own SeedSequence key, so any one image can be redrawn alone.
_TRAIN, _VAL, _VAL_ORDER, _DEVKIT_ORDER, _QUIRK, _KAGGLE_ORDER = 1, 2, 3, 4, 5, 6


def draw_image(seed: int, split: str, index: int, class_index: int, min_size: int = DEFAULT_MIN_SIZE,
               max_size: int = DEFAULT_MAX_SIZE, size: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The uint8 RGB image and object box that synth writes for one image.

    `index` is c * TRAIN_STRIDE + i for train image i of class c, the quirk number for
    quirks and the 1-based val number for val. For val the randomness does not depend on
    `class_index`, so redrawing with another class gives the same size and background with
    another object (the tests use that to check labels against pixels).
    """
    key = {"train": _TRAIN, "val": _VAL, "quirk": _QUIRK}[split]
    rng = np.random.default_rng([seed, key, index])
    w, h = size or sample_size(rng, min_size, max_size)
    return render(rng, class_family(class_index), w, h)


def devkit_ids(classes: int, seed: int) -> np.ndarray:
    """ILSVRC2012_ID (1-based) of each class in sorted-WNID order: a seeded derangement."""
    rng = np.random.default_rng([seed, _DEVKIT_ORDER])
    while True:  # about e draws on average; every class then sits away from its sorted place
        perm = rng.permutation(classes)
        if not np.any(perm == np.arange(classes)):
            return perm + 1


def check_args(classes: int, train_per_class: int, val_per_class: int, seed: int, min_size: int,
               max_size: int) -> None:
    """Raise UserError for numbers synth cannot honour."""
    if not 2 <= classes <= MAX_CLASSES:
        raise UserError(f"--classes must be between 2 and {MAX_CLASSES}, got {classes}")
    if not 1 <= train_per_class <= MAX_PER_CLASS:
        raise UserError(f"--train-per-class must be between 1 and {MAX_PER_CLASS}, got {train_per_class}")
    if not 1 <= val_per_class <= MAX_PER_CLASS:
        raise UserError(f"--val-per-class must be between 1 and {MAX_PER_CLASS}, got {val_per_class}")
    if seed < 0:
        raise UserError(f"--seed must be a non-negative integer, got {seed}")
    lo, hi = SIZE_LIMITS
    if not lo <= min_size <= hi or not lo <= max_size <= hi:
        raise UserError(f"--min-size and --max-size must be between {lo} and {hi} px, got {min_size} and {max_size}")
    if min_size > max_size:
        raise UserError(f"--min-size ({min_size}) is larger than --max-size ({max_size}); swap them")


def prepare_folder(src: Path) -> None:
    """Make SRC ready: create it, or clear a previous synth output; refuse anything else."""
    if src.exists() and not src.is_dir():
        raise UserError(f"{src} is a file; give synth a new or empty folder")
    writable_folder(src, "SRC")
    if not any(src.iterdir()):
        return
    marker = src / SUMMARY_FILE
    try:
        ours = json.loads(marker.read_text()).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise UserError(f"{src} is not empty and is not an earlier synth output; give synth a new or empty folder")
    for name in ("train", "val", "devkit", PATHS["synset_mapping"], PATHS["val_solution"], SUMMARY_FILE):
        p = src / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    for p in src.glob(".*.tmp-*"):  # temporaries of an interrupted run
        p.unlink()


def write_file(path: Path, data: bytes) -> None:
    """Write through a temporary name and rename (no fsync per image: a rerun regenerates all)."""
    tmp = temp_name(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def make_synthetic(src: Path, classes: int = 10, train_per_class: int = 100, val_per_class: int = 20,
                   seed: int = 0, quirks: bool = False, min_size: int = DEFAULT_MIN_SIZE,
                   max_size: int = DEFAULT_MAX_SIZE, progress: bool = True) -> dict[str, Any]:
    """Write an ImageNet-layout tree of generated images under `src`; return the summary.

    The summary (also saved as SRC/synth.json, without `src` and `seconds`) holds the
    counts, the sorted WNIDs with names and devkit IDs, the quirk files with the outcome
    prep should reach for each, and the paths written, all relative to `src`.
    """
    check_args(classes, train_per_class, val_per_class, seed, min_size, max_size)
    src = Path(src)
    prepare_folder(src)
    started = time.perf_counter()
    synsets = class_synsets(classes)
    wnids = [w for w, _ in synsets]
    ids = devkit_ids(classes, seed)
    summary: dict[str, Any] = {
        "generator": GENERATOR, "format_version": FORMAT_VERSION, "complete": False, "seed": seed,
        "classes": classes, "train_per_class": train_per_class, "val_per_class": val_per_class,
        "quirks_enabled": quirks, "min_size": min_size, "max_size": max_size,
    }
    atomic_write_json(src / SUMMARY_FILE, summary)  # marks SRC as ours before any image lands

    # Val labels: every class val_per_class times, shuffled across the numbering.
    val_labels = np.random.default_rng([seed, _VAL_ORDER]).permutation(np.repeat(np.arange(classes), val_per_class))
    val_quirk_at = int(np.random.default_rng([seed, _VAL_ORDER, 1]).integers(len(val_labels))) + 1 if quirks else 0
    jobs, train_counts = _plan_jobs(classes, train_per_class, val_labels, quirks)
    for c in range(classes):
        (src / "train" / wnids[c]).mkdir(parents=True, exist_ok=True)
    (src / "val").mkdir(exist_ok=True)
    writer = _Writer(src, wnids, seed, min_size, max_size, val_quirk_at, next_index=[train_per_class + 1] * classes)
    with make_progress(show=progress) as bar:
        task = bar.add_task("synth", total=len(jobs), unit="images")
        for split, c, i in jobs:
            writer.write(split, c, i)
            bar.advance(task)

    write_devkit(src, synsets, ids, val_labels, train_counts)
    write_kaggle(src, synsets, val_labels, writer.boxes, seed)
    broken = [q["path"] for q in writer.quirks if q["expected"] == "skipped"]
    n_train, n_val = sum(train_counts), len(val_labels)
    summary.update({
        "complete": True,
        "wnids": wnids,
        "names": [words for _, words in synsets],
        "devkit_ids": [int(x) for x in ids],
        "families": [class_family(c).as_dict() for c in range(classes)],
        "distinct_families": min(classes, DISTINCT_FAMILIES),
        "counts": {"train_files": n_train, "train_readable": n_train - len(broken), "val_files": n_val,
                   "val_readable": n_val, "skipped": len(broken)},
        "quirks": writer.quirks,
        "broken": broken,
        "paths": dict(PATHS),
    })
    atomic_write_json(src / SUMMARY_FILE, summary)
    seconds = time.perf_counter() - started
    return {"src": str(src.resolve()), **summary, "seconds": round(seconds, 3),
            "images_per_s": round(len(jobs) / seconds, 1) if seconds > 0 else None}


def _plan_jobs(classes: int, train_per_class: int, val_labels: np.ndarray,
               quirks: bool) -> tuple[list[tuple[str, int, int]], list[int]]:
    """Every image in writing order as (split, class, index), and each class's count of training files.

    Training images first (class by class), then the training quirks (quirk q in class q mod N), then
    val in its shuffled numbering; the order fixes nothing in the pixels (each image is drawn from its
    own key), only the order of the progress bar.
    """
    train_counts = [train_per_class] * classes
    jobs = [("train", c, i) for c in range(classes) for i in range(1, train_per_class + 1)]
    if quirks:
        for q in range(len(TRAIN_QUIRKS)):
            train_counts[q % classes] += 1
            jobs.append(("quirk", q % classes, q))
    jobs += [("val", int(val_labels[k - 1]), k) for k in range(1, len(val_labels) + 1)]
    return jobs, train_counts


@dataclass
class _Writer:
    """Draws and writes one job of `_plan_jobs`; collects the val boxes and the quirk entries."""

    src: Path
    wnids: list[str]
    seed: int
    min_size: int
    max_size: int
    val_quirk_at: int  # the val number written as a quirk (0: none)
    next_index: list[int]  # per class, the file number the next training quirk takes
    boxes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    quirks: list[dict[str, Any]] = field(default_factory=list)

    def write(self, split: str, c: int, i: int) -> None:
        wnid = self.wnids[c]
        if split == "train":
            img, _ = draw_image(self.seed, "train", c * TRAIN_STRIDE + i, c, self.min_size, self.max_size)
            write_file(self.src / "train" / wnid / f"{wnid}_{i}.JPEG", encode(img))
        elif split == "quirk":
            kind = list(TRAIN_QUIRKS)[i]
            size = TINY_SIZE if kind == "tiny" else HUGE_SIZE if kind == "huge" else None
            img, _ = draw_image(self.seed, "quirk", i, c, self.min_size, self.max_size, size=size)
            data, found = quirk_bytes(kind, img)
            rel = f"train/{wnid}/{wnid}_{self.next_index[c]}.JPEG"
            self.next_index[c] += 1
            write_file(self.src / rel, data)
            self.quirks.append(_quirk_entry(rel, "train", wnid, kind, found, img))
        else:
            img, self.boxes[i] = draw_image(self.seed, "val", i, c, self.min_size, self.max_size)
            rel = f"val/ILSVRC2012_val_{i:08d}.JPEG"
            if i == self.val_quirk_at:
                data, found = quirk_bytes(VAL_QUIRK, img)
                self.quirks.append(_quirk_entry(rel, "val", wnid, VAL_QUIRK, found, img))
            else:
                data = encode(img)
            write_file(self.src / rel, data)


def _quirk_entry(rel: str, split: str, wnid: str, kind: str, found: dict[str, Any], img: np.ndarray) -> dict[str, Any]:
    what, expected = TRAIN_QUIRKS[kind]
    readable = expected == "converted"
    return {"path": rel, "split": split, "wnid": wnid, "kind": kind, "what": what, "expected": expected,
            **found, "size": [int(img.shape[1]), int(img.shape[0])] if readable else None}


def write_devkit(src: Path, synsets: list[tuple[str, str]], ids: np.ndarray, val_labels: np.ndarray,
                 train_counts: list[int]) -> None:
    """The devkit's ground-truth file (ILSVRC2012_ID per val image) and meta.mat."""
    gt = "".join(f"{int(ids[c])}\n" for c in val_labels)
    atomic_write_text(src / PATHS["ground_truth"], gt)
    atomic_write_bytes(src / PATHS["meta_mat"], meta_mat_bytes(synsets, ids, train_counts))


def write_kaggle(src: Path, synsets: list[tuple[str, str]], val_labels: np.ndarray,
                 boxes: dict[int, tuple[int, int, int, int]], seed: int) -> None:
    """Kaggle's LOC_synset_mapping.txt (sorted WNIDs) and LOC_val_solution.csv (rows unordered, as Kaggle's)."""
    atomic_write_text(src / PATHS["synset_mapping"], "".join(f"{w} {words}\n" for w, words in synsets))
    rows = []
    for k in np.random.default_rng([seed, _KAGGLE_ORDER]).permutation(len(val_labels)) + 1:
        x0, y0, x1, y1 = boxes[int(k)]
        # Kaggle's PredictionString: "<wnid> xmin ymin xmax ymax " per box, trailing space included.
        rows.append(f"ILSVRC2012_val_{int(k):08d},{synsets[int(val_labels[k - 1])][0]} {x0} {y0} {x1} {y1} \n")
    atomic_write_text(src / PATHS["val_solution"], "ImageId,PredictionString\n" + "".join(rows))
