"""`alexrepro eval` (ten patches or the centre one, ensembles, beside the paper's tables) and `predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from alexrepro.cli.app import app
from alexrepro.errors import UserError, WorkFailed
from alexrepro.progress import console, emit_json

JSON_HELP = "Print one JSON object on stdout."


@app.command("eval")
def eval_command(
    out: Path = typer.Argument(..., metavar="OUT", help="The prepared set (alexrepro prep SRC OUT)."),
    checkpoint: list[Path] = typer.Option(
        ..., "--checkpoint", "-c", help="A checkpoint .pt; give several to average them as an ensemble (§6)."
    ),
    crops: int = typer.Option(10, "--crops", help="10: §4.1's four corners + centre and their mirrors; 1: centre."),
    split: str = typer.Option("val", "--split", help="The split to score."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per batch (each is 10 patches with --crops 10)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    loader: str = typer.Option("auto", "--loader", help="auto, torch or dali."),
    procs: int = typer.Option(1, "--procs", "--gpus", help="Processes splitting the images (one per GPU; gloo on CPU)."),
    paper_table: str | None = typer.Option(None, "--paper-table", help="2010 or 2012; default from the set's source."),
    per_class: Path | None = typer.Option(None, "--per-class", help="Write each class's error to this CSV."),
    predictions: Path | None = typer.Option(None, "--predictions", help="Write each image's top-5 (CSV for .csv, else JSON lines)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Top-1 and top-5 error of one checkpoint or an ensemble, beside the paper's results."""
    from alexrepro.evaluate import EvalOptions, check_options, evaluate_in_group

    if loader not in ("auto", "torch", "dali"):
        raise UserError(f"--loader must be auto, torch or dali, got {loader!r}")
    if procs < 1:
        raise UserError(f"--procs must be at least 1, got {procs}")
    opts = EvalOptions(
        out=out, checkpoints=list(checkpoint), crops=crops, split=split, batch_size=batch_size,
        device=device, loader=loader, paper_table=paper_table, per_class=per_class, predictions=predictions,
    )
    check_options(opts)  # before spawning --procs processes
    if procs > 1:
        from alexrepro.distributed import launch

        report = launch(evaluate_in_group, procs, (opts, not json_out))
    else:
        from alexrepro.distributed import torchrun_env

        report = evaluate_in_group(opts, show_progress=True)
        info = torchrun_env()  # under torchrun every rank gets the report; rank 0 prints it
        if info is not None and not info.is_main:
            return
    if json_out:
        emit_json(report)
    else:
        console.print(eval_table(report))
        console.print(
            f"{report['images']:,} images in {report['seconds']:.1f} s ({report['images_per_s'] or 0:,.1f} images/s) "
            f"on {report['device']} × {report['world_size']}"
        )


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _diff(x: float | None) -> str:
    return "" if x is None else f"{x:+.1f}"


def eval_table(report: dict[str, Any]) -> Table:
    """Our error rates (with 95% intervals) as the first row, then the paper's table with each row's protocol.

    A Δ appears only on the row measured the way this run was (same nets, same test patches); when the
    table has none (Table 2 has no centre-patch row), the caption says so and no row carries a Δ.
    """
    paper = report["paper"]
    title = f"{report['split']}: ILSVRC-{paper['table']} (Table {1 if paper['table'] == '2010' else 2} of the paper)"
    caption = (f"Δ: this run − the row measured the same way ({paper['protocol']})" if paper["comparable"]
               else f"no Δ: {paper['no_comparable']}")
    t = Table("model", "protocol", "top-1 %", "top-5 %", "top-5 test %", "Δ top-1 / top-5", title=title,
              caption=caption)
    ci1, ci5 = report["top1_ci95_pct"], report["top5_ci95_pct"]
    top1 = f"{_fmt(report['top1_error_pct'])} [{ci1[0]:.1f}, {ci1[1]:.1f}]" if ci1 else "—"
    top5 = f"{_fmt(report['top5_error_pct'])} [{ci5[0]:.1f}, {ci5[1]:.1f}]" if ci5 else "—"
    t.add_row("[bold]this run[/bold]", paper["protocol"], top1, top5, "", "")
    for row in paper["rows"]:
        comparable = row["model"] == paper["comparable"]
        diff = f"{_diff(paper['top1_diff_pct'])} / {_diff(paper['top5_diff_pct'])}" if comparable else ""
        style = "bold cyan" if comparable else None
        t.add_row(row["model"], row["protocol"], _fmt(row["top1"]), _fmt(row["top5"]), _fmt(row["top5_test"]), diff,
                  style=style)
    return t


@app.command("predict")
def predict_command(
    images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Image files (any format PIL reads)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="A checkpoint .pt from alexrepro train."),
    crops: int = typer.Option(10, "--crops", help="10: §4.1's ten patches averaged; 1: the centre patch."),
    data: Path | None = typer.Option(None, "--data", help="The prepared set, for its mean image if the checkpoint lacks one."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    top: int = typer.Option(5, "--top", help="How many classes to show per image."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The top-5 classes, with names and probabilities, for image files."""
    from alexrepro.predict import predict_files

    report = predict_files(checkpoint, images, crops=crops, data=data, device=device, top=top)
    if json_out:
        emit_json(report)
    else:
        for item in report["images"]:
            t = Table("rank", "class", "wnid", "probability")
            for i, c in enumerate(item["top"], 1):
                t.add_row(str(i), c["name"], c["wnid"], f"{c['prob']:.3f}")
            console.print(Text(str(item["path"]), style="bold"), soft_wrap=True)
            console.print(t)
        for f in report["failed"]:
            console.print(Text.assemble(("could not read ", "red"), f"{f['path']}: {f['reason']}"), soft_wrap=True)
    if report["failed"]:
        first = report["failed"][0]
        raise WorkFailed(f"{len(report['failed'])} of {len(images)} images could not be read (first: {first['path']}: "
                         f"{first['reason']}); give image files PIL can read")
