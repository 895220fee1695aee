"""`alexrepro pca OUT`: the RGB covariance of the training pixels, its eigenvalues and eigenvectors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import typer
from rich.markup import escape
from rich.table import Table

from alexrepro.cli.app import app
from alexrepro.progress import console, emit_json
from alexrepro.data.stats import (
    IMAGENET_EIGVAL_UNIT,
    IMAGENET_EIGVEC,
    IMAGENET_PCA_SOURCE,
    compute_pca,
    eigval_on_unit_scale,
    sample_indices,
)
from alexrepro.loaders.augment import lighting_magnitudes

EIGVEC_LAYOUT = "rows R, G, B; column j is the eigenvector of eigval[j]"
SIGN_CONVENTION = "each eigenvector's largest-magnitude component is positive"


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
    from alexrepro.data.prepared import open_split

    total = len(open_split(out, "train"))
    images = len(sample_indices(total, sample, seed))
    t0 = time.perf_counter()
    stats = compute_pca(out, sample=sample, workers=workers, seed=seed, progress=True)
    seconds = time.perf_counter() - t0
    assert stats.eigval is not None and stats.eigvec is not None
    unit = eigval_on_unit_scale(stats.eigval)
    cos = np.abs(np.sum(stats.eigvec * IMAGENET_EIGVEC, axis=0))  # alignment with the published vectors
    if json_out:
        emit_json(
            {
                "out": str(out),
                "images": images,
                "pixels": images * stats.mean.shape[0] * stats.mean.shape[1],
                "sample": sample,
                "seed": seed,
                "seconds": round(seconds, 3),
                "scale": stats.scale,
                "eigval": stats.eigval,
                "eigvec": stats.eigvec,
                "eigvec_layout": EIGVEC_LAYOUT,
                "sign_convention": SIGN_CONVENTION,
                "eigval_unit": unit,
                "lighting_magnitudes": {
                    "unit": lighting_magnitudes(stats, "unit"),
                    "cuda-convnet": lighting_magnitudes(stats, "cuda-convnet"),
                },
                "imagenet_reference": {
                    "source": IMAGENET_PCA_SOURCE,
                    "eigval_unit": IMAGENET_EIGVAL_UNIT,
                    "eigvec": IMAGENET_EIGVEC,
                },
                "alignment_with_reference": cos,
            }
        )
        return
    values = Table(
        "p", "λ (0–255)", "λ/255² ([0,1])", "ImageNet [0,1]", "√λ (cuda-convnet)",
        title=f"RGB PCA of {images:,} training images ({out})",
    )
    for j in range(3):
        values.add_row(
            f"p{j + 1}",
            f"{stats.eigval[j]:,.2f}",
            f"{unit[j]:.4f}",
            f"{IMAGENET_EIGVAL_UNIT[j]:.4f}",
            f"{np.sqrt(max(stats.eigval[j], 0.0)):.2f}",
        )
    vectors = Table("", "p1", "p2", "p3", "ImageNet p1", "p2", "p3", title="eigenvectors (columns)")
    for i, channel in enumerate("RGB"):
        vectors.add_row(
            channel,
            *(f"{x:+.4f}" for x in stats.eigvec[i]),
            *(f"{x:+.4f}" for x in IMAGENET_EIGVEC[i]),
        )
    vectors.add_row("|cos|", *(f"{c:.3f}" for c in cos), "", "", "")
    console.print(values)
    console.print(vectors)
    console.print(
        escape(
            f"Eigenvectors are columns ({EIGVEC_LAYOUT}); signs: {SIGN_CONVENTION}. A sign is arbitrary, "
            f"so |cos| compares directions. ImageNet: {IMAGENET_PCA_SOURCE}. Stored in "
            f"{Path(out) / 'stats.h5'} on the 0–255 scale ({seconds:.1f} s)."
        )
    )
