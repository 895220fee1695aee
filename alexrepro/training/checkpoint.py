"""Checkpoints: a typed `Checkpoint`, stored as one dict with torch.save, written atomically.

The stored dict (`Checkpoint.to_payload`) has the keys format, version, model
(state_dict unwrapped from DDP and torch.compile), recipe (sections), recipe_name, classes (the
prepared set's list), epoch, batch (position within the epoch), step, parallel, optimizer, scaler,
schedule, rng (python, numpy, torch, cuda; one entry per rank), loader, metrics (history, the
running epoch's tally, seconds), best_top1, stats (mean image float32 256×256×3, channel_mean,
eigval, eigvec on the 0–255 scale), for a run's checkpoints set_identity (alexrepro.data.manifest.set_identity
of the prepared set it was trained on), checksum, and, for imported weights only (alexrepro import), origin (format,
file, sha256, net, published). Every value is a tensor (on the CPU) or plain Python, so
`torch.load(weights_only=True)` reads it. Only this module reads the dict by key: the rest of the package
gets a `Checkpoint` from `read_checkpoint` and writes one with `save_checkpoint` (or, for a run's
last, epoch and best files, `write_run_checkpoint`).

`checksum` is "sha256:<hex>" of the contents (`contents_digest`: every other key and value, each tensor's
dtype, shape and bytes), checked on every load: a file damaged after it was written (one flipped bit in a
weight) is refused naming it, where torch.load alone would hand back the wrong numbers. Files written
before checkpoints carried one load with a note.

A run folder keeps RUN/checkpoints/last.pt (every save), epoch-NNN.pt (each epoch end; the newest
`keep_last` kept) and best.pt (lowest validation top-1 error).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alexrepro.data.stats_file import Stats
from alexrepro.errors import UserError
from alexrepro.process.atomic import atomic_path, described_write_errors
from alexrepro.progress import console
from alexrepro.recipe import Recipe
from alexrepro.recipe_reader import recipe_from_dict

FORMAT = "alexrepro-checkpoint"
VERSION = 1  # the layout of the stored dict; a new one converts older payloads in from_payload
LAST, BEST = "last.pt", "best.pt"
CHECKSUM = "checksum"  # the stored key of the contents' digest (contents_digest)
WRITE_HINT = ("free space there (or fix its permissions); the checkpoints written before are intact, and "
              "--resume continues from the newest")  # a run's saves
SAVE_HINT = "free space there (or fix its permissions), then run it again"  # any other save
_unverified: set[str] = set()  # files without a checksum already noted in this process


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def epoch_name(epoch: int) -> str:
    """File name of the checkpoint written when 0-based epoch `epoch` ends (epoch-001.pt for the first)."""
    return f"epoch-{epoch + 1:03d}.pt"


@dataclass(frozen=True)
class Origin:
    """Where an imported checkpoint's weights came from (alexrepro import): eval shows its published row."""

    format: str  # "caffe" or "torchvision"
    file: str  # the weights file's name
    sha256: str  # of the file's bytes: names the exact weights
    net: str  # the net's name in the file (Caffe's NetParameter name; "alexnet" for torchvision)
    # The published accuracy and its protocol: top1_acc, top5_acc (percent), crops, resize, protocol, reference.
    published: dict[str, Any] = field(default_factory=dict)

    def to_payload(self) -> dict[str, Any]:
        return {"format": self.format, "file": self.file, "sha256": self.sha256, "net": self.net,
                "published": dict(self.published)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any] | None) -> Origin | None:
        if not isinstance(payload, dict):
            return None
        return cls(str(payload.get("format", "")), str(payload.get("file", "")), str(payload.get("sha256", "")),
                   str(payload.get("net", "")), dict(payload.get("published") or {}))


@dataclass
class Checkpoint:
    """What a checkpoint holds, typed: enough to resume a run bitwise, or to predict with its net."""

    model: dict[str, torch.Tensor]  # the plain net's state_dict
    recipe: Recipe  # the resolved recipe; its name is stored as recipe_name
    classes: list[dict[str, Any]] = field(default_factory=list)  # the prepared set's classes, by index
    epoch: int = 0  # the epoch to run next (0-based): epochs completed
    batch: int = 0  # batches of that epoch already trained (a mid-epoch save)
    step: int = 0  # updates applied so far
    parallel: str = "none"  # none | data | model: the optimiser state's layout follows it
    optimizer: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None  # GradScaler's state (fp16 only)
    schedule: dict[str, Any] | None = None
    rng: list[dict[str, Any]] = field(default_factory=list)  # every rank's random state, by rank
    loader: dict[str, Any] | None = None  # the training loader's position
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics record per finished epoch
    running: torch.Tensor | None = None  # this epoch's (loss sum, top-1 hits, top-5 hits, images), float64
    seconds: float = 0.0  # training time so far, over every session of the run
    best_top1: float = math.inf  # lowest validation top-1 error so far
    stats: dict[str, Any] | None = None  # the set's colour statistics (`stats_payload`)
    set_identity: str | None = None  # the prepared set trained on (data.manifest.set_identity); None: not recorded
    origin: Origin | None = None  # imported weights only (alexrepro import); None for a trained net

    def to_payload(self) -> dict[str, Any]:
        """The dict torch.save stores (format and version first)."""
        origin = {} if self.origin is None else {"origin": self.origin.to_payload()}  # imported weights only
        trained_on = {} if self.set_identity is None else {"set_identity": self.set_identity}  # a run's only
        return {
            "format": FORMAT, "version": VERSION,
            "model": self.model, "recipe": self.recipe.to_dict(), "recipe_name": self.recipe.name,
            "classes": self.classes, "epoch": self.epoch, "batch": self.batch, "step": self.step,
            "parallel": self.parallel, "optimizer": self.optimizer, "scaler": self.scaler,
            "schedule": self.schedule, "rng": self.rng, "loader": self.loader,
            "metrics": {"history": self.history, "running": self.running, "seconds": self.seconds},
            "best_top1": self.best_top1, "stats": self.stats, **trained_on, **origin,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any], source: str = "the checkpoint") -> Checkpoint:
        """A stored dict (version 1, the only layout so far) as a Checkpoint; keys a hand-made file
        lacks take their defaults, but the weights and the recipe must be there."""
        if not isinstance(payload.get("model"), dict) or not isinstance(payload.get("recipe"), dict):
            raise UserError(f"{source} holds no model weights and recipe; give a checkpoint written by alexrepro train")
        metrics = payload.get("metrics") or {}
        rng = payload.get("rng") or []
        return cls(
            model=payload["model"],
            recipe=recipe_from_dict(payload["recipe"], name=str(payload.get("recipe_name", "checkpoint"))),
            classes=list(payload.get("classes", [])), epoch=int(payload.get("epoch", 0)),
            batch=int(payload.get("batch", 0)), step=int(payload.get("step", 0)),
            parallel=str(payload.get("parallel", "none")), optimizer=payload.get("optimizer"),
            scaler=payload.get("scaler"), schedule=payload.get("schedule"),
            rng=list(rng) if isinstance(rng, (list, tuple)) else [rng],  # one state: a single-process run
            loader=payload.get("loader"), history=list(metrics.get("history", [])),
            running=metrics.get("running"), seconds=float(metrics.get("seconds", 0.0)),
            best_top1=float(payload.get("best_top1", math.inf)), stats=payload.get("stats"),
            set_identity=None if payload.get("set_identity") is None else str(payload["set_identity"]),
            origin=Origin.from_payload(payload.get("origin")),
        )


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """A checkpoint file as a Checkpoint; a UserError if it is missing, corrupt, damaged or not an alexrepro
    checkpoint (the one way the package reads one)."""
    return Checkpoint.from_payload(_load_payload(path, map_location), source=str(path))


def to_safe(obj: Any) -> Any:
    """Numpy arrays and scalars → tensors and Python numbers, tensors → the CPU, recursively (for
    weights_only loading, and so that the checksum sees the bytes that are written)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
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


def contents_digest(payload: dict[str, Any]) -> str:
    """"sha256:<hex>" of a stored dict's contents, its `checksum` key left out: keys in order, each value's
    type and value, each tensor's dtype, shape and bytes. The same before torch.save and after torch.load."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != CHECKSUM})
    return "sha256:" + h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the bytes as stored, any dtype (bfloat16 too)
    elif isinstance(obj, dict):
        h.update(f"dict {len(obj)};".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__} {len(obj)};".encode())
        for value in obj:
            _feed(h, value)
    else:  # None, bool, int, float (repr round-trips every float), str, bytes
        h.update(f"{type(obj).__name__} {obj!r};".encode())


def sealed(ckpt: Checkpoint) -> dict[str, Any]:
    """The dict to store: format and version first, tensors on the CPU, and the checksum of it all."""
    stored = to_safe(ckpt.to_payload())
    stored.pop(CHECKSUM, None)
    stored[CHECKSUM] = contents_digest(stored)
    return stored


def save_checkpoint(path: str | os.PathLike[str], ckpt: Checkpoint, hint: str = SAVE_HINT) -> None:
    """Write a checkpoint atomically (the one way the package writes one); a failed write is one line naming
    the file and `hint` (a UserError when read-only or forbidden, else WorkFailed), and the old file stays."""
    _store(Path(path), sealed(ckpt), hint)


def _store(path: Path, stored: dict[str, Any], hint: str) -> None:
    """Save a sealed dict: a temporary file, fsync, rename."""
    with described_write_errors(path, hint), atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(stored, f)  # through a file object, so a failed write carries its errno (ENOSPC, EROFS)


def _load_payload(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The stored dict of a checkpoint file (what `read_checkpoint` types), its checksum verified and removed;
    a UserError if it is missing, corrupt, damaged or not an alexrepro checkpoint."""
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
    verify(path, ckpt)
    return ckpt


def verify(path: Path, ckpt: dict[str, Any]) -> None:
    """Check (and remove) the stored checksum; a UserError naming the file if the contents differ from it."""
    stored = ckpt.pop(CHECKSUM, None)
    if stored is None:
        if str(path) not in _unverified:
            _unverified.add(str(path))
            console.print(f"note: {path} carries no checksum (written before alexrepro checked checkpoints); "
                          "loaded without verifying it", soft_wrap=True, markup=False, highlight=False)
        return
    if stored != contents_digest(ckpt):
        raise UserError(f"checkpoint {path} is damaged: its contents do not match the checksum written with it; "
                        "use another one (RUN/checkpoints keeps last.pt, best.pt and the last epochs' files)")


def checkpoint_position(path: str | os.PathLike[str]) -> tuple[int, int, int] | None:
    """The training position (epoch, batch, step) a checkpoint file records, or None if it does not read.

    Cheap: the tensors are mapped, not read (torch.load's mmap); the file's checksum is not checked here.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            return None
        return int(payload.get("epoch", 0)), int(payload.get("batch", 0)), int(payload.get("step", 0))
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, zipfile.BadZipFile,
            pickle.UnpicklingError):
        return None


def checkpoint_candidates(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The run's checkpoints, furthest along first: by the position each records (epoch, batch, step), never
    by file time, which a copy or a restore reorders. Files whose position does not read come first (each is
    then refused, naming it); among equal positions (one save's files) last.pt, then best.pt."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.glob("*.pt") if not p.name.startswith("."))
    positions = {p: checkpoint_position(p) for p in files}
    unread = [p for p in files if positions[p] is None]
    rank = {LAST: 0, BEST: 1}
    known = sorted((p for p in files if positions[p] is not None),
                   key=lambda p: (positions[p], -rank.get(p.name, 2)), reverse=True)
    return unread + known


def find_resumable(run_dir: str | os.PathLike[str]) -> Path | None:
    """The loadable checkpoint of a run furthest along; a damaged one before it is skipped with a warning."""
    for path in checkpoint_candidates(run_dir):
        try:
            _load_payload(path)  # the file reads and its checksum holds; the recipe is checked when resumed
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
    run_dir: str | os.PathLike[str], ckpt: Checkpoint, *, epoch_end: bool, is_best: bool, keep_last: int
) -> dict[str, Path]:
    """Save last.pt (and at an epoch end epoch-NNN.pt, best.pt when best); prune old epoch files.

    last.pt is written last so that it is the newest file when a run is killed between writes. Each name
    is its own file (not a hard link to one), so damage to one copy leaves the others readable.
    """
    folder = checkpoint_dir(run_dir)
    written: dict[str, Path] = {}
    stored = sealed(ckpt)  # one checksum for the files this save writes
    if epoch_end:
        written["epoch"] = folder / epoch_name(ckpt.epoch - 1)
        _store(written["epoch"], stored, WRITE_HINT)
        if is_best:
            written["best"] = folder / BEST
            _store(written["best"], stored, WRITE_HINT)
        epochs = sorted(folder.glob("epoch-*.pt"))
        for old in epochs[: max(0, len(epochs) - max(keep_last, 1))]:
            old.unlink(missing_ok=True)
    written["last"] = folder / LAST
    _store(written["last"], stored, WRITE_HINT)
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


def model_from_checkpoint(saved: Checkpoint) -> tuple[nn.Module, Recipe, list[dict[str, Any]]]:
    """(model in eval mode on the CPU, Recipe, classes) from a checkpoint read with `read_checkpoint`."""
    from alexrepro.nets import build_net

    model = build_net(saved.recipe.model, saved.recipe.data.crop_size)
    try:
        model.load_state_dict(saved.model)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"checkpoint weights do not fit the recipe's model ({first})") from None
    model.eval()
    return model, saved.recipe, saved.classes


def stats_payload(stats: Stats) -> dict[str, Any]:
    """The colour statistics a checkpoint carries so that predict needs nothing else (mean as stored, float32)."""
    return {"mean": torch.from_numpy(np.asarray(stats.mean, dtype=np.float32)),
            "channel_mean": torch.from_numpy(np.asarray(stats.channel_mean, dtype=np.float64)),
            "eigval": None if stats.eigval is None else torch.from_numpy(np.asarray(stats.eigval, dtype=np.float64)),
            "eigvec": None if stats.eigvec is None else torch.from_numpy(np.asarray(stats.eigvec, dtype=np.float64)),
            "scale": stats.scale}
