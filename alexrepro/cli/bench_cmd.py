"""`alexrepro bench prep|pca|loader|read|train|profile|lrn|conv|curves|all`: throughput beside plain baselines.

Each command calls one function of alexrepro.bench and hands its result to `_report`, which prints it
as one JSON object (--json) or as the table its kind has in RENDERERS (alexrepro.cli.bench_tables).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from alexrepro.cli.app import app
from alexrepro.cli.bench_tables import RENDERERS
from alexrepro.loaders import BACKENDS, kinds_text
from alexrepro.progress import emit_json

bench_app = typer.Typer(help="Throughput of prep, pca, loaders and training steps beside plain baselines.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

JSON_HELP = "Print one JSON object on stdout."

# Options that several benchmarks share, written once (the same flag, default and help everywhere).
JSON_OPTION = typer.Option(False, "--json", help=JSON_HELP)
OVERRIDES_OPTION = typer.Option([], "--set", help="Recipe overrides, section.key=value.")
STEP_BATCH_OPTION = typer.Option(None, "--batch-size", help="Default: the recipe's.")
LOADER_BATCH_OPTION = typer.Option(128, "--batch-size")
DEVICE_OPTION = typer.Option("cpu", "--device")
PRECISION_OPTION = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16.")
CHANNELS_LAST_OPTION = typer.Option(False, "--channels-last")
COMPILE_OPTION = typer.Option(False, "--compile")


def _report(kind: str, result: dict[str, Any], json_out: bool) -> None:
    """One JSON object (the benchmark's kind, its figures, the machine), or its table on stderr."""
    from alexrepro.bench.machine import machine_info

    result.setdefault("machine", machine_info())
    if json_out:
        emit_json({"bench": kind, **result})
        return
    RENDERERS[kind](result)


@bench_app.command("prep")
def bench_prep_cmd(
    src: Path = typer.Argument(..., metavar="SRC", help="An ImageNet-layout source (alexrepro synth makes one)."),
    limit: int = typer.Option(200, "--limit", help="Images to time."),
    workers: int = typer.Option(2, "--workers", help="Processes for the scaling run."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Prep's per-image path vs PIL open → torchvision Resize(256) → CenterCrop(256) → save JPEG."""
    from alexrepro.bench.prep import bench_prep

    _report("prep", bench_prep(src, limit=limit, workers=workers), json_out)


@bench_app.command("pca")
def bench_pca_cmd(
    out: Path = typer.Argument(..., metavar="OUT", help="A prepared set."),
    workers: int = typer.Option(1, "--workers", help="Processes for our pass."),
    max_images: int = typer.Option(256, "--max-images", help="Images both passes use."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Our streamed float64 PCA vs stacking the pixels and calling numpy."""
    from alexrepro.bench.pca import bench_pca

    _report("pca", bench_pca(out, workers=workers, max_images=max_images), json_out)


@bench_app.command("loader")
def bench_loader_cmd(
    out: Path = typer.Argument(..., metavar="OUT", help="A prepared set."),
    src: Path | None = typer.Option(None, "--src", help="The original JPEG tree, for the ImageFolder baseline."),
    batches: int = typer.Option(20, "--batches", help="Timed batches per loader."),
    batch_size: int = LOADER_BATCH_OPTION,
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", help="Loader worker processes."),
    kinds: str = typer.Option(",".join(BACKENDS), "--kinds", help="Our loaders to time, comma-separated."),
    device: str = typer.Option("cpu", "--device", help="Where batches go: cpu or cuda."),
    passes: int = typer.Option(1, "--passes", help="Timed passes of each loader in this process (the first pays "
                               "worker start-up and cold reads)."),
    cold: bool = typer.Option(False, "--cold", help="Drop OUT's shards from the page cache before each first pass."),
    stages: bool = typer.Option(False, "--stages", help="Also time each loader cut short: the stored bytes only, "
                                "then decoded (then DALI's crops)."),
    dali_variant: list[str] = typer.Option(
        [], "--dali-variant", help="DALI settings to run beside the default, key=value[,key=value] (repeatable): "
        "prefetch, source_depth, threads, py_workers, hw_decoder_load, bytes_per_sample_hint, roi_decode, per_sample."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Our PyTorch and DALI loaders vs pytorch/examples' ImageFolder + RandomResizedCrop pipeline."""
    from alexrepro.bench.loader import LoaderRuns, bench_loader

    chosen = tuple(k for k in kinds.split(",") if k)
    runs = LoaderRuns(passes=passes, cold=cold, stages=stages, dali_variants=tuple(dali_variant))
    _report("loader", bench_loader(out, src, batches, batch_size, workers, chosen, device, runs), json_out)


@bench_app.command("read")
def bench_read_cmd(
    out: Path = typer.Argument(..., metavar="OUT", help="A prepared set with JPEG shards."),
    split: str = typer.Option("train", "--split", help="The split to read."),
    batches: int = typer.Option(50, "--batches", help="Shuffled batches per round."),
    batch_size: int = LOADER_BATCH_OPTION,
    max_open: int = typer.Option(
        256, "--max-open", help="h5py handles the baseline keeps open (prepared.MAX_OPEN_SHARDS). Below the "
        "set's shard count it emulates ImageNet's ~1,250 shards against 256 handles, e.g. 30 for 150 shards."),
    rounds: int = typer.Option(3, "--rounds", help="Rounds the readers take turns for; the best of each counts."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Stored JPEG bytes of shuffled batches, no decoding: h5py handles (LRU) vs pread on plain descriptors."""
    from alexrepro.bench.read import bench_read

    _report("read", bench_read(out, split, batches, batch_size, max_open, rounds), json_out)


@bench_app.command("train")
def bench_train_cmd(
    recipe: str = typer.Option("paper", "--recipe", help="The recipe whose net and optimiser to time."),
    set_: list[str] = OVERRIDES_OPTION,
    batch_size: int | None = STEP_BATCH_OPTION,
    steps: int = typer.Option(10, "--steps", help="Timed steps per loop."),
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    channels_last: bool = CHANNELS_LAST_OPTION,
    compile_: bool = COMPILE_OPTION,
    data: Path | None = typer.Option(
        None, "--data", help="A prepared set: also time the step fed by our loader (end to end) beside the "
        "synthetic-input figure."),
    loader: str = typer.Option("auto", "--loader", help=f"With --data: {kinds_text()}."),
    workers: int | None = typer.Option(None, "--workers", help="With --data: loader workers (default: recipe's)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Training steps on synthetic input (ours, plain loop, torchvision's AlexNet, the ceiling); --data adds end to end."""
    from alexrepro.bench.train import bench_train

    result = bench_train(recipe, tuple(set_), batch_size=batch_size, steps=steps, device=device, precision=precision,
                         channels_last=channels_last, compile_=compile_, data=str(data) if data else None,
                         loader=loader, workers=workers)
    _report("train", result, json_out)


@bench_app.command("profile")
def bench_profile_cmd(
    recipe: str = typer.Option("paper", "--recipe", help="The recipe whose net and optimiser to profile."),
    set_: list[str] = OVERRIDES_OPTION,
    batch_size: int | None = STEP_BATCH_OPTION,
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    channels_last: bool = CHANNELS_LAST_OPTION,
    compile_: bool = COMPILE_OPTION,
    steps: int = typer.Option(5, "--steps", help="Steps timed, then as many profiled (after the warm-up)."),
    warmup: int = typer.Option(3, "--warmup", help="Steps first, not counted (compile, autotuning)."),
    trace: Path | None = typer.Option(None, "--trace", help="Chrome/Perfetto trace file (.json, .json.gz)."),
    top: int = typer.Option(15, "--top", help="Kernels (GPU) or ops (CPU) to list."),
    json_out: bool = JSON_OPTION,
) -> None:
    """torch.profiler of training steps: top kernels, time per layer kind and phase, step time, images/s."""
    from alexrepro.bench.profile import profile_train

    result = profile_train(recipe, tuple(set_), batch_size=batch_size, steps=steps, warmup=warmup,
                           device=device, precision=precision, channels_last=channels_last, compile_=compile_,
                           top=top, trace=str(trace) if trace else None)
    _report("profile", result, json_out)


@bench_app.command("conv")
def bench_conv_cmd(
    recipe: str = typer.Option("paper", "--recipe", help="The recipe whose conv layers to time."),
    set_: list[str] = OVERRIDES_OPTION,
    batch_size: int | None = STEP_BATCH_OPTION,
    steps: int = typer.Option(10, "--steps", help="Timed forward + backward passes per variant and round."),
    rounds: int = typer.Option(3, "--rounds", help="Rounds the variants take turns for; the best of each counts."),
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Grouped conv layers (§3.2's towers) vs the same FLOPs ungrouped and vs two convolutions, per memory format."""
    from alexrepro.bench.conv import bench_conv

    _report("conv", bench_conv(recipe, tuple(set_), batch_size=batch_size, steps=steps, rounds=rounds, device=device,
                               precision=precision), json_out)


@bench_app.command("curves")
def bench_curves_cmd(
    recipe: str = typer.Option("paper", "--recipe", help="The recipe to train."),
    set_: list[str] = typer.Option([], "--set", help="Recipe overrides every variant gets, section.key=value."),
    variant: list[str] = typer.Option(
        [], "--variant", help="One variant's overrides, section.key=value[,section.key=value] (at least two; the "
        "first is the reference), e.g. --variant run.lrn_kernel=triton --variant run.lrn_kernel=torch."),
    steps: int = typer.Option(200, "--steps", help="Training steps per variant."),
    batches: int = typer.Option(8, "--batches", help="Synthetic batches the steps cycle through."),
    batch_size: int | None = STEP_BATCH_OPTION,
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    channels_last: bool = CHANNELS_LAST_OPTION,
    compile_: bool = COMPILE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Loss curves of the same training steps under two or more recipe variants, compared step by step."""
    from alexrepro.bench.curves import bench_curves

    result = bench_curves(recipe, tuple(set_), tuple(variant), steps=steps, batches=batches, batch_size=batch_size,
                          device=device, precision=precision, channels_last=channels_last, compile_=compile_)
    _report("curves", result, json_out)


@bench_app.command("lrn")
def bench_lrn_cmd(
    recipe: str = typer.Option("paper", "--recipe", help="The recipe whose net gives the LRN layers their inputs."),
    set_: list[str] = OVERRIDES_OPTION,
    batch_size: int | None = STEP_BATCH_OPTION,
    device: str = DEVICE_OPTION,
    precision: str = PRECISION_OPTION,
    channels_last: bool = CHANNELS_LAST_OPTION,
    steps: int = typer.Option(10, "--steps", help="Timed forward + backward passes per implementation."),
    rounds: int = typer.Option(3, "--rounds", help="Rounds the implementations take turns for; the best counts."),
    json_out: bool = JSON_OPTION,
) -> None:
    """The LRN layers alone: torch path, autograd, the Triton kernels (CUDA), and the memory-traffic floor."""
    from alexrepro.bench.lrn import bench_lrn

    _report("lrn", bench_lrn(recipe, tuple(set_), batch_size=batch_size, device=device, precision=precision,
                             channels_last=channels_last, steps=steps, rounds=rounds), json_out)


@bench_app.command("all")
def bench_all_cmd(
    folder: Path | None = typer.Option(None, "--dir", help="Where to generate the data (default: a temp folder)."),
    device: str = DEVICE_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Generate a small ImageNet-like set and run every benchmark on it (train on the tiny recipe on a CPU)."""
    from alexrepro.bench.suite import SUITE, bench_all

    results = bench_all(folder, device)
    if json_out:
        emit_json({"bench": "all", **results})
        return
    for kind in SUITE:
        RENDERERS[kind](results[kind])
