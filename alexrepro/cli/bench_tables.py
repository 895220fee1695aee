"""The tables `alexrepro bench` prints (on stderr) for each benchmark's result, ratios included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.table import Table

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


def render_loader(result: dict[str, Any]) -> None:
    baseline = result.get("baseline", {}).get("images_per_s")
    rows: list[Row] = []
    for name, timing in result["loaders"].items():
        rate = timing.get("images_per_s")
        rows.append((f"{name} images/s", timing.get("error", rate), baseline if baseline else "(no --src)"))
        if rate and baseline:
            rows.append((f"{name} ÷ ImageFolder baseline", round(rate / baseline, 3), 1.0))
    _show("loader: images/s (pytorch/examples ImageFolder pipeline as baseline)", rows)


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
        rows += [("ours ÷ torchvision AlexNet speed", result["ours_vs_torchvision"], 1.0)]
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


RENDERERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "prep": render_prep,
    "pca": render_pca,
    "loader": render_loader,
    "read": render_read,
    "train": render_train,
    "profile": render_profile,
    "lrn": render_lrn,
}
