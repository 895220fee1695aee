"""What every `alexrepro bench` of a step shares: the option checks, a synthetic batch, the device's matmul
rate, and loops timed in turns (the best round of each)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from alexrepro.errors import UserError
from alexrepro.runtime import autocast_dtype, synchronize


def sig(x: float) -> float:
    """x to 4 significant digits, as the benchmarks report figures (ratios far from 1 keep their digits, as
    rounding to places would not)."""
    return float(f"{x:.4g}")


def matmul_rate(device: torch.device, precision: str, n: int | None = None, seconds: float = 0.5) -> float:
    """Measured multiply-add rate (FLOP/s, 2 per multiply-add) of a square matmul in the precision."""
    n = n or (8192 if device.type == "cuda" else 1024)
    dtype = autocast_dtype(precision) or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
        if device.type == "cuda" and count % 10:
            continue
        synchronize(device)
    synchronize(device)
    return 2.0 * n**3 * count / (time.perf_counter() - t0)


def time_interleaved(loops: dict[str, Callable[[], Any]], steps: int, warmup: int, rounds: int,
                     device: torch.device) -> dict[str, float]:
    """Seconds per step of each loop: best of `rounds` rounds of `steps` steps, the loops taking turns.

    Taking turns within each round, and the best round of each, keeps a busy machine's noise from
    landing on one loop only, so the ratios between loops stay meaningful.
    """
    for step in loops.values():
        for _ in range(warmup):
            step()
    best = {name: float("inf") for name in loops}
    for _ in range(rounds):
        for name, step in loops.items():
            synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            synchronize(device)
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    return best


def check_step_options(precision: str, batch_size: int | None, steps: int) -> None:
    """The option checks `bench train` and `bench profile` share (a UserError for each bad one)."""
    autocast_dtype(precision)  # a UserError for an unknown precision
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")


def synthetic_batch(n: int, crop: int, classes: int, device: torch.device,
                    channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch of n random crop×crop images (about the spread of mean-subtracted pixels) and labels."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    images = (torch.randn(n, 3, crop, crop, generator=gen) * 50).to(device).contiguous(memory_format=fmt)
    return images, torch.randint(0, classes, (n,), generator=gen).to(device)
