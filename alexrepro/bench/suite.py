"""`alexrepro bench all`: generate a small ImageNet-like set and run every benchmark on it, in one run.

The sizes are chosen for a laptop CPU (the tiny recipe, small batches); on a GPU the train benchmark
times the paper's net in bf16 with channels-last, as docs/PERFORMANCE.md records it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

SUITE = ("prep", "pca", "loader", "train")  # the benchmarks `bench all` runs, in this order


def is_cpu_device(device: str) -> bool:
    """Whether a --device value names the CPU (the suite then picks its CPU sizes)."""
    return device.startswith("cpu")


def make_bench_data(base: Path) -> tuple[Path, Path]:
    """A generated source tree and its prepared set (with PCA) under `base`, kept if already there."""
    from alexrepro.data.options import PrepOptions
    from alexrepro.data.prep import prep
    from alexrepro.data.stats import compute_pca
    from alexrepro.data.synth import make_synthetic

    src, out = base / "src", base / "data"
    if not (out / "manifest.json").exists():
        make_synthetic(src, classes=10, train_per_class=40, val_per_class=4, seed=0)
        prep(src, out, PrepOptions(workers=os.cpu_count() or 1))
        compute_pca(out)
    return src, out


def run_suite(src: Path, out: Path, device: str) -> dict[str, Any]:
    """Each benchmark of SUITE on the source tree `src` and its prepared set `out`."""
    from alexrepro.bench.loader import bench_loader
    from alexrepro.bench.pca import bench_pca
    from alexrepro.bench.prep import bench_prep
    from alexrepro.bench.train import bench_train

    cores = os.cpu_count() or 1
    cpu = is_cpu_device(device)
    return {
        "prep": bench_prep(src, limit=200, workers=min(2, cores)),
        "pca": bench_pca(out, workers=1),
        "loader": bench_loader(out, src, 10, 64 if cpu else 256, cores, device=device),  # every loader backend
        "train": bench_train("tiny" if cpu else "paper", ("model.num_classes=10",), steps=5 if cpu else 20,
                             device=device, precision="fp32" if cpu else "bf16", channels_last=not cpu,
                             data=str(out), workers=cores),
    }


def bench_all(folder: Path | None, device: str) -> dict[str, Any]:
    """Every benchmark of SUITE on data generated in `folder` (default: a temporary folder), and the machine."""
    from alexrepro.bench.machine import machine_info
    from alexrepro.runtime import resolve_device

    resolve_device(device)  # a bad --device fails before the data is generated
    with tempfile.TemporaryDirectory(prefix="alexrepro-bench-") as tmp:
        src, out = make_bench_data(Path(folder) if folder else Path(tmp))
        results = run_suite(src, out, device)
    return {**results, "machine": machine_info()}
