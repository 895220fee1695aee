"""The run folder is one run's: held by one process at a time, and an earlier run in it is never overwritten.

`claim_run_folder(RUN)` holds RUN's lock (alexrepro.locking: a second `train` into it exits 2 naming the
holder) for the whole run, and removes RUN again if this claim created it and a refusal left it empty.
A new run in a folder that holds an earlier run's metrics or checkpoints (even damaged ones) needs
`--force`, which first moves the earlier run's files into RUN/previous-<time>/ (`keep_aside`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from alexrepro.atomic import writable_folder
from alexrepro.errors import UserError
from alexrepro.locking import LOCK_FILE, FolderLock
from alexrepro.training.checkpoint import checkpoint_dir
from alexrepro.training.runlog import METRICS

PREVIOUS = "previous-"  # RUN/previous-<time>/: an earlier run's files, kept aside by --force


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
