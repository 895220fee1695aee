"""`alexrepro model summary`: the net a recipe builds, layer by layer, beside the paper's counts."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from alexrepro.cli.app import app
from alexrepro.progress import console, emit_json

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
    from alexrepro.nets.summary import model_report
    from alexrepro.recipe_reader import load_recipe

    report = model_report(load_recipe(recipe_name, set_))
    if json_out:
        emit_json(report)
        return
    console.print(_layer_table(report))
    _print_totals(report)


def _layer_table(report: dict[str, Any]) -> Table:
    """One row per layer, then the totals; with the paper's per-layer neurons when the net is the paper's."""
    paper_net, paper_neurons = report["paper_net"], report["paper"]["neurons_per_layer"]
    crop = report["crop_size"]
    table = Table(title=f"{report['recipe']}: {crop}×{crop}×3 input", title_justify="left")
    for col in ("layer", "output", "parameters", "multiply-adds", "neurons"):
        table.add_column(col, justify="left" if col in ("layer", "output") else "right")
    if paper_net:
        table.add_column("paper neurons (§3.5)", justify="right")
    for layer in report["layers"]:
        cells = [
            layer["name"],
            "×".join(map(str, layer["output"])),
            f"{layer['params']:,}",
            f"{layer['macs']:,}",
            f"{layer['neurons']:,}" if layer["neurons"] else "",
        ]
        if paper_net:
            ref = paper_neurons.get(layer["name"])
            cells.append(f"{ref:,}" if ref and layer["kind"] in ("conv", "fc") else "")
        table.add_row(*cells)
    total = ["total", "", f"{report['total_params']:,}", f"{report['total_macs']:,}", f"{report['total_neurons']:,}"]
    if paper_net:
        total.append(f"{report['paper']['neurons_per_layer_total']:,}")
    table.add_row(*total, style="bold")
    return table


def _print_totals(report: dict[str, Any]) -> None:
    """Parameters and neurons against the paper's statements, and the forward multiply-adds."""
    params, neurons, paper = report["total_params"], report["total_neurons"], report["paper"]
    exact, stated_params, stated_neurons = paper["params_exact"], paper["params_stated"], paper["neurons_stated"]
    if report["paper_net"]:
        mark = "matches" if params == exact else f"differs from the exact {exact:,}"
        console.print(f'parameters: {params:,}  (paper: "{stated_params}"; {mark})')
        console.print(
            f'neurons: {neurons:,}  (paper: "{stated_neurons:,}"; its per-layer list sums to '
            f"{paper['neurons_per_layer_total']:,} because it gives conv1 253,440, not 55·55·96 = 290,400)"
        )
    else:
        console.print(f"parameters: {params:,}  (the paper's two-GPU net: {exact:,})")
        console.print(f'neurons: {neurons:,}  (the paper\'s two-GPU net: "{stated_neurons:,}")')
    console.print(f"multiply-adds per image, forward: {report['total_macs']:,}")
