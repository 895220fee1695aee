"""`alexrepro import`: published weights as an alexrepro checkpoint that eval, predict and viz take like any other.

The checkpoint holds the imported net's weights, a recipe whose [model] and [data] sections reproduce the
source's geometry and preprocessing (imports/caffe.py, imports/torchvision.py), the classes, the mean image
when there is one, and its `Origin` (format, file, SHA-256, net, published accuracy), from which `eval`
shows the published row. Classes come from the prepared set (--data), whose class count must match the
weights'; without one, 1000-class weights take torchvision's ImageNet category names (shipped in the
torchvision package) by index, which is ILSVRC's sorted-WNID order, as a prepared ImageNet's labels are.
Caffe's mean image comes from its .binaryproto (--mean), else from the prepared set's stats.h5.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alexrepro.errors import UserError
from alexrepro.imports.weights import ImportedWeights
from alexrepro.process.atomic import writable_file

FORMATS = ("caffe", "torchvision")
IMAGENET_CLASSES = 1000  # ILSVRC-2012's classes, what both published files were trained on


@dataclass
class ImportOptions:
    """What `alexrepro import` takes."""

    format: str  # one of FORMATS
    weights: Path  # the .caffemodel or the .pth
    out: Path  # the checkpoint to write
    mean: Path | None = None  # Caffe's imagenet_mean.binaryproto
    data: Path | None = None  # a prepared set: its classes, and its mean image when no --mean


def import_checkpoint(opts: ImportOptions) -> dict[str, Any]:
    """Read the weights, write the checkpoint atomically; returns the --json summary."""
    from alexrepro.training.checkpoint import Checkpoint, Origin, save_checkpoint

    if opts.format not in FORMATS:
        raise UserError(f"unknown format {opts.format!r}; import one of {', '.join(FORMATS)}")
    if opts.mean is not None and opts.format != "caffe":
        raise UserError("--mean is Caffe's imagenet_mean.binaryproto; torchvision's weights use a channel mean/std")
    writable_file(opts.out, "--out")
    manifest = _manifest(opts.data)
    imported = _read(opts)
    classes, classes_from = import_classes(imported.model.num_classes, manifest, opts)
    stats, mean_from = import_stats(imported, opts)
    recipe = imported_recipe(imported)
    src = imported.source
    origin = Origin(src["format"], src["file"], src["sha256"], src["net"], dict(src["published"]))
    save_checkpoint(opts.out, Checkpoint(model=imported.state_dict, recipe=recipe, classes=classes, stats=stats,
                                         origin=origin))
    d, m = recipe.data, recipe.model
    return {
        "command": "import",
        "format": opts.format,
        "weights": str(opts.weights),
        "out": str(opts.out),
        "origin": origin.to_payload(),
        "arch": m.arch,
        "classes": len(classes),
        "classes_from": classes_from,
        "mean_from": mean_from,
        "input": {"image_size": d.image_size, "crop_size": d.crop_size, "mean": d.mean,
                  "resize": src["published"].get("resize")},
        "recipe": recipe.to_dict(),
    }


def _read(opts: ImportOptions) -> ImportedWeights:
    if opts.format == "caffe":
        from alexrepro.imports.caffe import import_caffe

        return import_caffe(opts.weights, opts.mean)
    from alexrepro.imports.torchvision import import_torchvision

    return import_torchvision(opts.weights)


def _manifest(data: Path | None) -> Any:
    """The prepared set's manifest (a UserError naming the problem if --data is not one), or None."""
    if data is None:
        return None
    from alexrepro.data.manifest import read_manifest

    return read_manifest(data)


def import_classes(num_classes: int, manifest: Any, opts: ImportOptions) -> tuple[list[dict[str, Any]], str]:
    """(the class list, where it came from): the prepared set's, else torchvision's ImageNet names."""
    if manifest is not None:
        classes = manifest.class_list()
        if len(classes) != num_classes:
            raise UserError(
                f"{opts.weights} classifies {num_classes} classes but {opts.data} has {len(classes)}; "
                "give the prepared set of the classes the weights were trained on (ILSVRC-2012's 1000)"
            )
        return classes, str(opts.data)
    if num_classes != IMAGENET_CLASSES:
        raise UserError(
            f"{opts.weights} classifies {num_classes} classes, not ImageNet's {IMAGENET_CLASSES}; give --data OUT, "
            "the prepared set it was trained on, for their names"
        )
    from torchvision.models import AlexNet_Weights

    names = AlexNet_Weights.IMAGENET1K_V1.meta["categories"]  # shipped in torchvision: no download
    return [{"index": i, "name": str(name)} for i, name in enumerate(names)], "torchvision's ImageNet categories"


def import_stats(imported: ImportedWeights, opts: ImportOptions) -> tuple[dict[str, Any] | None, str | None]:
    """(the colour statistics the checkpoint carries, where they came from) for the recipe's mean."""
    from alexrepro.data.stats_file import STATS, Stats, read_stats
    from alexrepro.training.checkpoint import stats_payload

    if imported.data.mean == "channel-std":
        return None, "torchvision's channel mean and std, in the recipe"
    if imported.mean_image is not None:
        mean = np.asarray(imported.mean_image, np.float32)
        stats = Stats(mean=mean, channel_mean=mean.reshape(-1, 3).mean(0, dtype=np.float64), pixel_count=0)
        return stats_payload(stats), str(opts.mean)
    if opts.data is None:
        return None, None  # eval takes OUT's stats.h5; predict needs --data
    if not (Path(opts.data) / STATS).is_file():
        raise UserError(
            f"{opts.data} has no {STATS} (a set prepared without its train split has no mean image); give "
            "--mean imagenet_mean.binaryproto, the mean the weights were trained with"
        )
    return stats_payload(read_stats(opts.data)), str(Path(opts.data) / STATS)


def imported_recipe(imported: ImportedWeights) -> Any:
    """The checkpoint's recipe: the import's [model] and [data], the other sections at their defaults."""
    from alexrepro.recipe import Recipe
    from alexrepro.recipe_reader import validate

    src = imported.source
    name = f"{src['format']}-{src['net'] or 'alexnet'}".replace(" ", "_")
    recipe = Recipe(name=name, description=f"imported from {src['file']} ({src['published'].get('reference', '')})",
                    model=imported.model, data=imported.data)
    validate(recipe)
    return recipe
