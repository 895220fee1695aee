"""`alexrepro demo`: the whole pipeline on generated data."""

from __future__ import annotations

from pathlib import Path

import typer

from alexrepro.cli.app import app
from alexrepro.progress import emit_json


@app.command("demo")
def demo_command(
    folder: Path = typer.Option(Path("alexrepro-demo"), "--dir", help="Where the demo writes everything."),
    classes: int = typer.Option(10, "--classes", help="Generated classes (the tiny recipe is sized for 10)."),
    train_per_class: int = typer.Option(200, "--train-per-class", help="Training images per class."),
    val_per_class: int = typer.Option(50, "--val-per-class", help="Validation images per class."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs (default: the tiny recipe's 20)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the data, the initialisation and the augmentation."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the paper's figures at the end."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (the summary) on stdout."),
) -> None:
    """synth → prep → pca → train (tiny) → eval (1 and 10 crops) → figures, in minutes on a CPU."""
    from alexrepro.demo import DemoOptions, render_summary, run_demo

    summary = run_demo(DemoOptions(folder=folder, classes=classes, train_per_class=train_per_class,
                                   val_per_class=val_per_class, epochs=epochs, seed=seed, figures=figures))
    render_summary(summary)
    if json_out:
        emit_json(summary)
