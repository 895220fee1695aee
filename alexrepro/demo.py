"""`alexrepro demo`: the whole pipeline on generated data, in minutes on a CPU.

synth → prep → pca → train (the tiny recipe) → eval with the centre crop and with ten crops, and
with the centre crop on greyscale copies of the val images → the paper's figures. Each stage is the
same Python function its own command calls; the demo only chooses small sizes and prints where
everything went and how to do the same on ImageNet.

The greyscale line is the check that the net learned shapes and textures: synth's classes are
families of shape, texture and layout in any colour, so a net that learned them keeps most of its
accuracy without colour, and one that counts hues (or a pipeline that lost the geometry and kept
the hue) falls to chance there.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alexrepro.errors import UserError
from alexrepro.process.atomic import atomic_write_json, writable_folder
from alexrepro.progress import console

MARKER = "demo.json"  # a folder holding this was made by the demo and may be replaced by it
GREY = "data-grey"  # the greyscale copy of the prepared val split, beside the prepared set


@dataclass
class DemoOptions:
    """Sizes of the demo: small enough for about five minutes on two CPU cores."""

    folder: Path
    classes: int = 10
    train_per_class: int = 200
    val_per_class: int = 50
    epochs: int | None = None  # None: the recipe's (tiny: 36)
    recipe: str = "tiny"
    seed: int = 0
    figures: bool = True


def _prepare_folder(folder: Path) -> None:
    """Refuse a folder that holds anything but an earlier demo; clear an earlier demo."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file; give --dir a folder")
    if folder.is_dir() and any(folder.iterdir()):
        if not (folder / MARKER).is_file():
            raise UserError(f"{folder} is not empty and was not made by alexrepro demo; give --dir a new folder")
        shutil.rmtree(folder)
    writable_folder(folder, "--dir")
    atomic_write_json(folder / MARKER, {"complete": False})


def check_options(opts: DemoOptions) -> None:
    """UserError for sizes the demo cannot run with, before anything is written."""
    from alexrepro.data.synth import check_args
    from alexrepro.recipe_reader import load_recipe

    check_args(opts.classes, opts.train_per_class, opts.val_per_class, opts.seed, 100, 800)
    if opts.epochs is not None and opts.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {opts.epochs}")
    load_recipe(opts.recipe)


class Stages:
    """Numbered stage headings on stderr and each stage's wall time in seconds."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    @contextmanager
    def stage(self, name: str, text: str) -> Iterator[None]:
        self.done += 1
        console.rule(f"[bold]demo {self.done}/{self.total}[/bold] {text}", align="left")
        started = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in self.seconds.items()} | {"total": round(time.perf_counter() - self.started, 1)}


def train_overrides(opts: DemoOptions, n_train: int) -> list[str]:
    """The recipe overrides the demo trains with: its seed and classes, and sizes that fit its small set."""
    from alexrepro.recipe_reader import load_recipe

    overrides = [f"run.seed={opts.seed}", f"model.num_classes={opts.classes}", "data.loader=torch"]
    batch = load_recipe(opts.recipe).optim.batch_size
    if n_train < batch:  # partial batches are dropped: without this a small demo would train nothing
        overrides.append(f"optim.batch_size={max(1, n_train // 2)}")
        console.print(f"note: {n_train} training images are fewer than one batch of {batch}; "
                      f"training with batches of {max(1, n_train // 2)}")
    if opts.epochs is not None:  # keep the recipe's step schedule in proportion
        epochs = opts.epochs
        overrides += [f"schedule.epochs={epochs}",
                      f"schedule.milestones={max(1, round(0.65 * epochs))},{max(1, round(0.9 * epochs))}"]
    return overrides


def draw_figures(run: Path, data: Path, prepared: dict[str, Any]) -> dict[str, str]:
    """The paper's figures from the demo's run: conv1 kernels, curves, predictions and fc7 neighbours."""
    from alexrepro.figures.curves import draw_curves
    from alexrepro.figures.filters import draw_filters
    from alexrepro.figures.neighbors import draw_neighbors
    from alexrepro.figures.predictions import draw_predictions

    n_val, n_train = prepared["splits"]["val"]["written"], prepared["splits"]["train"]["written"]
    return {
        "filters": str(draw_filters(run)["path"]),
        "curves": str(draw_curves([run])["path"]),
        "predictions": str(draw_predictions(run, data, n=min(8, n_val), device="cpu")["path"]),
        "neighbors": str(draw_neighbors(run, data, queries=min(4, n_val), k=min(5, n_train), device="cpu")["path"]),
    }


def run_demo(opts: DemoOptions) -> dict[str, Any]:
    """Run every stage in `opts.folder` and return the closing summary."""
    from alexrepro.data.options import PrepOptions
    from alexrepro.data.prep import prep
    from alexrepro.data.stats import compute_pca
    from alexrepro.data.synth import make_synthetic
    from alexrepro.evaluation.evaluate import evaluate
    from alexrepro.evaluation.options import EvalOptions
    from alexrepro.training.loop import TrainOptions, run_training

    check_options(opts)
    folder = opts.folder.resolve()
    _prepare_folder(folder)
    src, data, run = folder / "src", folder / "data", folder / "run"
    stages = Stages(total=6 if opts.figures else 5)
    with stages.stage("synth", f"synth: {opts.classes} classes of generated images in ImageNet's layout"):
        make_synthetic(src, classes=opts.classes, train_per_class=opts.train_per_class,
                       val_per_class=opts.val_per_class, seed=opts.seed, quirks=True, min_size=100,
                       max_size=800)
    with stages.stage("prep", "prep: shorter side 256, central 256×256, JPEG shards, mean image (§2)"):
        prepared = prep(src, data, PrepOptions(workers=os.cpu_count() or 1))
    with stages.stage("pca", "pca: RGB covariance for the lighting augmentation (§4.1)"):
        compute_pca(data, workers=min(2, os.cpu_count() or 1))
    with stages.stage("train", f"train: recipe {opts.recipe!r} (§5's SGD, §4.1's augmentation)"):
        overrides = train_overrides(opts, prepared["splits"]["train"]["written"])
        trained = run_training(TrainOptions(out=data, run_dir=run, recipe=opts.recipe, overrides=overrides,
                                            device="cpu"))
        assert trained is not None  # a single local process always returns its summary
    best = Path(trained["checkpoints"].get("best") or trained["checkpoints"]["last"])
    grey = folder / GREY
    with stages.stage("eval", "eval: centre crop, the paper's ten crops (§4.1), and the centre crop on greyscale val"):
        greyscale_copy(data, grey)
        evals: dict[Any, dict[str, Any]] = {
            key: evaluate(EvalOptions(out=where, checkpoints=[best], crops=crops, device="cpu", loader="torch",
                                      batch_size=64))
            for key, where, crops in ((1, data, 1), (10, data, 10), ("grey", grey, 1))}
    figures: dict[str, str] = {}
    if opts.figures:
        with stages.stage("figures", "figures: conv1 kernels (Fig. 3), curves, predictions and fc7 neighbours "
                          "(Fig. 4)"):
            figures = draw_figures(run, data, prepared)
    artefacts = {"source": str(src), "prepared": str(data), "greyscale_val": str(grey), "run": str(run), "checkpoint": str(best),
                 "metrics": str(run / "metrics.jsonl"), "figures": figures}
    summary = demo_summary(opts, folder, artefacts, prepared, evals, stages.rounded())
    atomic_write_json(folder / MARKER, {"complete": True, **summary})
    return summary


def demo_summary(opts: DemoOptions, folder: Path, artefacts: dict[str, Any], prepared: dict[str, Any],
                 evals: dict[Any, dict[str, Any]], seconds: dict[str, float]) -> dict[str, Any]:
    """The closing summary (`alexrepro demo --json`): where everything went, both evaluations beside chance."""
    chance = 100.0 * (1 - 1 / opts.classes)
    center, ten, grey = evals[1], evals[10], evals["grey"]
    return {
        "command": "demo",
        "folder": str(folder),
        "artefacts": artefacts,
        "images": {s: v["written"] for s, v in prepared["splits"].items()},
        "classes": opts.classes,
        "chance_top1_error_pct": round(chance, 2),
        "center_crop": {"top1_error_pct": center["top1_error_pct"], "top5_error_pct": center["top5_error_pct"]},
        "ten_crops": {"top1_error_pct": ten["top1_error_pct"], "top5_error_pct": ten["top5_error_pct"]},
        "ten_crop_gain_top1_pct": round(center["top1_error_pct"] - ten["top1_error_pct"], 2),
        "greyscale_center_crop": {"top1_error_pct": grey["top1_error_pct"], "top5_error_pct": grey["top5_error_pct"]},
        "greyscale_kept_accuracy": kept_accuracy(center["top1_error_pct"], grey["top1_error_pct"]),
        "below_chance": center["top1_error_pct"] < chance,
        "seconds": seconds,
        "imagenet_commands": imagenet_commands(),
    }


def kept_accuracy(colour_error_pct: float, grey_error_pct: float) -> float | None:
    """Top-1 accuracy on greyscale val as a fraction of the accuracy in colour (None if colour got none right)."""
    colour_acc = 100.0 - colour_error_pct
    return None if colour_acc <= 0 else round((100.0 - grey_error_pct) / colour_acc, 4)


def greyscale_copy(data: Path, dest: Path, split: str = "val") -> Path:
    """A prepared set at `dest` holding `split` of `data` with every image grey, and `data`'s statistics.

    Grey is ITU-R 601 luma (PIL's "L" conversion) repeated in R, G and B, re-encoded like the set
    (JPEG at its quality, or raw). The mean image and PCA stay the colour training set's, so the
    net sees what it would see had the photographs been grey.
    """
    import io

    import numpy as np
    from PIL import Image

    from alexrepro.data.manifest import read_manifest, write_manifest
    from alexrepro.data.shards import write_shard
    from alexrepro.data.split import open_split
    from alexrepro.data.stats_file import STATS
    from alexrepro.process.atomic import atomic_write_bytes

    manifest = read_manifest(data)
    dataset = open_split(data, split)
    quality = int(manifest.quality or 95)
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dest / STATS, (data / STATS).read_bytes())
    for entry, shard in zip(manifest.splits[split].shards, dataset.shards, strict=True):
        images: list[Any] = []
        for i in range(len(shard)):
            grey = Image.fromarray(shard.image(i)).convert("L").convert("RGB")
            if dataset.encoding == "raw":
                images.append(np.asarray(grey))
            else:
                buf = io.BytesIO()
                grey.save(buf, "JPEG", quality=quality)
                images.append(buf.getvalue())
        (dest / entry.file).parent.mkdir(parents=True, exist_ok=True)
        write_shard(dest / entry.file, dataset.encoding, np.stack(images) if dataset.encoding == "raw" else images,
                    shard.labels(), shard.keys())
    write_manifest(dest, dataclasses.replace(manifest, splits={split: manifest.splits[split]}, prep=None,
                                             notes=[*manifest.notes, f"greyscale copy of {split} from {data}"]))
    return dest


def imagenet_commands() -> list[str]:
    """The same journey on real ImageNet (see README)."""
    return [
        "alexrepro prep /data/ilsvrc2012 /fast/alexnet-256",
        "alexrepro pca /fast/alexnet-256",
        "alexrepro train /fast/alexnet-256 --recipe paper --run runs/paper --device cuda",
        "alexrepro eval /fast/alexnet-256 --checkpoint runs/paper/checkpoints/best.pt --crops 10",
        "alexrepro viz filters runs/paper",
    ]
