"""`alexrepro bench prep|pca|loader|train|all`: our throughput beside a plain baseline, same run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from alexrepro.cli.app import app
from alexrepro.loaders import BACKENDS, kinds_text
from alexrepro.progress import console, emit_json

bench_app = typer.Typer(help="Throughput of prep, pca, loaders and training steps beside plain baselines.",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

JSON_HELP = "Print one JSON object on stdout."


def _show(title: str, rows: list[tuple[str, Any, Any]]) -> None:
    table = Table("measure", "ours", "baseline", title=title)
    for name, ours, base in rows:
        table.add_row(name, str(ours), str(base))
    console.print(table)


def _report(kind: str, result: dict[str, Any], json_out: bool) -> None:
    from alexrepro.bench.machine import machine_info

    result.setdefault("machine", machine_info())
    if json_out:
        emit_json({"bench": kind, **result})
        return
    render(kind, result)


def render(kind: str, r: dict[str, Any]) -> None:
    """A table per benchmark, ratios included."""
    if kind == "prep":
        _show("prep: images/s per core (PIL + torchvision Resize/CenterCrop + save as baseline)", [
            ("images/s per core", r["ours_images_per_s_per_core"], r["baseline_images_per_s_per_core"]),
            ("ratio (target ≥ 1.3)", r["speedup_per_core"], 1.0),
            (f"pool images/s at 1 / {r['workers']} workers", " / ".join(str(v) for v in r["pool_images_per_s"].values()),
             ""),
            ("scaling efficiency", r["scaling_efficiency"], ""),
        ])
    elif kind == "pca":
        _show("pca: images/s (a plain numpy pass as baseline)", [
            ("images/s", r["ours_images_per_s"], r["numpy_images_per_s"]),
            ("ratio (target ≥ 1)", r["speedup"], 1.0),
            ("max relative eigenvalue difference", f"{r['eigval_max_rel_diff']:.2e}", ""),
        ])
    elif kind == "loader":
        base = r.get("baseline", {}).get("images_per_s")
        rows = []
        for name, v in r["loaders"].items():
            ips = v.get("images_per_s")
            rows.append((f"{name} images/s", v.get("error", ips), base if base else "(no --src)"))
            if ips and base:
                rows.append((f"{name} ÷ ImageFolder baseline", round(ips / base, 3), 1.0))
        _show("loader: images/s (pytorch/examples ImageFolder pipeline as baseline)", rows)
    elif kind == "train":
        loops = r["loops"]
        rows = [(f"{name} images/s", v["images_per_s"], "") for name, v in loops.items()]
        rows += [(f"{name} fraction of ceiling", v["fraction_of_ceiling"], "") for name, v in loops.items()]
        rows += [("overhead of our step vs plain loop (target ≤ 5% on CPU)", f"{100 * r['overhead_vs_plain']:+.1f}%", "")]
        if "end_to_end_vs_synthetic" in r:
            rows += [("end to end ÷ synthetic input (target ≥ 0.9)", r["end_to_end_vs_synthetic"], 1.0)]
        if "ours_vs_torchvision" in r:
            rows += [("ours ÷ torchvision AlexNet speed", r["ours_vs_torchvision"], 1.0)]
        if "optimizer" in r:
            o = r["optimizer"]
            rows += [(f"update of {o['parameters']:,} weights, s: fused §5 / per tensor / torch SGD",
                      " / ".join(str(v) for v in o["seconds_per_update"].values()), ""),
                     ("fused ÷ per-tensor speed-up", o["fused_speedup_vs_per_tensor"], 1.0)]
        if r.get("lrn", {}).get("layers"):
            n = r["lrn"]
            rows += [(f"{n['layers']} LRN layers forward + backward, s: ours / autograd",
                      " / ".join(str(v) for v in n["seconds_forward_backward"].values()), ""),
                     ("LRN speed-up vs autograd", n["speedup_vs_autograd"], 1.0)]
        _show(f"train step: {r['recipe']}, batch {r['batch_size']}, {r['device']} {r['precision']}, ceiling "
              f"{r['ceiling_images_per_s']} images/s at {r['matmul_gflops']:,.0f} GFLOP/s", rows)


@bench_app.command("prep")
def bench_prep_cmd(
    src: Path = typer.Argument(..., metavar="SRC", help="An ImageNet-layout source (alexrepro synth makes one)."),
    limit: int = typer.Option(200, "--limit", help="Images to time."),
    workers: int = typer.Option(2, "--workers", help="Processes for the scaling run."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Prep's per-image path vs PIL open → torchvision Resize(256) → CenterCrop(256) → save JPEG."""
    from alexrepro.bench.prep import bench_prep

    _report("prep", bench_prep(src, limit=limit, workers=workers), json_out)


@bench_app.command("pca")
def bench_pca_cmd(
    out: Path = typer.Argument(..., metavar="OUT", help="A prepared set."),
    workers: int = typer.Option(1, "--workers", help="Processes for our pass."),
    max_images: int = typer.Option(256, "--max-images", help="Images both passes use."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Our streamed float64 PCA vs stacking the pixels and calling numpy."""
    from alexrepro.bench.pca import bench_pca

    _report("pca", bench_pca(out, workers=workers, max_images=max_images), json_out)


@bench_app.command("loader")
def bench_loader_cmd(
    out: Path = typer.Argument(..., metavar="OUT", help="A prepared set."),
    src: Path | None = typer.Option(None, "--src", help="The original JPEG tree, for the ImageFolder baseline."),
    batches: int = typer.Option(20, "--batches", help="Timed batches per loader."),
    batch_size: int = typer.Option(128, "--batch-size"),
    workers: int = typer.Option(os.cpu_count() or 1, "--workers", help="Loader worker processes."),
    kinds: str = typer.Option(",".join(BACKENDS), "--kinds", help="Our loaders to time, comma-separated."),
    device: str = typer.Option("cpu", "--device", help="Where batches go: cpu or cuda."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Our PyTorch and DALI loaders vs pytorch/examples' ImageFolder + RandomResizedCrop pipeline."""
    from alexrepro.bench.loader import bench_loader

    chosen = tuple(k for k in kinds.split(",") if k)
    _report("loader", bench_loader(out, src, batches, batch_size, workers, chosen, device), json_out)


@bench_app.command("read")
def bench_read_cmd(
    out: Path = typer.Argument(..., metavar="OUT", help="A prepared set with JPEG shards."),
    split: str = typer.Option("train", "--split", help="The split to read."),
    batches: int = typer.Option(50, "--batches", help="Shuffled batches per round."),
    batch_size: int = typer.Option(128, "--batch-size"),
    max_open: int = typer.Option(
        256, "--max-open", help="h5py handles the baseline keeps open (prepared.MAX_OPEN_SHARDS). Below the "
        "set's shard count it emulates ImageNet's ~1,250 shards against 256 handles, e.g. 30 for 150 shards."),
    rounds: int = typer.Option(3, "--rounds", help="Rounds the readers take turns for; the best of each counts."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Stored JPEG bytes of shuffled batches, no decoding: h5py handles (LRU) vs pread on plain descriptors."""
    from alexrepro.bench.read import bench_read

    r = bench_read(out, split, batches, batch_size, max_open, rounds)
    if json_out:
        _report("read", r, json_out)
        return
    h5, pr = r["readers"]["h5py"], r["readers"]["pread"]
    _show(f"read: {r['shards']} shards, {r['shards_per_batch']} per batch of {r['batch_size']}, "
          f"{r['max_open']} h5py handles (baseline)", [
              ("images/s", pr["images_per_s"], h5["images_per_s"]),
              ("MB/s", pr["mb_per_s"], h5["mb_per_s"]),
              ("pread ÷ h5py", r["pread_vs_h5py"], 1.0),
              ("with each crc32 checked (the loaders' path), images/s", r["readers"]["pread_checked"]["images_per_s"],
               ""),
              ("checked ÷ pread", r["checked_vs_pread"], 1.0),
              ("same bytes", r["identical"], ""),
          ])


@bench_app.command("train")
def bench_train_cmd(
    recipe: str = typer.Option("paper", "--recipe", help="The recipe whose net and optimiser to time."),
    set_: list[str] = typer.Option([], "--set", help="Recipe overrides, section.key=value."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Default: the recipe's."),
    steps: int = typer.Option(10, "--steps", help="Timed steps per loop."),
    device: str = typer.Option("cpu", "--device"),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16."),
    channels_last: bool = typer.Option(False, "--channels-last"),
    compile_: bool = typer.Option(False, "--compile"),
    data: Path | None = typer.Option(
        None, "--data", help="A prepared set: also time the step fed by our loader (end to end) beside the "
        "synthetic-input figure."),
    loader: str = typer.Option("auto", "--loader", help=f"With --data: {kinds_text()}."),
    workers: int | None = typer.Option(None, "--workers", help="With --data: loader workers (default: recipe's)."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
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
    set_: list[str] = typer.Option([], "--set", help="Recipe overrides, section.key=value."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Default: the recipe's."),
    device: str = typer.Option("cpu", "--device"),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16."),
    channels_last: bool = typer.Option(False, "--channels-last"),
    compile_: bool = typer.Option(False, "--compile"),
    steps: int = typer.Option(5, "--steps", help="Steps timed, then as many profiled (after the warm-up)."),
    warmup: int = typer.Option(3, "--warmup", help="Steps first, not counted (compile, autotuning)."),
    trace: Path | None = typer.Option(None, "--trace", help="Chrome/Perfetto trace file (.json, .json.gz)."),
    top: int = typer.Option(15, "--top", help="Kernels (GPU) or ops (CPU) to list."),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """torch.profiler of training steps: top kernels, time per layer kind and phase, step time, images/s."""
    from alexrepro.bench.profile import profile_train

    result = profile_train(recipe, tuple(set_), batch_size=batch_size, steps=steps, warmup=warmup,
                           device=device, precision=precision, channels_last=channels_last, compile_=compile_,
                           top=top, trace=str(trace) if trace else None)
    if json_out:
        emit_json({"bench": "profile", **result})
        return
    _render_profile(result)


def _render_profile(r: dict[str, Any]) -> None:
    """The top kernels, then the layer kinds and phases, each with ms per step and share."""
    what = "kernels by GPU time" if r["device"].startswith("cuda") else "ops by self CPU time"
    setup = (", channels_last" if r["channels_last"] else "") + (", compiled" if r["compile"] else "")
    title = (f"profile: {r['recipe']}, batch {r['batch_size']}, {r['device']} {r['precision']}{setup}: "
             f"top {len(r['top'])} {what}, {r['steps']} steps")
    table = Table("kernel / op", "kind", "calls", "total ms", "ms/step", "share", title=title)
    for row in r["top"]:
        name = row["name"] if len(row["name"]) <= 72 else row["name"][:69] + "..."
        table.add_row(name, row["category"], str(row["calls"]), f"{row['total_ms']:.3f}",
                      f"{row['ms_per_step']:.3f}", f"{100 * row['share']:.1f}%")
    console.print(table)
    kinds = Table("layer kind", "ms/step", "share", title="where the time goes")
    for name, v in r["categories"].items():
        kinds.add_row(name, f"{v['ms_per_step']:.3f}", f"{100 * v['share']:.1f}%")
    for name, v in r["phases"].items():
        kinds.add_row(f"phase: {name}", f"{v['ms_per_step']:.3f}", f"{100 * v['share']:.1f}%")
    console.print(kinds)
    busy = f", GPU busy {100 * r['device_busy_fraction']:.0f}% of it" if "device_busy_fraction" in r else ""
    trace = f"; trace {r['trace']}" if "trace" in r else ""
    console.print(f"step {1e3 * r['seconds_per_step']:.2f} ms unprofiled ({r['images_per_s']:,.0f} img/s), "
                  f"{1e3 * r['profiled_seconds_per_step']:.2f} ms profiled; {r['time_counted']} "
                  f"{r['measured_ms_per_step']:.2f} ms/step{busy}{trace}", highlight=False)


@bench_app.command("all")
def bench_all_cmd(
    folder: Path | None = typer.Option(None, "--dir", help="Where to generate the data (default: a temp folder)."),
    device: str = typer.Option("cpu", "--device"),
    json_out: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Generate a small ImageNet-like set and run every benchmark on it (train on the tiny recipe on a CPU)."""
    from alexrepro.bench.loader import bench_loader
    from alexrepro.bench.machine import machine_info
    from alexrepro.bench.pca import bench_pca
    from alexrepro.bench.prep import bench_prep
    from alexrepro.bench.train import bench_train
    from alexrepro.runtime import resolve_device
    from alexrepro.data.prep import PrepOptions, prep
    from alexrepro.data.stats import compute_pca
    from alexrepro.data.synth import make_synthetic

    resolve_device(device)  # a bad --device fails before the data is generated
    with tempfile.TemporaryDirectory(prefix="alexrepro-bench-") as tmp:
        base = Path(folder) if folder else Path(tmp)
        src, out = base / "src", base / "data"
        if not (out / "manifest.json").exists():
            make_synthetic(src, classes=10, train_per_class=40, val_per_class=4, seed=0)
            prep(src, out, PrepOptions(workers=os.cpu_count() or 1))
            compute_pca(out)
        cpu = torch_device_is_cpu(device)
        results = {
            "prep": bench_prep(src, limit=200, workers=min(2, os.cpu_count() or 1)),
            "pca": bench_pca(out, workers=1),
            "loader": bench_loader(out, src, 10, 64 if cpu else 256, os.cpu_count() or 1, tuple(BACKENDS), device),
            "train": bench_train("tiny" if cpu else "paper", ("model.num_classes=10",), steps=5 if cpu else 20,
                                 device=device, precision="fp32" if cpu else "bf16", channels_last=not cpu,
                                 data=str(out), workers=os.cpu_count() or 1),
        }
    if json_out:
        emit_json({"bench": "all", **results, "machine": machine_info()})
        return
    for kind, r in results.items():
        render(kind, r)


def torch_device_is_cpu(device: str) -> bool:
    return device.startswith("cpu")
