"""`alexrepro eval` (ten patches or the centre one, ensembles, beside the paper's tables) and `predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from alexrepro.cli.app import app
from alexrepro.errors import UserError
from alexrepro.loaders import KINDS, kinds_text
from alexrepro.progress import console, emit_json

JSON_HELP = "Print one JSON object on stdout."


@app.command("eval")
def eval_command(
    out: Path = typer.Argument(..., metavar="OUT", help="The prepared set (alexrepro prep SRC OUT)."),
    checkpoint: list[Path] = typer.Option(
        ..., "--checkpoint", "-c",
        help="A checkpoint .pt (or .safetensors weight file); give several to average them as an ensemble (§6).",
    ),
    crops: int = typer.Option(10, "--crops", help="10: §4.1's four corners + centre and their mirrors; 1: centre."),
    split: str = typer.Option("val", "--split", help="The split to score."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per batch (each is 10 patches with --crops 10)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    loader: str = typer.Option("auto", "--loader", help=f"{kinds_text()}."),
    procs: int = typer.Option(1, "--procs", "--gpus", help="Processes splitting the images (one per GPU; gloo on CPU)."),
    paper_table: str | None = typer.Option(None, "--paper-table", help="2010 or 2012; default from the set's source."),
    per_class: Path | None = typer.Option(None, "--per-class", help="Write each class's error to this CSV."),
    predictions: Path | None = typer.Option(None, "--predictions", help="Write each image's top-5 (CSV for .csv, else JSON lines)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Top-1 and top-5 error of one checkpoint or an ensemble, beside the paper's results."""
    from alexrepro.evaluation.evaluate import EvalOptions, run_evaluation

    if loader not in KINDS:
        raise UserError(f"--loader must be {kinds_text()}, got {loader!r}")
    opts = EvalOptions(
        out=out, checkpoints=list(checkpoint), crops=crops, split=split, batch_size=batch_size,
        device=device, loader=loader, paper_table=paper_table, per_class=per_class, predictions=predictions,
        procs=procs,
    )
    report = run_evaluation(opts, show_progress=not json_out)
    if report is None:  # a rank > 0 under torchrun: rank 0 prints
        return
    if json_out:
        emit_json(report)
    else:
        console.print(eval_table(report))
        if report.get("published"):
            render_published(report)
        console.print(
            f"{report['images']:,} images in {report['seconds']:.1f} s ({report['images_per_s'] or 0:,.1f} images/s) "
            f"on {report['device']} × {report['world_size']}"
        )


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _diff(x: float | None) -> str:
    return "" if x is None else f"{x:+.1f}"


def eval_table(report: dict[str, Any]) -> Table:
    """Our error rates as the first row, then the paper's table with the protocol of every row.

    A Δ appears only on the row measured the way this run was (same nets, same test patches); when the
    table has none (Table 2 has no centre-patch row), the caption says so and no row carries a Δ. The
    caption also gives this run's 95% intervals. Table 1 has no test-server column, so it is left out.
    """
    paper = report["paper"]
    title = f"{report['split']}: ILSVRC-{paper['table']} (Table {1 if paper['table'] == '2010' else 2} of the paper)"
    ci = [f"{name} {ci[0]:.1f}–{ci[1]:.1f}" for name, ci in (("top-1", report["top1_ci95_pct"]),
                                                               ("top-5", report["top5_ci95_pct"])) if ci]
    caption = "\n".join([
        "Δ = this run − the row measured the same way" if paper["comparable"] else f"no Δ: {paper['no_comparable']}",
        *(["this run's 95% intervals: " + ", ".join(ci)] if ci else []),
    ])
    test_column = paper["table"] == "2012"
    t = Table(title=title, caption=caption)
    t.add_column("model", no_wrap=True)
    for header in ("protocol", "top-1 %", "top-5 %", *(["top-5 test %"] if test_column else []), "Δ"):
        t.add_column(header)
    t.add_row("[bold]this run[/bold]", paper["protocol"], _fmt(report["top1_error_pct"]),
              _fmt(report["top5_error_pct"]), *([""] if test_column else []), "")
    for row in paper["rows"]:
        comparable = row["model"] == paper["comparable"]
        diff = f"{_diff(paper['top1_diff_pct'])} / {_diff(paper['top5_diff_pct'])}" if comparable else ""
        t.add_row(row["model"], row["protocol"], _fmt(row["top1"]), _fmt(row["top5"]),
                  *([_fmt(row["top5_test"])] if test_column else []), diff, style="bold cyan" if comparable else None)
    return t


def render_published(report: dict[str, Any]) -> None:
    """Imported weights: this evaluation beside their published row (Δ only under the same protocol)."""
    pub = report["published"]
    table = Table("", "top-1 err %", "top-5 err %", "top-1 acc %", "top-5 acc %",
                  title=f"{pub['weights']} beside its published accuracy (ILSVRC-2012 val)")
    ours1, ours5 = report["top1_error_pct"], report["top5_error_pct"]
    crops = _crops(report["crops"])
    table.add_row(f"[bold]this run[/bold] ({crops})", _fmt2(ours1), _fmt2(ours5), _fmt2(_acc(ours1)),
                  _fmt2(_acc(ours5)))
    table.add_row(f"published ({_crops(pub['crops'])})", _fmt2(pub["top1_error_pct"]), _fmt2(pub["top5_error_pct"]),
                  _fmt2(pub["top1_acc_pct"]), _fmt2(pub["top5_acc_pct"]))
    if pub["same_protocol"]:  # Δ only between the same protocol
        table.add_row("Δ this run − published", _diff2(pub["top1_diff_pct"]), _diff2(pub["top5_diff_pct"]), "", "",
                      style="bold cyan")
    console.print(table)
    console.print(f"published: {pub['reference']}; {pub['protocol']}", soft_wrap=True)
    console.print(f"this run: {crops} of {report['out']} ({report['split']}), prepared with --resize "
                  f"{pub['resize']['this_set']}", soft_wrap=True)
    for note in pub["notes"]:
        console.print(f"note: {note}", soft_wrap=True)


def _crops(n: int) -> str:
    return "centre crop" if n == 1 else f"{n} crops"


def _acc(error: float | None) -> float | None:
    return None if error is None else 100.0 - error


def _fmt2(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _diff2(x: float | None) -> str:
    return "—" if x is None else f"{x:+.2f}"


@app.command("predict")
def predict_command(
    images: list[Path] = typer.Argument(..., metavar="IMAGE", help="Image files (any format PIL reads)."),
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", "-c",
        help="A checkpoint .pt from alexrepro train or alexrepro import, or a .safetensors weight file.",
    ),
    crops: int = typer.Option(10, "--crops", help="10: §4.1's ten patches averaged; 1: the centre patch."),
    data: Path | None = typer.Option(None, "--data", help="The prepared set, for its mean image if the checkpoint lacks one."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    top: int = typer.Option(5, "--top", help="How many classes to show per image."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The top-5 classes, with names and probabilities, for image files."""
    from alexrepro.evaluation.predict import predict_files

    report = predict_files(checkpoint, images, crops=crops, data=data, device=device, top=top)
    if json_out:
        emit_json(report)
    else:
        _render_predictions(report)
    if report["failed"]:  # bad input (exit 2), after the images that could be read were reported
        first = report["failed"][0]
        raise UserError(f"{len(report['failed'])} of {len(images)} images could not be read (first: {first['path']}: "
                        f"{first['reason']}); give image files PIL can read")


def _render_predictions(report: dict[str, Any]) -> None:
    """Each image's top classes as a table, then the files that could not be read."""
    for item in report["images"]:
        table = Table("rank", "class", "wnid", "probability")
        for rank, entry in enumerate(item["top"], 1):
            table.add_row(str(rank), entry["name"], entry["wnid"], f"{entry['prob']:.3f}")
        console.print(Text(str(item["path"]), style="bold"), soft_wrap=True)
        console.print(table)
    for failure in report["failed"]:
        console.print(Text.assemble(("could not read ", "red"), f"{failure['path']}: {failure['reason']}"),
                      soft_wrap=True)
