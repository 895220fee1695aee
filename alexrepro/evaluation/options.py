"""What `alexrepro eval` takes (`EvalOptions`) and the checks made before any process starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alexrepro.errors import UserError
from alexrepro.loaders import KINDS, kinds_text
from alexrepro.loaders.presets import TEN_CROPS, variant_for
from alexrepro.process.atomic import writable_file
from alexrepro.runtime import resolve_device


@dataclass
class EvalOptions:
    """Everything `alexrepro eval` takes."""

    out: Path
    checkpoints: list[Path]
    crops: int = TEN_CROPS
    split: str = "val"
    batch_size: int = 128
    device: str = "auto"
    loader: str = "auto"
    paper_table: str | None = None
    per_class: Path | None = None
    predictions: Path | None = None
    procs: int = 1  # processes splitting the images, spawned here (one per GPU; gloo on CPUs)


def check_options(opts: EvalOptions) -> str:
    """UserError for options that cannot work, before any process starts; returns the crop variant."""
    if opts.loader not in KINDS:
        raise UserError(f"--loader must be {kinds_text()}, got {opts.loader!r}")
    if opts.procs < 1:
        raise UserError(f"--procs must be at least 1, got {opts.procs}")
    variant = variant_for(opts.crops)
    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {opts.batch_size}")
    resolve_device(opts.device)
    if opts.per_class is not None:
        writable_file(opts.per_class, "--per-class")
    if opts.predictions is not None:
        writable_file(opts.predictions, "--predictions")
    return variant
