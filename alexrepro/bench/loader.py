"""Benchmark our loaders beside pytorch/examples' ImageNet loader (`alexrepro bench loader OUT --src SRC`).

Ours: each backend on the prepared set OUT (training: §4.1's crops, mirrors and lighting, mean
subtraction). Baseline: pytorch/examples/imagenet's training loader, torchvision ImageFolder over
the original JPEG tree SRC/train with RandomResizedCrop(224), RandomHorizontalFlip, ToTensor and
Normalize, in a DataLoader with the same workers and batch size, over the same images: files prep
skipped (OUT/skipped.tsv: empty, truncated, not images) would crash ImageFolder and are left out.
All in one run on this machine; the first batch of each (worker start-up) is timed apart.

`LoaderRuns` asks for more: several passes of each loader in this process (the first pays worker start-up
and cold reads, the later ones not), the shards dropped from the page cache first (`cold`), the stages of
each backend (alexrepro.bench.loader_runs), and DALI settings (`DaliTuning`) each run beside the default.
Every run also records the CPU cores busy and the host's state (alexrepro.bench.host).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexrepro.bench.host import host_state
from alexrepro.bench.loader_runs import (
    DALI_STAGES,
    TORCH_STAGES,
    time_dali_stage,
    time_loader,
    time_torch_stage,
)
from alexrepro.data.manifest import SKIPPED
from alexrepro.data.stats_file import read_stats
from alexrepro.errors import UserError
from alexrepro.loaders import BACKENDS
from alexrepro.progress import console, make_progress
from alexrepro.recipe import DataConfig
from alexrepro.recipe_reader import load_recipe


@dataclass(frozen=True)
class LoaderRuns:
    """What `bench loader` runs besides one timed pass of each loader."""

    passes: int = 1  # timed passes of each loader in this process, one after the other
    cold: bool = False  # drop the set's shards from the page cache before each loader's first pass
    stages: bool = False  # also time each backend cut short: read, decode (and DALI's crop)
    dali_variants: tuple[str, ...] = ()  # DaliTuning specs ("key=value,..."), each run once, then the default again


def _time(batches: Any, count: int, label: str) -> dict[str, Any]:
    """images/s over `count` batches after the first one (the baseline's DataLoader), with a progress bar."""
    stream = iter(batches)
    t0 = time.perf_counter()
    next(stream)  # start-up: workers
    first = time.perf_counter() - t0
    images, started = 0, time.perf_counter()
    with make_progress(transient=True) as progress:
        task = progress.add_task(label, total=count, unit="batches")
        for _ in range(count):
            try:
                images += next(stream)[0].shape[0]
            except StopIteration:
                break
            progress.advance(task)
    seconds = time.perf_counter() - started
    return {"images": images, "seconds": seconds, "images_per_s": images / seconds if seconds else 0.0,
            "first_batch_s": round(first, 4)}


def _make(out: Path, kind: str, data: DataConfig, batch_size: int, device: torch.device, tuning: Any = None) -> Any:
    """Our loader of `kind` over OUT's training split (DALI with `tuning`), for epoch 0."""
    from alexrepro.loaders import make_loader

    if kind == "dali" and tuning is not None:
        from alexrepro.loaders.base import LoaderSpec
        from alexrepro.loaders.dali_loader import DaliLoader

        if not BACKENDS["dali"].available():
            raise UserError(BACKENDS["dali"].missing)
        spec = LoaderSpec(out=out, split="train", data=data, batch_size=batch_size, train=True, device=device)
        return DaliLoader(spec, tuning)
    return make_loader(out, "train", data, batch_size, train=True, device=device, kind=kind)


def _ours(out: Path, kind: str, data: DataConfig, batches: int, batch_size: int, device: torch.device,
          runs: LoaderRuns) -> dict[str, Any]:
    """The loader's passes (the first pass's figures at the top, every pass under "passes") and its stages."""
    loader = _make(out, kind, data, batch_size, device)
    try:
        if len(loader) < 2:
            raise UserError(f"{out} has too few training images for batches of {batch_size}; use --batch-size")
        count = min(batches, len(loader) - 1)
        passes = [time_loader(loader, count, f"{kind} loader" + (f", pass {i + 1}" if runs.passes > 1 else ""),
                              cold=runs.cold and i == 0) for i in range(runs.passes)]
        result: dict[str, Any] = {**passes[0], "passes": passes} if runs.passes > 1 else dict(passes[0])
        if runs.stages:
            stages = [s for s in (DALI_STAGES if kind == "dali" else TORCH_STAGES) if s != "full"]
            if loader.dataset.encoding == "raw":
                stages = [s for s in stages if s != "decode"]  # raw shards are stored decoded
            timer = time_dali_stage if kind == "dali" else time_torch_stage
            loader.close()  # the passes' workers end (shards reopen when read): each stage has the cores to itself
            result["stages"] = {s: timer(loader, s, count, runs.cold) for s in stages}
            result["stages"]["full"] = {k: v for k, v in passes[0].items() if k != "passes"}
        return result
    finally:
        loader.close()


DEFAULT_AGAIN = "default, again"  # the default settings run once more after the others


def _variants(out: Path, data: DataConfig, batches: int, batch_size: int, device: torch.device,
              specs: tuple[str, ...], cold: bool) -> dict[str, Any]:
    """Each DALI setting's run, then the default's again; each images/s over that last default run's.

    The default's first run (loaders.dali) is the first pipeline this process builds; the settings run
    after it, so the default is timed again after them and each ratio is taken against that later run.
    """
    from alexrepro.loaders.dali_loader import DaliTuning

    tunings = {spec: DaliTuning.parse(spec) for spec in specs}  # every spec checked before any run
    tunings[DEFAULT_AGAIN] = DaliTuning()
    out_runs: dict[str, Any] = {}
    for spec, tuning in tunings.items():
        loader = _make(out, "dali", data, batch_size, device, tuning)
        try:
            r = time_loader(loader, min(batches, len(loader) - 1), f"dali {spec}", cold=cold)
        finally:
            loader.close()
        r["settings"] = dataclasses.asdict(tuning)
        out_runs[spec] = r
    default = out_runs[DEFAULT_AGAIN]["images_per_s"]
    for r in out_runs.values():
        r["vs_default"] = round(r["images_per_s"] / default, 4) if default else None
    return out_runs


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
    runs: LoaderRuns = LoaderRuns(),
) -> dict[str, Any]:
    """images/s of each of our loaders on OUT and, given SRC, of the pytorch/examples baseline."""
    from alexrepro.data.manifest import read_manifest
    from alexrepro.runtime import resolve_device

    for flag, value, least in (("--batches", batches, 1), ("--batch-size", batch_size, 1), ("--workers", workers, 0),
                               ("--passes", runs.passes, 1)):
        if value < least:
            raise UserError(f"{flag} must be at least {least}, got {value}")
    if runs.dali_variants:
        from alexrepro.loaders.dali_loader import DaliTuning

        for spec in runs.dali_variants:
            DaliTuning.parse(spec)  # a bad spec is refused before any loader runs
    dev = resolve_device(device)
    manifest = read_manifest(out)  # a clear error first if OUT is not a prepared set
    if src is not None and not (Path(src) / "train").is_dir():
        raise UserError(f"{src} has no train/ folder of class folders; give the source tree with --src")
    data = dataclasses.replace(load_recipe("paper").data, workers=workers)
    if read_stats(out).eigval is None:
        console.print("bench: no PCA statistics in the set, so lighting is off (run alexrepro pca OUT)")
        data = dataclasses.replace(data, lighting=False)
    result: dict[str, Any] = {"batches": batches, "batch_size": batch_size, "workers": workers, "device": str(dev),
                              "encoding": manifest.encoding, "host": host_state(), "loaders": {}}
    for kind in kinds:
        try:
            result["loaders"][kind] = _ours(Path(out), kind, data, batches, batch_size, dev, runs)
        except UserError as e:
            if "nvidia-dali" not in str(e):
                raise
            result["loaders"][kind] = {"error": str(e)}
    if runs.dali_variants and "images_per_s" in result["loaders"].get("dali", {}):
        result["dali_variants"] = _variants(Path(out), data, batches, batch_size, dev, runs.dali_variants, runs.cold)
    if src is not None:
        result["baseline"] = _baseline(Path(src), batches, batch_size, workers, skipped_sources(Path(out)))
    return result
