"""The run folder: one run's, held by one process at a time, and what the run records in it.

`claim_run_folder(RUN)` holds RUN's lock (alexrepro.process.locking: a second `train` into it exits 2 naming the
holder) for the whole run, and removes RUN again if this claim created it and a refusal left it empty.
A new run in a folder that holds an earlier run's metrics or checkpoints (even damaged ones) needs
`--force`, which first moves the earlier run's files into RUN/previous-<time>/ (`keep_aside`).

What the run records (`RunLog`, rank 0 only; every method is a no-op on the other ranks):
    RUN/recipe.toml        the resolved recipe (extends, --set and command-line options applied)
    RUN/metrics.jsonl      one JSON object per logged step ("kind": "step") and per epoch ("kind": "epoch")
    RUN/log.txt            the familiar `Epoch: [e][i/N] loss acc@1 acc@5` lines and notes
    RUN/environment.json   git commit and dirty flag, library versions, devices, command line
    RUN/git.diff           the uncommitted changes, when the checkout has any
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from alexrepro.errors import UserError
from alexrepro.process.atomic import (
    atomic_write_json,
    atomic_write_text,
    described_write_errors,
    writable_folder,
)
from alexrepro.process.locking import LOCK_FILE, FolderLock
from alexrepro.recipe import Recipe, recipe_to_toml
from alexrepro.training.checkpoint import checkpoint_dir
from alexrepro.version import __version__

RECORD_HINT = "free space there (or fix its permissions)"  # a run record that could not be written (W1)
PREVIOUS = "previous-"  # RUN/previous-<time>/: an earlier run's files, kept aside by --force
RECIPE, METRICS, LOG, ENVIRONMENT, DIFF = "recipe.toml", "metrics.jsonl", "log.txt", "environment.json", "git.diff"


@contextlib.contextmanager
def claim_run_folder(run_dir: Path, hold: bool = True) -> Iterator[None]:
    """Hold RUN's lock for the block (creating RUN); `hold` False (a torchrun rank other than 0) does nothing.

    If the block fails and RUN was made here and holds no file, RUN goes again: a refused train leaves no
    empty run folder behind.
    """
    if not hold:
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    writable_folder(run_dir, "--run", "choose a run folder you can write to")
    try:
        with FolderLock(run_dir, "--run"):
            yield
    except BaseException:
        if created and run_dir.is_dir() and not any(p.is_file() for p in run_dir.rglob("*")):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def earlier_run(run_dir: Path) -> list[str]:
    """What in RUN is an earlier run's record: metrics.jsonl (not empty) and checkpoint files, as names."""
    found = []
    metrics = Path(run_dir) / METRICS
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append(METRICS)
    folder = checkpoint_dir(run_dir)
    if folder.is_dir():
        found += sorted(f"checkpoints/{p.name}" for p in folder.glob("*.pt") if not p.name.startswith("."))
    return found


def refuse_earlier_run(run_dir: Path, found: list[str]) -> UserError:
    """The refusal of a new run over an earlier one, saying how to continue it or keep it."""
    checkpoints = [f for f in found if f.startswith("checkpoints/")]
    what = (f"checkpoints of an earlier run ({len(checkpoints)} files)" if checkpoints
            else f"an earlier run's {METRICS}")
    return UserError(f"{run_dir} already holds {what}; add --resume to continue it, --force to start a new run "
                     f"there (the earlier files are first moved to {run_dir}/{PREVIOUS}<time>/), or pick a new --run")


def keep_aside(run_dir: Path) -> Path:
    """Move everything in RUN but its lock and earlier previous-* folders into RUN/previous-<time>/."""
    run_dir = Path(run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir / f"{PREVIOUS}{stamp}"
    n = 1
    while target.exists():
        n += 1
        target = run_dir / f"{PREVIOUS}{stamp}-{n}"
    target.mkdir()
    for entry in sorted(run_dir.iterdir()):
        if entry == target or entry.name == LOCK_FILE or entry.name.startswith(PREVIOUS):
            continue
        os.replace(entry, target / entry.name)  # a rename within RUN: nothing copied, nothing lost
    return target


# --------------------------------------------------------------------------------------------- records
def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def environment_record(devices: list[str], world_size: int) -> tuple[dict[str, Any], str | None]:
    """(what ran where, the uncommitted diff or None): git commit, versions, devices, command line."""
    repo = Path(__file__).resolve().parents[2]  # the checkout holding alexrepro/
    commit = _git(["rev-parse", "HEAD"], repo)
    diff = _git(["diff", "HEAD"], repo) if commit else None
    record = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": socket.gethostname(),
        "command": sys.argv,
        "git_commit": commit.strip() if commit else None,
        "git_dirty": bool(diff),
        "alexrepro": __version__,
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
    """The writer of a run folder (a no-op unless `enabled`, i.e. on rank 0). A write that fails is one line
    naming the file and the free space there (process/atomic.py: write_failure), never a traceback."""

    def __init__(self, run_dir: str | os.PathLike[str], enabled: bool = True) -> None:
        self.dir = Path(run_dir)
        self.enabled = enabled
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def write_recipe(self, recipe: Recipe) -> None:
        if self.enabled:
            with described_write_errors(self.dir / RECIPE, RECORD_HINT):
                atomic_write_text(self.dir / RECIPE, recipe_to_toml(recipe))

    def write_environment(self, devices: list[str], world_size: int) -> None:
        if not self.enabled:
            return
        record, diff = environment_record(devices, world_size)
        with described_write_errors(self.dir / ENVIRONMENT, RECORD_HINT):
            atomic_write_json(self.dir / ENVIRONMENT, record)
        if diff:
            with described_write_errors(self.dir / DIFF, RECORD_HINT):
                atomic_write_text(self.dir / DIFF, diff)

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines after `step` (written by a run killed after its last checkpoint)."""
        path = self.dir / METRICS
        if not self.enabled or not path.is_file():
            return
        kept = [line for line in path.read_text(errors="replace").splitlines() if _line_step(line) <= step]
        with described_write_errors(path, RECORD_HINT):
            atomic_write_text(path, "".join(line + "\n" for line in kept))

    def metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON object to metrics.jsonl (flushed, so a killed run keeps what it logged)."""
        if self.enabled:
            with described_write_errors(self.dir / METRICS, RECORD_HINT), open(self.dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def line(self, text: str) -> None:
        """Append one line to the human log."""
        if self.enabled:
            with described_write_errors(self.dir / LOG, RECORD_HINT), open(self.dir / LOG, "a") as f:
                f.write(text + "\n")


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, AttributeError, TypeError, ValueError):
        return 1 << 62  # a torn last line is dropped
