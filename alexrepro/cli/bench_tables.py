"""The tables `alexrepro bench` prints (on stderr) for each benchmark's result, ratios included."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.table import Table

from alexrepro.progress import console

Row = tuple[str, Any, Any]  # measure, ours, baseline


def _show(title: str, rows: list[Row]) -> None:
    table = Table("measure", "ours", "baseline", title=title)
    for name, ours, base in rows:
        table.add_row(name, str(ours), str(base))
    console.print(table)


def _joined(values: dict[str, Any]) -> str:
    return " / ".join(str(v) for v in values.values())


def render_prep(r: dict[str, Any]) -> None:
    _show("prep: images/s per core (PIL + torchvision Resize/CenterCrop + save as baseline)", [
        ("images/s per core", r["ours_images_per_s_per_core"], r["baseline_images_per_s_per_core"]),
        ("ratio (target ≥ 1.3)", r["speedup_per_core"], 1.0),
        (f"pool images/s at 1 / {r['workers']} workers", _joined(r["pool_images_per_s"]), ""),
        ("scaling efficiency", r["scaling_efficiency"], ""),
    ])


def render_pca(r: dict[str, Any]) -> None:
    _show("pca: images/s (a plain numpy pass as baseline)", [
        ("images/s", r["ours_images_per_s"], r["numpy_images_per_s"]),
        ("ratio (target ≥ 1)", r["speedup"], 1.0),
        ("max relative eigenvalue difference", f"{r['eigval_max_rel_diff']:.2e}", ""),
    ])


def render_loader(r: dict[str, Any]) -> None:
    base = r.get("baseline", {}).get("images_per_s")
    rows: list[Row] = []
    for name, v in r["loaders"].items():
        ips = v.get("images_per_s")
        rows.append((f"{name} images/s", v.get("error", ips), base if base else "(no --src)"))
        if ips and base:
            rows.append((f"{name} ÷ ImageFolder baseline", round(ips / base, 3), 1.0))
    _show("loader: images/s (pytorch/examples ImageFolder pipeline as baseline)", rows)


def render_read(r: dict[str, Any]) -> None:
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


def _train_extra_rows(r: dict[str, Any]) -> list[Row]:
    """The rows a train result has only sometimes: end to end, torchvision, the update alone, LRN."""
    rows: list[Row] = []
    if "end_to_end_vs_synthetic" in r:
        rows += [("end to end ÷ synthetic input (target ≥ 0.9)", r["end_to_end_vs_synthetic"], 1.0)]
    if "ours_vs_torchvision" in r:
        rows += [("ours ÷ torchvision AlexNet speed", r["ours_vs_torchvision"], 1.0)]
    if "optimizer" in r:
        o = r["optimizer"]
        rows += [(f"update of {o['parameters']:,} weights, s: fused §5 / per tensor / torch SGD",
                  _joined(o["seconds_per_update"]), ""),
                 ("fused ÷ per-tensor speed-up", o["fused_speedup_vs_per_tensor"], 1.0)]
    if r.get("lrn", {}).get("layers"):
        n = r["lrn"]
        rows += [(f"{n['layers']} LRN layers forward + backward, s: ours / autograd",
                  _joined(n["seconds_forward_backward"]), ""),
                 ("LRN speed-up vs autograd", n["speedup_vs_autograd"], 1.0)]
    return rows


def render_train(r: dict[str, Any]) -> None:
    loops = r["loops"]
    rows: list[Row] = [(f"{name} images/s", v["images_per_s"], "") for name, v in loops.items()]
    rows += [(f"{name} fraction of ceiling", v["fraction_of_ceiling"], "") for name, v in loops.items()]
    rows += [("overhead of our step vs plain loop (target ≤ 5% on CPU)", f"{100 * r['overhead_vs_plain']:+.1f}%", "")]
    _show(f"train step: {r['recipe']}, batch {r['batch_size']}, {r['device']} {r['precision']}, ceiling "
          f"{r['ceiling_images_per_s']} images/s at {r['matmul_gflops']:,.0f} GFLOP/s", rows + _train_extra_rows(r))


def _share(v: dict[str, Any]) -> tuple[str, str]:
    return f"{v['ms_per_step']:.3f}", f"{100 * v['share']:.1f}%"


def render_profile(r: dict[str, Any]) -> None:
    """The top kernels, then the layer kinds and phases, each with ms per step and share."""
    what = "kernels by GPU time" if r["device"].startswith("cuda") else "ops by self CPU time"
    setup = (", channels_last" if r["channels_last"] else "") + (", compiled" if r["compile"] else "")
    title = (f"profile: {r['recipe']}, batch {r['batch_size']}, {r['device']} {r['precision']}{setup}: "
             f"top {len(r['top'])} {what}, {r['steps']} steps")
    table = Table("kernel / op", "kind", "calls", "total ms", "ms/step", "share", title=title)
    for row in r["top"]:
        name = row["name"] if len(row["name"]) <= 72 else row["name"][:69] + "..."
        table.add_row(name, row["category"], str(row["calls"]), f"{row['total_ms']:.3f}", *_share(row))
    console.print(table)
    kinds = Table("layer kind", "ms/step", "share", title="where the time goes")
    for name, v in r["categories"].items():
        kinds.add_row(name, *_share(v))
    for name, v in r["phases"].items():
        kinds.add_row(f"phase: {name}", *_share(v))
    console.print(kinds)
    busy = f", GPU busy {100 * r['device_busy_fraction']:.0f}% of it" if "device_busy_fraction" in r else ""
    trace = f"; trace {r['trace']}" if "trace" in r else ""
    console.print(f"step {1e3 * r['seconds_per_step']:.2f} ms unprofiled ({r['images_per_s']:,.0f} img/s), "
                  f"{1e3 * r['profiled_seconds_per_step']:.2f} ms profiled; {r['time_counted']} "
                  f"{r['measured_ms_per_step']:.2f} ms/step{busy}{trace}", highlight=False)


RENDERERS: dict[str, Callable[[dict[str, Any]], None]] = {
    "prep": render_prep,
    "pca": render_pca,
    "loader": render_loader,
    "read": render_read,
    "train": render_train,
    "profile": render_profile,
}
