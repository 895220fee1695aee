"""`alexrepro demo`: the whole pipeline on generated data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from alexrepro.cli.app import app
from alexrepro.progress import console, emit_json


@app.command("demo")
def demo_command(
    folder: Path = typer.Option(Path("alexrepro-demo"), "--dir", help="Where the demo writes everything."),
    classes: int = typer.Option(10, "--classes", help="Generated classes (the tiny recipe is sized for 10)."),
    train_per_class: int = typer.Option(200, "--train-per-class", help="Training images per class."),
    val_per_class: int = typer.Option(50, "--val-per-class", help="Validation images per class."),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs (default: the tiny recipe's 36)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the data, the initialisation and the augmentation."),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw the paper's figures at the end."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (the summary) on stdout."),
) -> None:
    """synth → prep → pca → train (tiny) → eval (1 and 10 crops) → figures, in minutes on a CPU."""
    from alexrepro.demo import DemoOptions, run_demo

    summary = run_demo(DemoOptions(folder=folder, classes=classes, train_per_class=train_per_class,
                                   val_per_class=val_per_class, epochs=epochs, seed=seed, figures=figures))
    render_summary(summary)
    if json_out:
        emit_json(summary)


def render_summary(summary: dict[str, Any]) -> None:
    """The closing summary for people, on stderr (also with --json, which adds the object on stdout)."""
    table = Table("", "top-1 error", "top-5 error", title="validation (generated data)")
    chance = summary["chance_top1_error_pct"]
    for name, key in (("centre crop", "center_crop"), ("ten crops (§4.1)", "ten_crops"),
                      ("centre crop, greyscale val", "greyscale_center_crop")):
        errors = summary[key]
        top5 = "—" if errors["top5_error_pct"] is None else f"{errors['top5_error_pct']:.1f}%"
        table.add_row(name, f"{errors['top1_error_pct']:.1f}%", top5)
    table.add_row("chance", f"{chance:.1f}%", f"{max(0.0, 100 * (1 - 5 / summary['classes'])):.1f}%")
    console.print(table)
    gain = summary["ten_crop_gain_top1_pct"]
    console.print(f"ten crops: top-1 error {summary['center_crop']['top1_error_pct']:.1f}% → "
                  f"{summary['ten_crops']['top1_error_pct']:.1f}% ({gain:.1f} points better; the paper: 39.0% → 37.5% "
                  "on ILSVRC-2010)")
    grey, kept = summary["greyscale_center_crop"]["top1_error_pct"], summary["greyscale_kept_accuracy"]
    console.print(f"top-1 error on greyscale val: {grey:.1f}% (in colour {summary['center_crop']['top1_error_pct']:.1f}%; "
                  f"{'—' if kept is None else f'{100 * kept:.0f}%'} of the accuracy kept without colour: the classes "
                  "differ in shape, texture and layout, not colour)")
    if not summary["below_chance"]:
        console.print("[yellow]warning:[/yellow] the net did not get below chance; try more --epochs")
    artefacts = summary["artefacts"]
    # paths and commands are printed whole (soft_wrap), so they can be copied from a narrow terminal
    console.print(f"source tree  {artefacts['source']}\nprepared set {artefacts['prepared']}\n"
                  f"run          {artefacts['run']}\ncheckpoint   {artefacts['checkpoint']}", soft_wrap=True)
    for name, path in artefacts["figures"].items():
        console.print(f"figure       {name}: {path}", soft_wrap=True)
    console.print(f"took {summary['seconds']['total']:.0f} s: " + json.dumps(
        {stage: seconds for stage, seconds in summary["seconds"].items() if stage != "total"}))
    console.print("the same on ImageNet:\n  " + "\n  ".join(summary["imagenet_commands"]), soft_wrap=True)
