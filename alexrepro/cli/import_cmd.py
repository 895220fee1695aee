"""`alexrepro import caffe|torchvision`: published AlexNet weights as a checkpoint for eval, predict and viz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from alexrepro.cli.app import app
from alexrepro.progress import console, emit_json

import_app = typer.Typer(
    help="Published AlexNet weights (Caffe's bvlc_alexnet, torchvision's alexnet) as an alexrepro checkpoint.",
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")

JSON_HELP = "Print one JSON object on stdout."
DATA_HELP = "A prepared set (alexrepro prep): its classes (the count must match) and, for Caffe without --mean, its mean image."
OUT_HELP = "The checkpoint to write (.pt)."


@import_app.command("caffe")
def import_caffe_cmd(
    model: Path = typer.Argument(..., metavar="MODEL.caffemodel", help="Caffe's bvlc_alexnet.caffemodel."),
    mean: Path | None = typer.Option(None, "--mean", help="Caffe's imagenet_mean.binaryproto (the mean image it was trained with)."),
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Caffe's bvlc_alexnet onto the paper's net, with a recipe of Caffe's conventions (227 crops, its LRN)."""
    from alexrepro.imports.to_checkpoint import ImportOptions, import_checkpoint

    _render(import_checkpoint(ImportOptions("caffe", model, out, mean=mean, data=data)), json_out)


@import_app.command("torchvision")
def import_torchvision_cmd(
    weights: Path = typer.Argument(..., metavar="WEIGHTS.pth", help="torchvision's alexnet state dict (alexnet-owt-*.pth)."),
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """torchvision's alexnet (the one-weird-trick variant), with its preprocessing (channel mean and std)."""
    from alexrepro.imports.to_checkpoint import ImportOptions, import_checkpoint

    _render(import_checkpoint(ImportOptions("torchvision", weights, out, data=data)), json_out)


def _render(summary: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(summary)
        return
    origin, pub, inp = summary["origin"], summary["origin"]["published"], summary["input"]
    console.print(f"wrote {summary['out']}: {origin['file']} ({summary['format']}, net {origin['net']!r}, "
                  f"sha256 {origin['sha256'][:12]}…) as {summary['arch']}", soft_wrap=True)
    console.print(f"input: {inp['crop_size']}×{inp['crop_size']} crops of {inp['image_size']}×{inp['image_size']}, "
                  f"mean {inp['mean']} (from {summary['mean_from'] or 'the prepared set given to eval'}); "
                  f"{summary['classes']} classes from {summary['classes_from']}", soft_wrap=True)
    if summary["mean_from"] is None:
        console.print("note: no mean image stored (no --mean or --data): eval takes OUT's stats.h5, "
                      "predict needs --data OUT", soft_wrap=True)
    console.print(f"published: {pub['top1_acc']}% top-1, {pub['top5_acc']}% top-5 accuracy on ILSVRC-2012 val "
                  f"({pub['protocol']}; {pub['reference']}); check your data with: alexrepro eval OUT "
                  f"--checkpoint {summary['out']} --crops 1", soft_wrap=True)
