"""`alexrepro export safetensors|onnx|check` and `alexrepro features`: a trained net leaves the toolkit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from alexrepro.cli.app import app
from alexrepro.errors import UserError, WorkFailed
from alexrepro.loaders import KINDS, kinds_text
from alexrepro.progress import console, emit_json

export_app = typer.Typer(
    help="A checkpoint as a safetensors weight file (no pickle) or an ONNX model, and the check of either.",
    no_args_is_help=True,
)
app.add_typer(export_app, name="export")

JSON_HELP = "Print one JSON object on stdout."
CK_HELP = "A checkpoint .pt (alexrepro train or import) or a .safetensors weight file."
DATA_HELP = "The prepared set, for its mean image if the checkpoint carries none."


@export_app.command("safetensors")
def export_safetensors_cmd(
    checkpoint: Path = typer.Argument(..., metavar="CK", help=CK_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="The weight file to write (.safetensors)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The weights with their recipe, classes, mean image and origin as metadata: loading runs no code."""
    from alexrepro.export.weights import export_safetensors

    summary = export_safetensors(checkpoint, out)
    if json_out:
        emit_json(summary)
        return
    console.print(f"wrote {summary['out']} ({summary['bytes']:,} bytes): {summary['tensors']} weight tensors of "
                  f"{summary['arch']} ({summary['recipe']}), {summary['classes']} classes, input mean {summary['mean']!r}"
                  f"{' (the mean image included)' if summary['mean_image'] else ''}", soft_wrap=True)


@export_app.command("onnx")
def export_onnx_cmd(
    checkpoint: Path = typer.Argument(..., metavar="CK", help=CK_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="The ONNX model to write (.onnx)."),
    mean_in_graph: bool = typer.Option(
        False, "--mean-in-graph", help="The graph takes the centre patch's pixels (0-255) and subtracts the mean itself."
    ),
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
    opset: int = typer.Option(17, "--opset", help="The ONNX operator set."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """The net as ONNX (dynamic batch; the preprocessing in its metadata), checked in onnxruntime."""
    from alexrepro.export.onnx_file import export_onnx

    summary = export_onnx(checkpoint, out, mean_in_graph=mean_in_graph, data=data, opset=opset)
    if json_out:
        emit_json(summary)
        return
    check = summary["check"]
    console.print(f"wrote {summary['out']} ({summary['bytes']:,} bytes, opset {summary['opset']}): input "
                  f"{summary['input']!r} (batch dynamic), output {summary['output']!r}; {len(summary['lrn'])} LRN "
                  f"operators", soft_wrap=True)
    console.print(f"onnxruntime agrees with torch: largest logit difference {check['max_abs_diff']:.2g} "
                  f"(tolerance {check['tolerance']:.2g})", soft_wrap=True)


@export_app.command("check")
def export_check_cmd(
    file: Path = typer.Argument(..., metavar="FILE", help="An exported .onnx or .safetensors file."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="The checkpoint it was exported from."),
    images: list[Path] | None = typer.Argument(None, metavar="IMAGE", help="Image files (default: 2 random images)."),
    crops: int = typer.Option(1, "--crops", help="1: the centre patch; 10: §4.1's ten patches averaged."),
    data: Path | None = typer.Option(None, "--data", help=DATA_HELP),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run an exported file beside its checkpoint on the same images: logits, top-5, agreement (exit 1 if not)."""
    from alexrepro.export.check import check_export

    report = check_export(file, checkpoint, images or [], crops=crops, data=data)
    if json_out:
        emit_json(report)
    else:
        for item in report["images"]:
            same = "same top-5" if item["same_top"] else f"top-5 {item['top']} vs the checkpoint's {item['checkpoint_top']}"
            console.print(f"{item['image']}: {same}", soft_wrap=True)
        console.print(f"largest logit difference {report['max_abs_diff']:.2g} (tolerance {report['tolerance']:.2g})")
    if not report["agree"]:
        raise WorkFailed(f"{file} disagrees with {checkpoint}: logits differ by {report['max_abs_diff']:.3g}, more "
                         f"than {report['tolerance']:.3g}; export it again from this checkpoint")


@app.command("features")
def features_cmd(
    out: Path = typer.Argument(..., metavar="OUT", help="The prepared set (alexrepro prep SRC OUT)."),
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CK_HELP),
    layer: str = typer.Option("fc7", "--layer", help="conv1..conv5, fc6, fc7 (after the ReLU) or fc8 (logits)."),
    split: str = typer.Option("val", "--split", help="The split whose images are read."),
    file: Path = typer.Option(..., "--out", "-o", help="The HDF5 file to write (vectors and labels)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per batch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    loader: str = typer.Option("auto", "--loader", help=f"{kinds_text()}."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """A layer's vectors (fc7: §6.1's 4,096-d) and the label of every image of a split, for neighbours or a probe."""
    from alexrepro.export.features import FeatureOptions, extract_features

    if loader not in KINDS:
        raise UserError(f"--loader must be {kinds_text()}, got {loader!r}")
    opts = FeatureOptions(out=out, checkpoint=checkpoint, file=file, layer=layer, split=split, batch_size=batch_size,
                          device=device, loader=loader)
    _render_features(extract_features(opts, show_progress=not json_out), json_out)


def _render_features(summary: dict[str, Any], json_out: bool) -> None:
    if json_out:
        emit_json(summary)
        return
    console.print(f"wrote {summary['out']}: {summary['images']:,} {summary['split']} images × {summary['dim']:,} "
                  f"({summary['layer']}) in {summary['seconds']:.1f} s on {summary['device']}", soft_wrap=True)
