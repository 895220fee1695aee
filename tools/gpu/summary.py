#!/usr/bin/env python3
"""Gather run_all.sh's results into at most six files in OUT and print the figures against the targets.

    summary.py RES OUT [--quiet]

RES holds one JSON file per step (NAME.json, what each `alexrepro bench ... --json` printed) and steps.tsv
(name, exit code, seconds per step). OUT gets, besides run.log, env.txt and the profile trace that run_all.sh
writes there itself:

    profile.json   {"eager_triton", "eager_torch", "compiled_triton", "compiled_torch"}: bench profile; {"lrn"}: bench lrn
    train.json     {"compiled", "eager"}: bench train (with --data: end to end); {"curves"}: bench curves
    loader.json    {"jpeg", "raw"}: bench loader --stages; {"spread": {"torch": [...], "dali": [...]}}
    other.json     {"conv"}: bench conv; {"model_parallel"}: train --parallel model on one GPU
    summary.json   each step's exit code and seconds, and each target with its figure

run_all.sh calls it after every step (--quiet), so that a call cut short still returns what was measured,
and once at the end to print the summary. Standard library only; a missing or broken file is a missing figure.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

GROUPS = {  # OUT file: {key: RES file name, or a prefix ending in "*" for a list in run order}
    "profile.json": {"eager_triton": "profile", "eager_torch": "profile_torch", "compiled_triton": "profile_compile",
                     "compiled_torch": "profile_compile_torch", "lrn": "lrn"},
    "train.json": {"compiled": "train_compile", "eager": "train", "curves": "curves"},
    "loader.json": {"jpeg": "loader", "raw": "loader_raw", "spread": "spread_*"},
    "other.json": {"conv": "conv", "model_parallel": "mp_train"},
}


def load(res: Path, name: str) -> Any:
    """One step's JSON (None if missing or not JSON)."""
    try:
        return json.loads((res / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def spread(res: Path) -> dict[str, list[Any]]:
    """The spread runs by loader kind, in run order: spread_torch_1.json, spread_dali_1.json, ..."""
    runs: dict[str, list[Any]] = {}
    for path in sorted(res.glob("spread_*.json"), key=lambda p: p.stat().st_mtime):
        kind = path.stem.split("_")[1] + ("_cold" if path.stem.endswith("_cold") else "")
        r = load(res, path.stem)
        if r is not None:
            runs.setdefault(kind, []).append(r)
    return runs


def gather(res: Path) -> dict[str, dict[str, Any]]:
    """The grouped results, as the OUT files hold them."""
    out: dict[str, dict[str, Any]] = {}
    for file, members in GROUPS.items():
        out[file] = {}
        for key, name in members.items():
            value = spread(res) if name.endswith("*") else load(res, name)
            if value:
                out[file][key] = value
    return out


def dig(d: Any, *path: str) -> Any:
    """d[path[0]][path[1]]..., or None where any step is missing."""
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def spread_figures(runs: list[Any]) -> dict[str, Any] | None:
    """min / median / max images/s of the first pass (and of the second) over the runs of one loader."""
    first = [r["loaders"][k]["images_per_s"] for r in runs for k in r.get("loaders", {})
             if "images_per_s" in r["loaders"][k]]
    if not first:
        return None
    second = [p[1]["images_per_s"] for r in runs for k in r["loaders"]
              if len(p := r["loaders"][k].get("passes", [])) > 1]
    stats = {"runs": len(first), "pass1_min_median_max": [min(first), statistics.median(first), max(first)]}
    if second:
        stats["pass2_min_median_max"] = [min(second), statistics.median(second), max(second)]
    return stats


def lrn_floor(*results: Any) -> Any:
    """The Triton LRN's forward + backward time as a multiple of its memory-traffic floor: `times_floor` of
    bench lrn or of bench train's lrn block ({implementation: multiple}), else any number under a key naming
    the floor. None if no result has it."""
    for r in results:
        block = r if r is not None and "times_floor" in r else dig(r, "lrn")
        for key, value in (block or {}).items():
            if "floor" not in key:
                continue
            if isinstance(value, dict) and isinstance(value.get("triton"), (int, float)):
                return {f"{key}.triton": value["triton"]}
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "floor_seconds":
                return {key: value}
    return None


def fastest_tile(result: Any) -> Any:
    """{tile: its time ÷ the default tile's} for the fastest tile bench lrn timed, else None."""
    tiles = dig(result, "tiles")
    return {tiles["best"]: tiles["best_vs_default"]} if tiles and "best" in tiles else None


def targets(g: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the GPU work: what it asks, the figure measured (None: not measured), and whether met."""
    p, t, lo, ot = g["profile.json"], g["train.json"], g["loader.json"], g["other.json"]
    variants = {k: v.get("images_per_s", 0) for k, v in (dig(lo, "jpeg", "dali_variants") or {}).items()}
    best = max(variants, key=variants.get) if variants else None
    best_dali = {best: variants[best]} if best else None
    rows = [
        ("LRN share of kernel time, eager, Triton kernel", dig(p, "eager_triton", "categories", "LRN", "share"), "<=", 0.10),
        ("LRN share of kernel time, compiled, Triton kernel", dig(p, "compiled_triton", "categories", "LRN", "share"),
         "<=", 0.10),
        ("LRN share of kernel time, eager, torch path (before)", dig(p, "eager_torch", "categories", "LRN", "share"),
         None, None),
        ("LRN forward + backward ÷ memory floor (Triton)", lrn_floor(p.get("lrn"), t.get("eager"), t.get("compiled")),
         "<=", 3.0),
        ("LRN kernels at the fastest tile: time ÷ the default tile's", fastest_tile(p.get("lrn")), None, None),
        ("paper net ÷ torchvision AlexNet, eager", dig(t, "eager", "ours_vs_torchvision"), ">=", 0.8),
        ("paper net ÷ torchvision AlexNet, compiled", dig(t, "compiled", "ours_vs_torchvision"), ">=", 0.8),
        ("paper net compiled, images/s (H200 target)", dig(t, "compiled", "loops", "ours", "images_per_s"), ">=", 25000),
        ("DALI, 256×256 JPEG shards, images/s (default settings)", dig(lo, "jpeg", "loaders", "dali", "images_per_s"),
         ">=", 40000),
        ("DALI, JPEG, images/s (the fastest setting tried, the default run again among them)", best_dali, ">=", 40000),
        ("DALI, raw shards, images/s", dig(lo, "raw", "loaders", "dali", "images_per_s"), ">=", 80000),
        ("end to end ÷ synthetic input, compiled", dig(t, "compiled", "end_to_end_vs_synthetic"), ">=", 0.95),
        ("end to end ÷ synthetic input, eager", dig(t, "eager", "end_to_end_vs_synthetic"), ">=", 0.95),
        ("loss curves, Triton vs torch LRN, within 1% (10-step means)", dig(t, "curves", "within_tolerance"), "==", True),
        ("grouped conv cost per FLOP ÷ ungrouped (switch above 1.3)", dig(ot, "conv", "grouped_vs_ungrouped_per_flop"),
         "<=", 1.3),
        ("model-parallel path ran: steps, towers' devices", {"steps": dig(ot, "model_parallel", "steps"),
         "devices": dig(ot, "model_parallel", "devices")} if dig(ot, "model_parallel") else None, ">=", 1),
    ]
    out = []
    for what, figure, op, bound in rows:
        value = next(iter(figure.values())) if isinstance(figure, dict) else figure
        met = None
        if value is not None and op is not None:
            met = {"<=": value <= bound, ">=": value >= bound, "==": value == bound}[op]
        out.append({"target": what, "figure": figure, "bound": None if op is None else f"{op} {bound}", "met": met})
    return out


def read_steps(res: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        for line in (res / "steps.tsv").read_text().splitlines():
            name, rc, secs = line.split("\t")
            rows.append({"step": name, "exit": rc, "seconds": int(secs)})
    except (OSError, ValueError):
        pass
    return rows


def write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def report(g: dict[str, dict[str, Any]], summary: dict[str, Any]) -> None:
    """The summary in a few lines per result, for the log's end (the JSON files hold everything)."""
    for key, r in g["profile.json"].items():
        if key == "lrn":
            print(f"lrn: s {r.get('seconds_forward_backward')}, ÷ floor {r.get('times_floor')}")
            if "tiles" in r:
                print(f"   tiles ÷ floor {r['tiles']['times_floor']}; fastest {r['tiles']['best']}, "
                      f"{r['tiles']['best_vs_default']} of the default {r['tiles']['default']}'s time")
            continue
        kinds = ", ".join(f"{k} {100 * v['share']:.1f}%" for k, v in list(r["categories"].items())[:5])
        print(f"profile {key}: {r['images_per_s']:,.0f} images/s, {r['measured_ms_per_step']:.2f} ms/step measured, "
              f"busy {r.get('device_busy_fraction', '-')}; {kinds}")
        for row in r["top"][:3]:
            print(f"   {100 * row['share']:5.1f}% {row['ms_per_step']:8.3f} ms/step [{row['category']}] {row['name'][:90]}")
    for key in ("compiled", "eager"):
        r = g["train.json"].get(key)
        if r:
            loops = {k: v["images_per_s"] for k, v in r["loops"].items()}
            print(f"train {key}: images/s {loops}, vs torchvision {r.get('ours_vs_torchvision')} "
                  f"(per multiply-add {r.get('ours_vs_torchvision_per_mac')}), e2e/synthetic "
                  f"{r.get('end_to_end_vs_synthetic')}, overhead {r.get('overhead_vs_plain')}")
            print(f"   lrn {r.get('lrn')}")
    for key in ("jpeg", "raw"):
        r = g["loader.json"].get(key)
        if r:
            for kind, v in r["loaders"].items():
                stages = {s: x.get("images_per_s") for s, x in v.get("stages", {}).items()}
                print(f"loader {key} {kind}: {v.get('images_per_s', v.get('error'))} images/s, first batch "
                      f"{v.get('first_batch_s')} s, cores busy {v.get('cpu', {}).get('ours_cores_busy')}; stages {stages}")
            for spec, v in r.get("dali_variants", {}).items():
                print(f"   dali {spec}: {v['images_per_s']} images/s ({v.get('vs_default')} of default)")
    for kind, stats in summary["spread"].items():
        print(f"spread {kind}: {stats}")
    for row in summary["targets"]:
        mark = {True: "met", False: "NOT MET", None: "-"}[row["met"]]
        print(f"target: {row['target']}: {row['figure']} ({row['bound'] or 'for reference'}): {mark}")


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    res, out = Path(argv[0]), Path(argv[1])
    g = gather(res)
    for file, value in g.items():
        if value:
            write_json(out / file, value)
    summary = {"steps": read_steps(res), "targets": targets(g),
               "spread": {k: s for k, runs in g["loader.json"].get("spread", {}).items()
                          if (s := spread_figures(runs)) is not None}}
    write_json(out / "summary.json", summary)
    if "--quiet" not in argv:
        report(g, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
