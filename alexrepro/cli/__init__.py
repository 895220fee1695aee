"""Command-line interface: thin glue that parses, calls one function and renders.

Each module below registers its commands on the one Typer app.
"""

from alexrepro.cli import recipe_cmd  # noqa: F401  (registers commands)
from alexrepro.cli.app import app, main

__all__ = ["app", "main"]
