"""Command-line interface: thin glue that parses, calls one function and renders.

Each module below registers its commands on the one Typer app, in the order of the data path.
"""

from alexrepro.cli import (  # noqa: F401  (importing registers the commands)
    bench_cmd,
    data_cmd,
    demo_cmd,
    eval_cmd,
    export_cmd,
    import_cmd,
    model_cmd,
    recipe_cmd,
    stats_cmd,
    synth_cmd,
    train_cmd,
    viz_cmd,
)
from alexrepro.cli.app import app, main

__all__ = ["app", "main"]
