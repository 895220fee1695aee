"""The tables `alexrepro bench` prints (on stderr) for each benchmark's result, ratios included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.table import Column, Table

from alexrepro.progress import console

Row = tuple[str, Any, Any]  # measure, ours, baseline


def _show(title: str, rows: list[Row]) -> None:
    table = Table("measure", "ours", "baseline", title=title)
    for name, ours, baseline in rows:
        table.add_row(name, str(ours), str(baseline))
    console.print(table)


def _joined(values: dict[str, Any]) -> str:
    return " / ".join(str(value) for value in values.values())


def render_prep(result: dict[str, Any]) -> None:
    _show("prep: images/s per core (PIL + torchvision Resize/CenterCrop + save as baseline)", [
        ("images/s per core", result["ours_images_per_s_per_core"], result["baseline_images_per_s_per_core"]),
        ("ratio (target ≥ 1.3)", result["speedup_per_core"], 1.0),
        (f"pool images/s at 1 / {result['workers']} workers", _joined(result["pool_images_per_s"]), ""),
        ("scaling efficiency", result["scaling_efficiency"], ""),
    ])


def render_pca(result: dict[str, Any]) -> None:
    _show("pca: images/s (a plain numpy pass as baseline)", [
        ("images/s", result["ours_images_per_s"], result["numpy_images_per_s"]),
        ("ratio (target ≥ 1)", result["speedup"], 1.0),
        ("max relative eigenvalue difference", f"{result['eigval_max_rel_diff']:.2e}", ""),
    ])


def _cores(run: dict[str, Any]) -> str:
    """Cores busy during a run: ours (this process and its workers) / every other process / the machine."""
    cpu = run.get("cpu", {})
    return f"{cpu.get('ours_cores_busy')} / {cpu.get('others_cores_busy')} / {cpu.get('machine_cores_busy')}"


def _run_row(name: str, run: dict[str, Any], vs: Any = "") -> tuple[str, ...]:
    if "error" in run:
        return (name, run["error"], "", "", "", "", str(vs))
    return (name, f"{run['images_per_s']:,.0f}", f"{run['first_batch_s']:.3f}",
            f"{run['batch_ms']['p50']:.1f} / {run['batch_ms']['p90']:.1f}", _cores(run),
            str(run.get("page_cache_before")), str(vs))


def render_loader(result: dict[str, Any]) -> None:
    """Each loader (its passes and stages), each DALI setting, the baseline; images/s and the cores busy."""
    baseline = result.get("baseline", {}).get("images_per_s")
    host = result.get("host", {})
    title = (f"loader: {result.get('encoding', '')} shards, batch {result['batch_size']}, {result['workers']} workers, "
             f"{result['device']}; host: {host.get('affinity_cpus')} CPUs usable, kernel {host.get('kernel')}")
    table = Table(Column("run", no_wrap=True), "images/s", "first batch s", "batch ms p50 / p90",
                  "cores busy: ours / others / machine", "in page cache", "÷ baseline or default", title=title)
    for name, loader in result["loaders"].items():
        ratio = round(loader["images_per_s"] / baseline, 3) if baseline and "images_per_s" in loader else ""
        table.add_row(*_run_row(name, loader, ratio))
        for i, run in enumerate(loader.get("passes", [])[1:], start=2):
            table.add_row(*_run_row(f"{name}, pass {i}", run))
        for stage, run in loader.get("stages", {}).items():
            if stage != "full":
                table.add_row(*_run_row(f"{name}: {stage} only" if stage == "read" else f"{name}: to {stage}", run))
    for spec, run in result.get("dali_variants", {}).items():
        table.add_row(*_run_row(f"dali {spec}", run, run.get("vs_default", "")))
    if baseline:
        table.add_row("ImageFolder baseline", f"{baseline:,.0f}",
                      f"{result['baseline'].get('first_batch_s', '')}", "", "", "", "1.0")
    else:
        table.add_row("ImageFolder baseline", "(no --src)", "", "", "", "", "")
    console.print(table)


def render_read(result: dict[str, Any]) -> None:
    h5py_reader, pread_reader = result["readers"]["h5py"], result["readers"]["pread"]
    _show(f"read: {result['shards']} shards, {result['shards_per_batch']} per batch of {result['batch_size']}, "
          f"{result['max_open']} h5py handles (baseline)", [
              ("images/s", pread_reader["images_per_s"], h5py_reader["images_per_s"]),
              ("MB/s", pread_reader["mb_per_s"], h5py_reader["mb_per_s"]),
              ("pread ÷ h5py", result["pread_vs_h5py"], 1.0),
              ("with each crc32 checked (the loaders' path), images/s", result["readers"]["pread_checked"]["images_per_s"],
               ""),
              ("checked ÷ pread", result["checked_vs_pread"], 1.0),
              ("same bytes", result["identical"], ""),
          ])


def _train_extra_rows(result: dict[str, Any]) -> list[Row]:
    """The rows a train result has only sometimes: end to end, torchvision, the update alone, LRN."""
    rows: list[Row] = []
    if "end_to_end_vs_synthetic" in result:
        rows += [("end to end ÷ synthetic input (target ≥ 0.9)", result["end_to_end_vs_synthetic"], 1.0)]
    if "ours_vs_torchvision" in result:
        rows += [("ours ÷ torchvision AlexNet speed", result["ours_vs_torchvision"], 1.0),
                 ("ours ÷ torchvision AlexNet, per multiply-add", result["ours_vs_torchvision_per_mac"], 1.0)]
    if "optimizer" in result:
        update = result["optimizer"]
        rows += [(f"update of {update['parameters']:,} weights, s: fused §5 / per tensor / torch SGD",
                  _joined(update["seconds_per_update"]), ""),
                 ("fused ÷ per-tensor speed-up", update["fused_speedup_vs_per_tensor"], 1.0)]
    if result.get("lrn", {}).get("layers"):
        rows += _lrn_rows(result["lrn"])
    return rows


def _lrn_rows(lrn: dict[str, Any]) -> list[Row]:
    """Each LRN implementation's forward + backward time, speed-up over autograd and multiple of the floor."""
    secs = lrn["seconds_forward_backward"]
    rows: list[Row] = [(f"{lrn['layers']} LRN layers forward + backward, s: {' / '.join(secs)}", _joined(secs), "")]
    rows += [(f"LRN {name} speed-up vs autograd", ratio, 1.0) for name, ratio in lrn["speedup_vs_autograd"].items()]
    rows += [(f"LRN floor: {lrn['bytes_forward_backward']['triton'] / 1e9:.3g} GB at "
              f"{lrn['bandwidth_gb_per_s']} GB/s copy, s", lrn["floor_seconds"], "")]
    rows += [(f"LRN {name} ÷ floor (target ≤ 3)", ratio, 1.0) for name, ratio in lrn["times_floor"].items()]
    if "tiles" in lrn:  # the Triton kernels at each tile (activations x warps per program), no autograd
        tiles = lrn["tiles"]
        rows += [(f"LRN kernels at tile {name} ÷ floor", ratio, 1.0) for name, ratio in tiles["times_floor"].items()]
        rows += [(f"fastest tile {tiles['best']}: time ÷ default {tiles['default']}'s", tiles["best_vs_default"], 1.0)]
    return rows


def render_lrn(result: dict[str, Any]) -> None:
    setup = ", channels_last" if result["channels_last"] else ""
    _show(f"lrn: {result['recipe']}, batch {result['batch_size']}, {result['device']} {result['precision']}{setup}, "
          f"{result.get('values', 0):,} values ({result.get('dtype', '-')})",
          _lrn_rows(result) if result["layers"] else [("LRN layers", 0, "")])


def render_train(result: dict[str, Any]) -> None:
    loops = result["loops"]
    rows: list[Row] = [(f"{name} images/s", loop["images_per_s"], "") for name, loop in loops.items()]
    rows += [(f"{name} fraction of ceiling", loop["fraction_of_ceiling"], "") for name, loop in loops.items()]
    rows += [("overhead of our step vs plain loop (target ≤ 5% on CPU)", f"{100 * result['overhead_vs_plain']:+.1f}%", "")]
    _show(f"train step: {result['recipe']}, batch {result['batch_size']}, {result['device']} {result['precision']}, ceiling "
          f"{result['ceiling_images_per_s']} images/s at {result['matmul_gflops']:,.0f} GFLOP/s", rows + _train_extra_rows(result))


def _share(part: dict[str, Any]) -> tuple[str, str]:
    """ms per step and share of the step, as table cells."""
    return f"{part['ms_per_step']:.3f}", f"{100 * part['share']:.1f}%"


def render_profile(result: dict[str, Any]) -> None:
    """The top kernels, then the layer kinds and phases, each with ms per step and share."""
    what = "kernels by GPU time" if result["device"].startswith("cuda") else "ops by self CPU time"
    setup = (", channels_last" if result["channels_last"] else "") + (", compiled" if result["compile"] else "")
    title = (f"profile: {result['recipe']}, batch {result['batch_size']}, {result['device']} {result['precision']}{setup}: "
             f"top {len(result['top'])} {what}, {result['steps']} steps")
    table = Table("kernel / op", "kind", "calls", "total ms", "ms/step", "share", title=title)
    for row in result["top"]:
        name = row["name"] if len(row["name"]) <= 72 else row["name"][:69] + "..."
        table.add_row(name, row["category"], str(row["calls"]), f"{row['total_ms']:.3f}", *_share(row))
    console.print(table)
    kinds = Table("layer kind", "ms/step", "share", title="where the time goes")
    for name, part in result["categories"].items():
        kinds.add_row(name, *_share(part))
    for name, part in result["phases"].items():
        kinds.add_row(f"phase: {name}", *_share(part))
    console.print(kinds)
    busy = f", GPU busy {100 * result['device_busy_fraction']:.0f}% of it" if "device_busy_fraction" in result else ""
    trace = f"; trace {result['trace']}" if "trace" in result else ""
    console.print(f"step {1e3 * result['seconds_per_step']:.2f} ms unprofiled ({result['images_per_s']:,.0f} img/s), "
                  f"{1e3 * result['profiled_seconds_per_step']:.2f} ms profiled; {result['time_counted']} "
                  f"{result['measured_ms_per_step']:.2f} ms/step{busy}{trace}", highlight=False)


def render_conv(result: dict[str, Any]) -> None:
    """Per setting and layer: ms per GFLOP of each variant, and grouped ÷ ungrouped per FLOP."""
    variants = ("net", "same_flops", "full", "two_convs")
    table = Table("setting", "layer", *(f"{v} ms/GFLOP" for v in variants), "grouped ÷ ungrouped per FLOP",
                  "two convs ÷ grouped time",
                  title=f"conv: {result['recipe']}, batch {result['batch_size']}, {result['device']} {result['precision']}, "
                        "forward + backward")
    for setting, r in result["settings"].items():
        for layer, v in r["layers"].items():
            table.add_row(setting, layer, *(str(v[k]["ms_per_gflop"]) if k in v else "" for k in variants),
                          str(v.get("grouped_vs_ungrouped_per_flop", "")), str(v.get("two_convs_vs_grouped_time", "")))
        table.add_row(setting, "grouped layers", "", "", "", "", str(r.get("grouped_vs_ungrouped_per_flop", "")),
                      str(r.get("two_convs_vs_grouped_time", "")))
    console.print(table)
    agree = ", ".join(f"{k}: output {v['output']:.1e}, input grad {v['input_grad']:.1e}, weight grad "
                      f"{v['weight_grad']:.1e}" for k, v in result["two_convs_agreement"].items())
    console.print(f"two convolutions vs grouped, largest relative difference: {agree or 'no grouped layer'}")
    if "switch_suggested" in result:
        console.print(f"in training's setting ({result['training_setting']}): grouped costs "
                      f"{result['grouped_vs_ungrouped_per_flop']}× per FLOP (switch above {result['switch_above']}); "
                      f"two convolutions take {result['two_convs_vs_grouped_time']}× the grouped time; "
                      f"switch suggested: {result['switch_suggested']}"
                      f"{' (--set run.grouped_conv=split)' if result['switch_suggested'] else ''}", highlight=False)


def render_curves(result: dict[str, Any]) -> None:
    """Each variant's first and last loss and its largest difference from the reference."""
    table = Table("variant", "loss: first → last", "max rel. diff (step)", "max rel. diff (10-step mean)",
                  f"within {100 * result['tolerance']:g}%",
                  title=f"curves: {result['recipe']}, {result['steps']} steps, {result['device']} {result['precision']}")
    for v in result["variants"]:
        first, last = result["loss_first_last"][v]
        c = result["against_reference"].get(v)
        table.add_row(v, f"{first} → {last}", *(("(reference)", "", "") if c is None else (
            f"{c['max_rel_diff_step']:.2e} at {c['at_step']}", f"{c['max_rel_diff_window']:.2e}",
            str(c["within_tolerance"]))))
    console.print(table)


RENDERERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "prep": render_prep,
    "pca": render_pca,
    "loader": render_loader,
    "read": render_read,
    "train": render_train,
    "profile": render_profile,
    "conv": render_conv,
    "curves": render_curves,
    "lrn": render_lrn,
}
