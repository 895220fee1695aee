"""Loaders: the paper's augmentation (§2, §4.1) on NVIDIA DALI or a PyTorch DataLoader, identical.

`make_loader` is the one entry point; `BACKENDS` is the registry of backends by name, from which
the recipe's `data.loader`, the `--loader` options and the benchmarks take their choices. Every
backend takes its crop/flip/lighting draws from `alexrepro.loaders.augment.draw_train_params`
(the one sampler), its test views from `alexrepro.loaders.presets.EvalPreset` and its float maths
from `alexrepro.loaders.augment.finish_batch`; `order.py` fixes which images each rank sees.
A new backend: a `Loader` subclass (see `base.py`) and one entry in `BACKENDS`; the contract tests
(tests/test_contracts.py) then run on it.

This module imports torch only inside `make_loader`, because DALI's worker processes import this
package to reach `dali_source` and should stay light.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from alexrepro.errors import UserError

if TYPE_CHECKING:
    import torch

    from alexrepro.loaders.base import Loader, LoaderSpec
    from alexrepro.loaders.colour import MeanImage
    from alexrepro.recipe import DataConfig

_SAID: set[tuple[str, str]] = set()


def dali_available() -> bool:
    """Whether nvidia-dali can be imported here."""
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def _torch_loader(spec: LoaderSpec) -> Loader:
    from alexrepro.loaders.torch_loader import TorchLoader

    return TorchLoader(spec)


def _dali_loader(spec: LoaderSpec) -> Loader:
    from alexrepro.loaders.dali_loader import DaliLoader

    return DaliLoader(spec)


@dataclass(frozen=True)
class Backend:
    """A loader backend: how to build it for a request, whether it can run here, and what to do if not."""

    make: Callable[[LoaderSpec], Loader]  # imports the backend when one is built (DALI workers stay light)
    available: Callable[[], bool]
    missing: str = ""  # the UserError when asked for but not available


# THE list of loader backends: recipe validation (data.loader), the --loader options and the benchmarks
# derive their choices from it. The first entry is the reference the others are held to.
BACKENDS: dict[str, Backend] = {
    "torch": Backend(_torch_loader, lambda: True),
    "dali": Backend(
        _dali_loader,
        lambda: dali_available(),  # looked up at call time (tests replace it)
        "the DALI loader needs nvidia-dali: pip install 'alexrepro[dali]', or use --loader torch",
    ),
}
KINDS = ("auto", *BACKENDS)  # "auto": the recipe's data.loader, then the hardware decides (choose_kind)


def kinds_text(kinds: tuple[str, ...] = KINDS) -> str:
    """The kinds as a sentence for help and errors: "auto, torch or dali"."""
    return f"{', '.join(kinds[:-1])} or {kinds[-1]}" if len(kinds) > 1 else kinds[0]


def choose_kind(kind: str, data_loader: str, device: torch.device) -> tuple[str, str]:
    """(backend, why): an explicit kind wins, then the recipe's data.loader; "auto" picks by hardware."""
    if kind not in KINDS:
        raise UserError(f"loader kind must be one of {', '.join(KINDS)}, got {kind!r}")
    chosen = kind if kind != "auto" else data_loader
    if chosen in BACKENDS:
        if not BACKENDS[chosen].available():
            raise UserError(BACKENDS[chosen].missing)
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
    stats: MeanImage | None = None,
) -> Loader:
    """A loader of (float32 N×3×c×c images on `device`, int64 labels) for this rank; batch_size is GLOBAL.

    train: shuffled epochs with §4.1's random crops, mirrors and PCA lighting; else the centre crop,
    or with crops="ten" the ten views (N×10×3×c×c). kind="auto" defers to data_cfg.loader, and if
    that is "auto" too takes DALI on a CUDA device with nvidia-dali installed, else PyTorch,
    printing one line on stderr saying which and why. stats: the colour statistics to use instead of
    OUT's stats.h5 (evaluation passes the checkpoint's mean).
    """
    import torch

    from alexrepro.loaders.base import LoaderSpec
    from alexrepro.progress import console

    dev = torch.device(device)
    spec = LoaderSpec(out=Path(out), split=split, data=data_cfg, batch_size=batch_size, train=train,
                      device=dev, seed=seed, rank=rank, world_size=world_size, crops=crops,
                      channels_last=channels_last, stats=stats)
    backend, why = choose_kind(kind, data_cfg.loader, dev)
    if why != "as asked" and rank == 0 and (backend, why) not in _SAID:
        _SAID.add((backend, why))  # once per process, not once per split or per rank
        console.print(f"loader: {backend} ({why})")
    return BACKENDS[backend].make(spec)


__all__ = ["BACKENDS", "KINDS", "Backend", "choose_kind", "dali_available", "kinds_text", "make_loader"]
