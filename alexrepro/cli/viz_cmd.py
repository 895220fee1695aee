"""`alexrepro viz filters|curves|predictions|neighbors`: the paper's figures from a run, as PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from alexrepro.cli.app import app
from alexrepro.progress import console, emit_json

viz_app = typer.Typer(
    help="The paper's figures from a run: conv1 kernels, training curves, top-5 predictions, fc7 neighbours.",
    no_args_is_help=True,
)
app.add_typer(viz_app, name="viz")

JSON_HELP = "Print one JSON object on stdout."
RUN_ARG = "A run folder (alexrepro train --run RUN) or a checkpoint .pt (default: RUN/checkpoints/best.pt)."
OUT_ARG = "The prepared set the run was trained on (alexrepro prep SRC OUT)."
FILE_HELP = "The PNG to write (default: under RUN/figures/)."
DEVICE_HELP = "auto, cpu, cuda or cuda:N."
INDEX_SIZE = 50_000  # = alexrepro.figures.neighbors.DEFAULT_INDEX_SIZE (not imported: --help stays light)


def _done(result: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(result)
    else:
        console.print(f"wrote {result['path']}")


@viz_app.command("filters")
def viz_filters(
    run: Path = typer.Argument(..., metavar="RUN", help=RUN_ARG),
    out: Path | None = typer.Option(None, "--out", "-o", help=FILE_HELP),
    cols: int | None = typer.Option(None, "--cols", help="Kernels per row (default: 12 for 48 per tower)."),
    scale: int = typer.Option(4, "--scale", help="Screen pixels per kernel pixel (nearest-neighbour)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Figure 3: the conv1 kernels, tower 1 in the top rows and tower 2 below (per-kernel min-max)."""
    from alexrepro.figures.filters import draw_filters

    _done(draw_filters(run, out, cols=cols, scale=scale), json_out)


@viz_app.command("curves")
def viz_curves(
    runs: list[Path] = typer.Argument(..., metavar="RUN", help="One or more run folders, overlaid (e.g. an ablation and paper)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="The PNG to write (default: FIRST_RUN/figures/curves.png)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Training loss, top-1/top-5 train and validation error and learning rate against epochs."""
    from alexrepro.figures.curves import draw_curves

    _done(draw_curves(runs, out), json_out)


@viz_app.command("predictions")
def viz_predictions(
    run: Path = typer.Argument(..., metavar="RUN", help=RUN_ARG),
    data: Path = typer.Argument(..., metavar="OUT", help=OUT_ARG),
    n: int = typer.Option(8, "--n", help="How many images."),
    split: str = typer.Option("val", "--split", help="The split to draw the images from."),
    seed: int = typer.Option(0, "--seed", help="Which images: the same seed draws the same ones."),
    out: Path | None = typer.Option(None, "--out", "-o", help=FILE_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Figure 4, left: images with their true label and the net's top-5 classes as bars."""
    from alexrepro.figures.predictions import draw_predictions

    _done(draw_predictions(run, data, n=n, split=split, seed=seed, out=out, device=device), json_out)


@viz_app.command("neighbors")
def viz_neighbors(
    run: Path = typer.Argument(..., metavar="RUN", help=RUN_ARG),
    data: Path = typer.Argument(..., metavar="OUT", help=OUT_ARG),
    queries: int = typer.Option(5, "--queries", help="How many query images."),
    k: int = typer.Option(6, "--k", help="Neighbours shown per query."),
    split: str = typer.Option("val", "--split", help="The split the queries come from."),
    index_split: str | None = typer.Option(None, "--index-split", help="The split searched (default: train)."),
    index_size: int = typer.Option(INDEX_SIZE, "--index-size", help="Images indexed, evenly spaced; 0 = all."),
    index: Path | None = typer.Option(
        None, "--index", help="A file of alexrepro features (this net, this set) to search instead, at its layer."
    ),
    seed: int = typer.Option(0, "--seed", help="Which queries: the same seed draws the same ones."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per batch for the fc7 extraction."),
    out: Path | None = typer.Option(None, "--out", "-o", help=FILE_HELP),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Figure 4, right: queries and the training images nearest in fc7 space (index cached in RUN)."""
    from alexrepro.figures.neighbors import draw_neighbors

    result = draw_neighbors(run, data, queries=queries, k=k, split=split, index_split=index_split,
                            index_size=index_size, seed=seed, out=out, device=device, batch_size=batch_size,
                            index=index)
    _done(result, json_out)
