"""Checkpoints: one dict saved with torch.save, written atomically, enough to resume or to predict.

Keys: format, version, model (state_dict unwrapped from DDP and torch.compile), recipe (sections),
recipe_name, classes (the manifest's list), epoch, step, batch (position within the epoch),
optimizer, scaler, schedule, rng (python, numpy, torch, cuda), loader, metrics (history and the
running epoch), best_top1, stats (mean image float32 256×256×3, channel_mean, eigval, eigvec on
the 0–255 scale). Every value is a tensor or plain Python, so `torch.load(weights_only=True)` reads it.

A run folder keeps RUN/checkpoints/last.pt (every save), epoch-NNN.pt (each epoch end; the newest
`keep_last` kept) and best.pt (lowest validation top-1 error).
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexrepro.atomic import atomic_path
from alexrepro.errors import UserError
from alexrepro.data.prepared import Stats
from alexrepro.progress import console
from alexrepro.recipe import Recipe, recipe_from_dict

FORMAT = "alexrepro-checkpoint"
VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def epoch_name(epoch: int) -> str:
    """File name of the checkpoint written when 0-based epoch `epoch` ends (epoch-001.pt for the first)."""
    return f"epoch-{epoch + 1:03d}.pt"


def to_safe(obj: Any) -> Any:
    """Numpy arrays and scalars → tensors and Python numbers, recursively (for weights_only loading)."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [to_safe(v) for v in obj]
        return tuple(items) if isinstance(obj, tuple) else items
    return obj


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically: a temporary file, fsync, rename; a failed write leaves the old file."""
    payload = {"format": FORMAT, "version": VERSION, **to_safe(payload)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint; a UserError if it is missing, corrupt or not an alexrepro checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; give a .pt file, e.g. RUN/checkpoints/best.pt")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give a .pt file from RUN/checkpoints/")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile,
            pickle.UnpicklingError) as e:  # what torch.load raises on garbage (KeyError: a bad pickle memo)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, (KeyError, IndexError)):
            first = "not a PyTorch checkpoint"
        if first.startswith("Weights only load failed"):  # torch's advice (weights_only=False) is not ours
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(e), re.S)
            first = "not a file of tensors and plain data" + (f": {' '.join(detail[1].split())}" if detail else "")
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({first}); use another one") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not an alexrepro checkpoint; give one written by alexrepro train")
    if ckpt.get("version") != VERSION:
        raise UserError(f"{path} is checkpoint version {ckpt.get('version')}, this alexrepro reads {VERSION}")
    return ckpt


def checkpoint_candidates(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The run's checkpoints, newest first (by modification time; last.pt first on a tie)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    files = [p for p in folder.glob("*.pt") if not p.name.startswith(".")]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name == LAST), reverse=True)


def find_resumable(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest loadable checkpoint of a run; a corrupt newer one is skipped with a warning."""
    for path in checkpoint_candidates(run_dir):
        try:
            load_checkpoint(path)
        except UserError as e:
            console.print(f"[yellow]warning:[/yellow] skipping {path.name}: {e}")
            continue
        return path
    return None


def remove_stale_temps(run_dir: str | os.PathLike[str]) -> None:
    """Delete temporary files a killed save left behind (the renamed checkpoints are intact)."""
    folder = checkpoint_dir(run_dir)
    if folder.is_dir():
        for p in folder.glob(".*.tmp-*"):
            p.unlink(missing_ok=True)


def write_run_checkpoint(
    run_dir: str | os.PathLike[str], payload: dict[str, Any], *, epoch_end: bool, is_best: bool, keep_last: int
) -> dict[str, Path]:
    """Save last.pt (and at an epoch end epoch-NNN.pt, best.pt when best); prune old epoch files.

    last.pt is written last so that it is the newest file when a run is killed between writes. Each name
    is its own file (not a hard link to one), so damage to one copy leaves the others readable.
    """
    folder = checkpoint_dir(run_dir)
    written: dict[str, Path] = {}
    if epoch_end:
        written["epoch"] = folder / epoch_name(int(payload["epoch"]) - 1)
        save_checkpoint(written["epoch"], payload)
        if is_best:
            written["best"] = folder / BEST
            save_checkpoint(written["best"], payload)
        epochs = sorted(folder.glob("epoch-*.pt"))
        for old in epochs[: max(0, len(epochs) - max(keep_last, 1))]:
            old.unlink(missing_ok=True)
    written["last"] = folder / LAST
    save_checkpoint(written["last"], payload)
    return written


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and torch.compile wrappers (what a checkpoint stores)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_from_checkpoint(
    ckpt: dict[str, Any] | str | os.PathLike[str],
) -> tuple[nn.Module, Recipe, list[dict[str, Any]]]:
    """(model in eval mode on the CPU, Recipe, classes) from a checkpoint dict or path."""
    from alexrepro.nets import build_net

    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    recipe = recipe_from_dict(ckpt["recipe"], name=str(ckpt.get("recipe_name", "checkpoint")))
    model = build_net(recipe.model, recipe.data.crop_size)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint weights do not fit the recipe's model ({first})") from None
    model.eval()
    return model, recipe, list(ckpt.get("classes", []))


def capture_rng() -> dict[str, Any]:
    """Every random state a resumed run must continue from: python, numpy, torch, cuda."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict[str, Any]) -> None:
    """Restore what capture_rng saved (CUDA states only on the same number of devices)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def stats_payload(stats: Stats) -> dict[str, Any]:
    """The colour statistics a checkpoint carries so that predict needs nothing else (mean as stored, float32)."""
    return {"mean": torch.from_numpy(np.asarray(stats.mean, dtype=np.float32)),
            "channel_mean": torch.from_numpy(np.asarray(stats.channel_mean, dtype=np.float64)),
            "eigval": None if stats.eigval is None else torch.from_numpy(np.asarray(stats.eigval, dtype=np.float64)),
            "eigvec": None if stats.eigvec is None else torch.from_numpy(np.asarray(stats.eigvec, dtype=np.float64)),
            "scale": stats.scale}


def rng_isolated(batches: Iterable[Any]) -> Iterator[Any]:
    """Yield from `batches` without letting the loader consume the global torch RNG.

    A DataLoader draws its workers' base seed from the global generator whenever an iterator
    starts; the loaders' own draws are keyed by (seed, epoch, batch), so undoing that draw keeps
    the stream dropout sees the same whether a run was resumed mid-epoch or not.
    """
    it = iter(batches)
    while True:
        state = torch.get_rng_state()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            torch.set_rng_state(state)
        yield item
