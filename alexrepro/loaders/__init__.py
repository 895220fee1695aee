"""Loaders: the paper's augmentation (§2, §4.1) on NVIDIA DALI or a PyTorch DataLoader, identical.

`make_loader` is the one entry point. Both backends take their crop/flip/lighting draws from
`alexrepro.loaders.augment.draw_train_params` (the one sampler) and their float maths from
`alexrepro.loaders.augment.finish_batch`; `order.py` fixes which images each rank sees.

This module imports torch only inside `make_loader`, because DALI's worker processes import this
package to reach `dali_source` and should stay light.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from alexrepro.errors import UserError

if TYPE_CHECKING:
    import torch

    from alexrepro.loaders.base import Loader
    from alexrepro.recipe import DataConfig

KINDS = ("auto", "torch", "dali")
_SAID: set[tuple[str, str]] = set()


def dali_available() -> bool:
    """Whether nvidia-dali can be imported here."""
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def choose_kind(kind: str, data_loader: str, device: torch.device) -> tuple[str, str]:
    """(backend, why): an explicit kind wins, then the recipe's data.loader; "auto" picks by hardware."""
    if kind not in KINDS:
        raise UserError(f"loader kind must be one of {', '.join(KINDS)}, got {kind!r}")
    chosen = kind if kind != "auto" else data_loader
    if chosen == "dali" and not dali_available():
        raise UserError("the DALI loader needs nvidia-dali: pip install 'alexrepro[dali]', or use --loader torch")
    if chosen in ("torch", "dali"):
        return chosen, "as asked"
    if device.type != "cuda":
        return "torch", f"the device is {device.type}, and DALI's speed-up is GPU decoding"
    if not dali_available():
        return "torch", "nvidia-dali is not installed (pip install 'alexrepro[dali]')"
    return "dali", "a CUDA device and nvidia-dali are available"


def make_loader(
    out: str | os.PathLike[str],
    split: str,
    data_cfg: DataConfig,
    batch_size: int,
    *,
    train: bool,
    device: torch.device | str,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    crops: str = "center",
    kind: str = "auto",
    channels_last: bool = False,
) -> Loader:
    """A loader of (float32 N×3×c×c images on `device`, int64 labels) for this rank; batch_size is GLOBAL.

    train: shuffled epochs with §4.1's random crops, mirrors and PCA lighting; else the centre crop,
    or with crops="ten" the ten views (N×10×3×c×c). kind="auto" defers to data_cfg.loader, and if
    that is "auto" too takes DALI on a CUDA device with nvidia-dali installed, else PyTorch,
    printing one line on stderr saying which and why.
    """
    import torch

    from alexrepro.loaders.base import LoaderSpec
    from alexrepro.progress import console

    dev = torch.device(device)
    spec = LoaderSpec(out=Path(out), split=split, data=data_cfg, batch_size=batch_size, train=train,
                      device=dev, seed=seed, rank=rank, world_size=world_size, crops=crops,
                      channels_last=channels_last)
    backend, why = choose_kind(kind, data_cfg.loader, dev)
    if why != "as asked" and rank == 0 and (backend, why) not in _SAID:
        _SAID.add((backend, why))  # once per process, not once per split or per rank
        console.print(f"loader: {backend} ({why})")
    if backend == "dali":
        from alexrepro.loaders.dali_loader import DaliLoader

        return DaliLoader(spec)
    from alexrepro.loaders.torch_loader import TorchLoader

    return TorchLoader(spec)


__all__ = ["KINDS", "choose_kind", "dali_available", "make_loader"]
