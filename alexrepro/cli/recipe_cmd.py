"""`alexrepro recipe list|show`."""

from __future__ import annotations

import typer
from rich.table import Table

from alexrepro.cli.app import app
from alexrepro.progress import console, emit_json

recipe_app = typer.Typer(help="List and show training recipes (TOML files in recipes/).", no_args_is_help=True)
app.add_typer(recipe_app, name="recipe")

SET_HELP = "Override a recipe value: section.key=value (repeatable), e.g. --set optim.lr=0.02"


@recipe_app.command("list")
def recipe_list(json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout.")) -> None:
    """List the shipped recipes."""
    from alexrepro.recipe_reader import list_recipes

    items = list_recipes()
    if json_out:
        emit_json({"recipes": [{"name": name, "description": text} for name, text in items]})
        return
    table = Table("recipe", "description")
    for name, text in items:
        table.add_row(name, text)
    console.print(table)


@recipe_app.command("show")
def recipe_show(
    name: str = typer.Argument(..., metavar="NAME", help="A shipped recipe name or a path to a .toml file."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Print the resolved recipe (extends and --set applied) as TOML."""
    from alexrepro.recipe import recipe_to_toml
    from alexrepro.recipe_reader import load_recipe

    recipe = load_recipe(name, set_)
    if json_out:
        emit_json({"name": recipe.name, "description": recipe.description, **recipe.to_dict()})
        return
    typer.echo(recipe_to_toml(recipe), nl=False)
