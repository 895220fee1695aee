"""Random state for a resumable run: seed it, save every rank's, give each rank its own back.

A resumed run continues bitwise only if every stream it draws from continues: python, numpy, torch
and CUDA (dropout masks), while the loaders key their own draws by (seed, epoch, batch).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from alexrepro.distributed import DistInfo
from alexrepro.progress import console


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch: the same initial net on every rank."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def restore_rank_rng(states: list[dict[str, Any]], info: DistInfo, seed: int, step: int) -> None:
    """Give each rank back its own random state (dropout masks differ between ranks, as between images).

    Checkpoints hold every rank's state, indexed by rank. Resumed on another number of processes,
    ranks that have no saved state of their own start a fresh stream from (seed, rank, step).
    """
    if info.rank < len(states) and len(states) == info.world_size:
        restore_rng(states[info.rank])
        return
    if info.rank == 0:
        console.print(f"note: the checkpoint holds random states for {len(states)} process(es), this run has "
                      f"{info.world_size}; dropout streams restart from the seed, so the run is not bitwise "
                      "the one it continues")
    restore_rng(states[0])
    torch.manual_seed(seed + 1_000_003 * info.rank + step)


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
