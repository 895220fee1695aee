"""`alexrepro prep SRC OUT` and `alexrepro info OUT`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from alexrepro.cli.app import app
from alexrepro.data.options import JPEG_QUALITY, SHARD_SIZE, PrepOptions
from alexrepro.progress import console, emit_json

JSON_HELP = "Print one JSON object on stdout."
RESIZE_TEXT = {"shorter-side": "shorter side scaled, central crop", "warp": "warped, aspect ratio not kept"}


@app.command("prep")
def prep_cmd(
    src: Path = typer.Argument(..., metavar="SRC", help="The ImageNet source: train/, val/, test/ folders, .tar files, devkit."),
    out: Path = typer.Argument(..., metavar="OUT", help="Folder for the prepared set (new, empty, or an unfinished prep to resume)."),
    split: list[str] = typer.Option([], "--split", help="Prepare only this split: train, val or test (repeatable)."),
    devkit: Path = typer.Option(None, "--devkit", help="The ILSVRC devkit folder (meta.mat, *_ground_truth.txt)."),
    val_labels: Path = typer.Option(
        None, "--val-labels", help="Labels of a flat val folder: a devkit ground-truth .txt or LOC_val_solution.csv."
    ),
    test_labels: Path = typer.Option(
        None, "--test-labels", help="Labels of a flat test folder, e.g. ILSVRC2010_test_ground_truth.txt."
    ),
    synset_mapping: Path = typer.Option(None, "--synset-mapping", help="Class names: LOC_synset_mapping.txt."),
    encoding: str = typer.Option("jpeg", "--encoding", help="How images are stored: jpeg or raw (uint8 arrays)."),
    quality: int = typer.Option(JPEG_QUALITY, "--quality", help="JPEG quality of the stored images."),
    resize: str = typer.Option(
        "shorter-side", "--resize", help="shorter-side: §2's shorter side to 256 and central 256×256 crop; "
        "warp: the whole image to 256×256 (Caffe's convert_imageset), to match bvlc_alexnet's protocol."
    ),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: all cores)."),
    shard_size: int = typer.Option(SHARD_SIZE, "--shard-size", help="Images per HDF5 shard."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Resize every image (shorter side 256, central 256×256 crop; or --resize warp) into HDF5 shards; compute
    the mean image."""
    from alexrepro.data.prep import prep

    options = PrepOptions(
        encoding=encoding,
        quality=quality,
        resize=resize,
        shard_size=shard_size,
        workers=workers,
        splits=list(split) or None,
        devkit=devkit,
        val_labels=val_labels,
        test_labels=test_labels,
        synset_mapping=synset_mapping,
    )
    summary = prep(src, out, options, progress=True)
    if json_out:
        emit_json(summary)
        return
    table = Table("split", "found", "written", "skipped", "shards", "resumed")
    for name, counts in summary["splits"].items():
        table.add_row(name, str(counts["found"]), str(counts["written"]), str(counts["skipped"]), str(counts["shards"]),
                      str(counts["resumed_shards"]))
    console.print(table)
    if summary["quirks"]:  # the oddities real sources hold, each converted (docs/FORMAT.md, "Images")
        console.print(f"converted, by kind (every file in {Path(out) / 'converted.tsv'}):", soft_wrap=True)
        for kind, q in summary["quirks"].items():
            console.print(f"  {kind}: {q['count']} ({q['what']}), e.g. {escape(q['first'][0])}", soft_wrap=True)
    rate = f", {summary['images_per_s']} images/s" if summary["images_per_s"] else ""
    console.print(f"prepared {out} in {summary['seconds']:.1f} s{rate}; {summary['skipped']} skipped "
                  f"(see {Path(out) / 'skipped.tsv'})")


@app.command("info")
def info_cmd(
    out: Path = typer.Argument(..., metavar="OUT", help="A prepared set (the OUT of alexrepro prep)."),
    verify_: bool = typer.Option(False, "--verify", help="Read every shard: counts, labels, every image decoded and "
                                 "its bytes checked against the stored CRC32."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """What a prepared set holds: splits, counts, classes, format, statistics, skipped files."""
    from alexrepro.data.info import describe, verification_failed, verify

    info = describe(out)
    if verify_:
        info["verify"] = verify(out, progress=True, raise_on_problems=False)
    if json_out:
        emit_json(info)  # with --verify: every problem listed, then exit 1 below if there are any
    if verify_ and info["verify"]["problems"]:
        raise verification_failed(out, info["verify"]["problems"])
    if json_out:
        return
    _render_info(out, info)


def _render_info(out: Path, info: dict[str, Any]) -> None:
    """What `describe` (and `verify`, under info["verify"]) found, for people."""
    quality = f" (quality {info['quality']})" if info["encoding"] == "jpeg" else ""
    console.print(f"[bold]{out}[/bold] from {info['source']}: {info['encoding']}{quality}, "
                  f"{info['image_size']}×{info['image_size']} ({RESIZE_TEXT.get(info['resize'], info['resize'])}), "
                  f"{info['bytes'] / 2**20:,.1f} MiB")
    table = Table("split", "images", "skipped", "shards", "MiB", "layout")
    for name, split in info["splits"].items():
        table.add_row(name, f"{split['count']:,}", str(split["skipped"]), str(split["shards"]),
                      f"{split['bytes'] / 2**20:,.1f}", split["layout"])
    console.print(table)
    classes = info["classes"]
    first = ", ".join(f"{c['index']} {c['wnid']} {c['name']}" for c in classes["first"])
    console.print(f"{classes['count']} classes: {first}{', ...' if classes['count'] > 5 else ''}")
    if info["mean"]:
        r, g, b = info["mean"]["channel_mean"]
        console.print(f"mean (RGB, 0-255): {r:.2f} {g:.2f} {b:.2f}")
    else:
        console.print("mean: not computed (run alexrepro prep to completion)")
    if info["pca"]:
        console.print("PCA eigenvalues (0-255 scale): " + " ".join(f"{v:.2f}" for v in info["pca"]["eigval"]))
    else:
        console.print(f"PCA: not computed (run: alexrepro pca {out})")
    console.print(f"skipped files: {info['skipped']['count']}")
    for skipped in info["skipped"]["first"]:
        console.print(f"  {skipped['path']}: {skipped['reason']}")
    if "verify" in info:
        checked = info["verify"]
        images, summed = sum(checked["images"].values()), sum(checked["checksummed"].values())
        console.print(f"verified: {images:,} images, every shard intact; {summed:,} of them checked against "
                      "their stored CRC32")
