"""A run folder records itself: recipe.toml, metrics.jsonl, log.txt and environment.json.

    RUN/recipe.toml        the resolved recipe (extends, --set and command-line options applied)
    RUN/metrics.jsonl      one JSON object per logged step ("kind": "step") and per epoch ("kind": "epoch")
    RUN/log.txt            the familiar `Epoch: [e][i/N] loss acc@1 acc@5` lines and notes
    RUN/environment.json   git commit and dirty flag, library versions, devices, command line
    RUN/git.diff           the uncommitted changes, when the checkout has any
Only rank 0 writes; every method is a no-op on the other ranks.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import alexrepro
from alexrepro.atomic import atomic_write_json, atomic_write_text
from alexrepro.recipe import Recipe, recipe_to_toml

RECIPE, METRICS, LOG, ENVIRONMENT, DIFF = "recipe.toml", "metrics.jsonl", "log.txt", "environment.json", "git.diff"


def epoch_line(epoch: int, i: int, n: int, loss: float, top1: float, top5: float, lr: float, ips: float) -> str:
    """torchvision's reference log line: Epoch: [e][i/N] loss acc@1 acc@5 (accuracies in %)."""
    width = len(str(n))
    return (
        f"Epoch: [{epoch}][{i:>{width}}/{n}]  lr {lr:.6g}  loss {loss:.4f}  "
        f"acc@1 {top1:6.2f}  acc@5 {top5:6.2f}  img/s {ips:,.1f}"
    )


def val_line(record: dict[str, Any], next_lr: float) -> str:
    """The log line of an epoch's validation (an epoch record of metrics.jsonl); the new lr when it was cut."""
    return (f"Epoch: [{record['epoch']}] val  top-1 error {100 * record['val_top1_error']:.2f}%  top-5 error "
            f"{100 * record['val_top5_error']:.2f}%{'  (best)' if record['best'] else ''}"
            f"{f'  lr -> {next_lr:g}' if record['lr_reduced'] else ''}")


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def environment_record(devices: list[str], world_size: int) -> tuple[dict[str, Any], str | None]:
    """(what ran where, the uncommitted diff or None): git commit, versions, devices, command line."""
    repo = Path(alexrepro.__file__).resolve().parent.parent
    commit = _git(["rev-parse", "HEAD"], repo)
    diff = _git(["diff", "HEAD"], repo) if commit else None
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "command": sys.argv,
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(diff),
        "alexrepro": alexrepro.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "devices": devices,
        "device_names": [torch.cuda.get_device_name(d) for d in devices if d.startswith("cuda")],
        "world_size": world_size,
        "cpu_threads": torch.get_num_threads(),
    }
    return record, diff or None


class RunLog:
    """The writer of a run folder (a no-op unless `enabled`, i.e. on rank 0)."""

    def __init__(self, run_dir: str | os.PathLike[str], enabled: bool = True) -> None:
        self.dir = Path(run_dir)
        self.enabled = enabled
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def write_recipe(self, recipe: Recipe) -> None:
        if self.enabled:
            atomic_write_text(self.dir / RECIPE, recipe_to_toml(recipe))

    def write_environment(self, devices: list[str], world_size: int) -> None:
        if not self.enabled:
            return
        record, diff = environment_record(devices, world_size)
        atomic_write_json(self.dir / ENVIRONMENT, record)
        if diff:
            atomic_write_text(self.dir / DIFF, diff)

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines after `step` (written by a run killed after its last checkpoint)."""
        path = self.dir / METRICS
        if not self.enabled or not path.is_file():
            return
        kept = [line for line in path.read_text().splitlines() if _line_step(line) <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl (flushed, so a killed run keeps what it logged)."""
        if self.enabled:
            with open(self.dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def line(self, text: str) -> None:
        """Append one line to the human log."""
        if self.enabled:
            with open(self.dir / LOG, "a") as f:
                f.write(text + "\n")


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # a torn last line is dropped
