"""Benchmark our loaders beside pytorch/examples' ImageNet loader (`alexrepro bench loader OUT --src SRC`).

Ours: `make_loader` on the prepared set OUT (training: §4.1's crops, mirrors and lighting, mean
subtraction). Baseline: pytorch/examples/imagenet's training loader, torchvision ImageFolder over
the original JPEG tree SRC/train with RandomResizedCrop(224), RandomHorizontalFlip, ToTensor and
Normalize, in a DataLoader with the same workers and batch size, over the same images: files prep
skipped (OUT/skipped.tsv: empty, truncated, not images) would crash ImageFolder and are left out.
All in one run on this machine; the first batch of each (worker start-up) is not timed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from alexrepro.data.manifest import SKIPPED
from alexrepro.data.stats_file import read_stats
from alexrepro.errors import UserError
from alexrepro.loaders import BACKENDS
from alexrepro.progress import console, make_progress
from alexrepro.recipe import DataConfig
from alexrepro.recipe_reader import load_recipe


def _time(batches: Iterable[Any], count: int, label: str) -> dict[str, Any]:
    """images/s over `count` batches after the first one, with a progress bar on stderr."""
    stream = iter(batches)
    last = next(stream)[0]  # start-up: workers, pipeline build
    images, started = 0, time.perf_counter()
    with make_progress(transient=True) as progress:
        task = progress.add_task(label, total=count, unit="batches")
        for _ in range(count):
            try:
                batch = next(stream)[0]
            except StopIteration:
                break
            images += batch.shape[0]
            progress.advance(task)
            last = batch
    if images and last.is_cuda:  # the last batch's copies and augmentation may still be queued on the GPU
        torch.cuda.synchronize(last.device)
    seconds = time.perf_counter() - started
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds if seconds else 0.0}


def _ours(out: Path, kind: str, data: DataConfig, batches: int, batch_size: int, device: torch.device) -> dict:
    from alexrepro.loaders import make_loader

    loader = make_loader(out, "train", data, batch_size, train=True, device=device, kind=kind)
    try:
        if len(loader) < 2:
            raise UserError(f"{out} has too few training images for batches of {batch_size}; use --batch-size")
        return _time(loader, min(batches, len(loader) - 1), f"{kind} loader")
    finally:
        loader.close()


def skipped_sources(out: Path) -> set[str]:
    """The source paths (relative to SRC) that prep skipped, from OUT/skipped.tsv."""
    path = Path(out) / SKIPPED
    lines = path.read_text().splitlines() if path.is_file() else []
    return {line.split("\t", 1)[0] for line in lines}


def _baseline(src: Path, batches: int, batch_size: int, workers: int, skipped: set[str]) -> dict:
    from torchvision import datasets, transforms
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    train = Path(src) / "train"
    if not train.is_dir():
        raise UserError(f"{src} has no train/ folder of class folders; give the source tree with --src")

    def readable(path: str) -> bool:  # ImageFolder's own rule, less what prep could not read
        return has_file_allowed_extension(path, IMG_EXTENSIONS) and \
            Path(path).relative_to(src).as_posix() not in skipped

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    dataset = datasets.ImageFolder(str(train), transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]),
        is_valid_file=readable)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    return _time(loader, min(batches, len(loader) - 1), "pytorch/examples baseline")


def bench_loader(
    out: Path,
    src: Path | None,
    batches: int,
    batch_size: int,
    workers: int,
    kinds: tuple[str, ...] = tuple(BACKENDS),
    device: str = "cpu",
) -> dict[str, Any]:
    """images/s of each of our loaders on OUT and, given SRC, of the pytorch/examples baseline."""
    from alexrepro.data.manifest import read_manifest
    from alexrepro.runtime import resolve_device

    for flag, value, least in (("--batches", batches, 1), ("--batch-size", batch_size, 1), ("--workers", workers, 0)):
        if value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}")
    dev = resolve_device(device)
    read_manifest(out)  # a clear error first if OUT is not a prepared set
    if src is not None and not (Path(src) / "train").is_dir():
        raise UserError(f"{src} has no train/ folder of class folders; give the source tree with --src")
    data = dataclasses.replace(load_recipe("paper").data, workers=workers)
    if read_stats(out).eigval is None:
        console.print("bench: no PCA statistics in the set, so lighting is off (run alexrepro pca OUT)")
        data = dataclasses.replace(data, lighting=False)
    result: dict[str, Any] = {"batches": batches, "batch_size": batch_size, "workers": workers,
                              "device": str(dev), "loaders": {}}
    for kind in kinds:
        try:
            result["loaders"][kind] = _ours(Path(out), kind, data, batches, batch_size, dev)
        except UserError as e:
            if "nvidia-dali" not in str(e):
                raise
            result["loaders"][kind] = {"error": str(e)}
    if src is not None:
        result["baseline"] = _baseline(Path(src), batches, batch_size, workers, skipped_sources(Path(out)))
    return result
