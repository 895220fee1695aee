"""`alexrepro model summary`: the net a recipe builds, layer by layer, beside the paper's counts."""

from __future__ import annotations

import dataclasses

import typer
from rich.table import Table

from alexrepro.cli.app import app
from alexrepro.progress import console, emit_json
from alexrepro.recipe import load_recipe
from alexrepro.nets.summary import (
    PAPER_NEURONS_PER_LAYER,
    PAPER_NEURONS_STATED,
    PAPER_PARAMS,
    PAPER_PARAMS_STATED,
    is_paper_net,
    meta_model,
    summarize,
    summary_totals,
)

model_app = typer.Typer(help="Describe the net a recipe builds (§3).", no_args_is_help=True)
app.add_typer(model_app, name="model")

SET_HELP = "Override a recipe value: section.key=value (repeatable), e.g. --set model.width=0.5"


@model_app.command("summary")
def model_summary(
    recipe_name: str = typer.Option(
        "paper", "--recipe", help="A shipped recipe name or a path to a .toml file."
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Every layer's output, parameters, multiply-adds and neurons; totals beside the paper's."""
    recipe = load_recipe(recipe_name, set_)
    crop = recipe.data.crop_size
    rows = summarize(meta_model(recipe.model, crop), crop)
    totals = summary_totals(rows)
    paper_net = is_paper_net(recipe.model, crop)
    paper = {
        "params_exact": PAPER_PARAMS,
        "params_stated": PAPER_PARAMS_STATED,
        "neurons_stated": PAPER_NEURONS_STATED,
        "neurons_per_layer": PAPER_NEURONS_PER_LAYER,
        "neurons_per_layer_total": sum(PAPER_NEURONS_PER_LAYER.values()),
    }
    if json_out:
        emit_json(
            {
                "recipe": recipe.name,
                "crop_size": crop,
                "layout": recipe.model.layout,
                "layers": [dataclasses.asdict(r) for r in rows],
                "total_params": totals["params"],
                "total_macs": totals["macs"],
                "total_neurons": totals["neurons"],
                "paper_net": paper_net,
                "matches_paper_params": totals["params"] == PAPER_PARAMS,
                "paper": paper,
            }
        )
        return
    _render(recipe.name, crop, rows, totals, paper_net)


def _render(name: str, crop: int, rows: list, totals: dict[str, int], paper_net: bool) -> None:
    table = Table(title=f"{name}: {crop}×{crop}×3 input", title_justify="left")
    for col in ("layer", "output", "parameters", "multiply-adds", "neurons"):
        table.add_column(col, justify="left" if col in ("layer", "output") else "right")
    if paper_net:
        table.add_column("paper neurons (§3.5)", justify="right")
    for r in rows:
        cells = [
            r.name,
            "×".join(map(str, r.output)),
            f"{r.params:,}",
            f"{r.macs:,}",
            f"{r.neurons:,}" if r.neurons else "",
        ]
        if paper_net:
            ref = PAPER_NEURONS_PER_LAYER.get(r.name)
            cells.append(f"{ref:,}" if ref and r.kind in ("conv", "fc") else "")
        table.add_row(*cells)
    total = ["total", "", f"{totals['params']:,}", f"{totals['macs']:,}", f"{totals['neurons']:,}"]
    if paper_net:
        total.append(f"{sum(PAPER_NEURONS_PER_LAYER.values()):,}")
    table.add_row(*total, style="bold")
    console.print(table)
    params, neurons = totals["params"], totals["neurons"]
    if paper_net:
        mark = "matches" if params == PAPER_PARAMS else f"differs from the exact {PAPER_PARAMS:,}"
        console.print(f'parameters: {params:,}  (paper: "{PAPER_PARAMS_STATED}"; {mark})')
        console.print(
            f'neurons: {neurons:,}  (paper: "{PAPER_NEURONS_STATED:,}"; its per-layer list sums to '
            f"{sum(PAPER_NEURONS_PER_LAYER.values()):,} because it gives conv1 253,440, not 55·55·96 = 290,400)"
        )
    else:
        console.print(f"parameters: {params:,}  (the paper's two-GPU net: {PAPER_PARAMS:,})")
        console.print(f'neurons: {neurons:,}  (the paper\'s two-GPU net: "{PAPER_NEURONS_STATED:,}")')
    console.print(f"multiply-adds per image, forward: {totals['macs']:,}")
