"""`alexrepro pca OUT`: the RGB covariance of the training pixels, its eigenvalues and eigenvectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from alexrepro.cli.app import app
from alexrepro.progress import console, emit_json


@app.command("pca")
def pca(
    out: Path = typer.Argument(..., metavar="OUT", help="A prepared set (from alexrepro prep)."),
    sample: int | None = typer.Option(
        None, "--sample", help="Use this many randomly chosen training images instead of all."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for choosing the --sample images."),
    workers: int = typer.Option(1, "--workers", help="Processes reading and decoding shards."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """RGB covariance of the training pixels (§4.1 lighting); eigenvalues and eigenvectors into stats.h5."""
    from alexrepro.data.stats import pca_report

    report = pca_report(out, sample=sample, seed=seed, workers=workers, progress=True)
    if json_out:
        emit_json(report)
        return
    _render(report)


def _render(report: dict[str, Any]) -> None:
    """The eigenvalues on both scales and the eigenvectors, each beside the published ImageNet PCA."""
    eigval, eigvec, unit = report["eigval"], report["eigvec"], report["eigval_unit"]
    reference = report["imagenet_reference"]
    values = Table(
        "p", "λ (0–255)", "λ/255² ([0,1])", "ImageNet [0,1]", "√λ (cuda-convnet)",
        title=f"RGB PCA of {report['images']:,} training images ({report['out']})",
    )
    for j in range(3):
        values.add_row(
            f"p{j + 1}",
            f"{eigval[j]:,.2f}",
            f"{unit[j]:.4f}",
            f"{reference['eigval_unit'][j]:.4f}",
            f"{np.sqrt(max(eigval[j], 0.0)):.2f}",
        )
    vectors = Table("", "p1", "p2", "p3", "ImageNet p1", "p2", "p3", title="eigenvectors (columns)")
    for i, channel in enumerate("RGB"):
        vectors.add_row(
            channel,
            *(f"{x:+.4f}" for x in eigvec[i]),
            *(f"{x:+.4f}" for x in reference["eigvec"][i]),
        )
    vectors.add_row("|cos|", *(f"{c:.3f}" for c in report["alignment_with_reference"]), "", "", "")
    console.print(values)
    console.print(vectors)
    console.print(
        escape(
            f"Eigenvectors are columns ({report['eigvec_layout']}); signs: {report['sign_convention']}. A sign is "
            f"arbitrary, so |cos| compares directions. ImageNet: {reference['source']}. Stored in "
            f"{Path(report['out']) / 'stats.h5'} on the 0–255 scale ({report['seconds']:.1f} s)."
        )
    )
