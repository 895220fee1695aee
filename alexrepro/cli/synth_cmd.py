"""`alexrepro synth SRC`: write a small ImageNet-layout tree of generated images."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from alexrepro.cli.app import app
from alexrepro.data.options import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE
from alexrepro.progress import console, emit_json


@app.command("synth")
def synth(
    src: Path = typer.Argument(..., metavar="SRC", help="Folder to write (new, empty, or an earlier synth output)."),
    classes: int = typer.Option(10, "--classes", help="Number of classes (at least 2)."),
    train_per_class: int = typer.Option(100, "--train-per-class", help="Training images per class."),
    val_per_class: int = typer.Option(20, "--val-per-class", help="Validation images per class."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes identical files."),
    quirks: bool = typer.Option(False, "--quirks", help="Add real ImageNet's oddities: CMYK, greyscale, PNG, "
                                "palette, tiny, huge, truncated, empty and text files named .JPEG."),
    min_size: int = typer.Option(DEFAULT_MIN_SIZE, "--min-size", help="Smallest image side in px."),
    max_size: int = typer.Option(DEFAULT_MAX_SIZE, "--max-size", help="Largest image side in px."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Write generated, learnable images in ImageNet's layout (train folders, flat val, devkit, Kaggle files)."""
    from alexrepro.data.synth import make_synthetic

    summary = make_synthetic(src, classes=classes, train_per_class=train_per_class, val_per_class=val_per_class,
                             seed=seed, quirks=quirks, min_size=min_size, max_size=max_size, progress=True)
    if json_out:
        emit_json(summary)
        return
    counts = summary["counts"]
    table = Table("", "value", title=f"synth → {summary['src']}")
    table.add_row("classes", f"{summary['classes']} ({summary['wnids'][0]} … {summary['wnids'][-1]})")
    table.add_row("train files", f"{counts['train_files']} ({counts['train_readable']} readable)")
    table.add_row("val files", str(counts["val_files"]))
    families = [f["description"] for f in summary["families"]]
    table.add_row("class families", ", ".join(families[:5]) + (f", … ({summary['distinct_families']} distinct)"
                                                              if len(families) > 5 else ""))
    table.add_row("quirks", ", ".join(f"{q['kind']} ({q['expected']})" for q in summary["quirks"]) or "none")
    table.add_row("time", f"{summary['seconds']:.1f} s, {summary['images_per_s']} images/s")
    console.print(table)
