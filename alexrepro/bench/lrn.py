"""Benchmark the LRN layers (§3.3) alone: each implementation's forward + backward against the memory floor.

On the inputs the recipe's net gives its LRN layers (captured by a forward hook, in the precision and
memory format of the run), one forward and one backward of every layer, timed per implementation:
  torch         alexrepro.nets.lrn's `_LRN` (window sums as shifted adds, the backward written out)
  autograd      the same formula through autograd (square, average pool, pow, divide)
  triton        the fused kernels of alexrepro.nets.lrn_triton, the backward recomputing D (CUDA only)
  triton_saved  the same, the forward saving D in float32 for the backward (CUDA only)
and, where the Triton kernels run, their forward + backward (recomputing D, no autograd) at each tile of
alexrepro.nets.lrn_triton.TILES (activations and warps per program) beside the default tile.
The floor is the least memory traffic of a fused LRN: forward reads a and writes b, backward reads a and
the gradient and writes ∂L/∂a (5 values per activation: 10 bytes in bf16); saving D adds 8 bytes (a
float32 written and read back). It is divided by the device's measured copy bandwidth, and each
implementation's time is reported as a multiple of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from alexrepro.bench.timing import check_step_options, sig, synthetic_batch, time_interleaved
from alexrepro.runtime import synchronize

VALUES_MOVED = 5  # a and b forward; a, ∂L/∂b and ∂L/∂a backward
SAVED_D_BYTES = 8  # D as float32: written forward, read backward


def copy_bandwidth(device: torch.device, megabytes: int | None = None, seconds: float = 0.3) -> float:
    """Measured bytes per second of a device-to-same-device copy (bytes read + bytes written)."""
    n = (megabytes or (1024 if device.type == "cuda" else 128)) << 20
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or best == float("inf"):
        synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n / best


def lrn_inputs(model: torch.nn.Module, images: torch.Tensor, amp: torch.dtype | None) -> list[tuple[Any, torch.Tensor]]:
    """(layer, its input) for every LocalResponseNorm of `model` on `images`, as a forward under autocast gives them."""
    from alexrepro.nets.lrn import LocalResponseNorm
    from alexrepro.training.step import autocast

    inputs: list[tuple[LocalResponseNorm, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda m, a: inputs.append((m, a[0].detach().clone())))
             for m in model.modules() if isinstance(m, LocalResponseNorm)]
    was_training = model.training
    try:
        with torch.no_grad(), autocast(images.device, amp):
            model.eval()(images)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return inputs


def implementations(inputs: list[tuple[Any, torch.Tensor]]) -> dict[str, Callable[[Any, torch.Tensor], torch.Tensor]]:
    """The LRN implementations to time on these inputs: the Triton ones only where they run on a GPU."""
    from alexrepro.nets import lrn

    def layer_call(fn: Callable[..., torch.Tensor], **kw: Any) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        return lambda m, x: fn(x, m.size, m.alpha, m.beta, m.k, m.convention, m.groups, **kw)

    def fused(save: bool) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        def run(m: Any, x: torch.Tensor) -> torch.Tensor:
            alpha = lrn.effective_alpha(m.alpha, m.size, m.convention)
            return lrn.lrn_triton.fused_local_response_norm(x, m.size, alpha, m.beta, m.k, m.groups, save)
        return run

    found = {"torch": layer_call(lrn.local_response_norm, kernel="torch"),
             "autograd": layer_call(lrn.local_response_norm_autograd)}
    fits = lrn.lrn_triton is not None and all(
        x.is_cuda and lrn.lrn_triton.unsupported(x, lrn.effective_alpha(m.alpha, m.size, m.convention), m.k) is None
        for m, x in inputs)
    if fits:  # (under TRITON_INTERPRET=1 the CPU runs them too, far too slowly to time)
        found |= {"triton": fused(False), "triton_saved": fused(True)}
    return found


def lrn_timings(model: torch.nn.Module, images: torch.Tensor, amp: torch.dtype | None, steps: int = 3,
                rounds: int = 3, tiles: bool = False) -> dict[str, Any]:
    """Seconds per forward + backward of the net's LRN layers on their real inputs, per implementation, with
    the bytes a fused LRN moves at the least and that floor in seconds at the measured copy bandwidth; with
    `tiles`, where the Triton kernels run, `tile_timings` besides."""

    inputs = lrn_inputs(model, images, amp)
    if not inputs:
        return {"layers": 0}

    def run(fn: Callable[[Any, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            for m, x in inputs:
                x.requires_grad_(True)
                fn(m, x).backward(torch.ones_like(x))
                x.grad = None

        return step

    device = images.device
    secs = time_interleaved({name: run(fn) for name, fn in implementations(inputs).items()}, steps, 1, rounds, device)
    values = sum(x.numel() for _, x in inputs)
    item = inputs[0][1].element_size()
    moved = {"triton": VALUES_MOVED * item * values, "triton_saved": (VALUES_MOVED * item + SAVED_D_BYTES) * values}
    bandwidth = copy_bandwidth(device)
    floor = moved["triton"] / bandwidth
    by_tile = tile_timings(inputs, steps, rounds, floor) if tiles and "triton" in secs else None
    return {"layers": len(inputs), "shapes": [list(x.shape) for _, x in inputs], "dtype": str(inputs[0][1].dtype),
            "values": values, "seconds_forward_backward": {k: sig(v) for k, v in secs.items()},
            "speedup_vs_autograd": {k: sig(secs['autograd'] / v) for k, v in secs.items() if k != "autograd"},
            "bytes_forward_backward": moved, "bandwidth_gb_per_s": sig(bandwidth / 1e9),
            "floor_seconds": sig(floor),
            "times_floor": {k: sig(v / floor) for k, v in secs.items()},
            **({} if by_tile is None else {"tiles": by_tile})}


def tile_name(tile: tuple[int, int]) -> str:
    """"1024x4": activations per program × warps per program."""
    return f"{tile[0]}x{tile[1]}"


def tile_timings(inputs: list[tuple[Any, torch.Tensor]], steps: int, rounds: int, floor: float) -> dict[str, Any]:
    """Seconds per forward + backward kernel launch of every LRN layer (D recomputed, no autograd) at each tile
    of TILES, the default first, and as multiples of `floor`; the fastest tile, and its time as a fraction of
    the default's."""
    from alexrepro.nets import lrn
    from alexrepro.nets.lrn_triton import TILE, TILES, launch_backward, launch_forward

    # each layer's arguments and incoming gradient made once, outside the timed launches
    calls = [(x, torch.ones_like(x), (m.size, lrn.effective_alpha(m.alpha, m.size, m.convention), m.beta, m.k,
                                      m.groups)) for m, x in inputs]

    def run(tile: tuple[int, int]) -> Callable[[], None]:
        def step() -> None:
            for x, grad, args in calls:
                launch_forward(x, *args, False, tile)
                launch_backward(grad, x, None, *args, tile)
        return step

    order = [TILE] + [t for t in TILES if t != TILE]
    secs = time_interleaved({tile_name(t): run(t) for t in order}, steps, 1, rounds, inputs[0][1].device)
    best = min(secs, key=secs.__getitem__)
    return {"default": tile_name(TILE), "seconds_forward_backward": {k: sig(v) for k, v in secs.items()},
            "times_floor": {k: sig(v / floor) for k, v in secs.items()},
            "best": best, "best_vs_default": sig(secs[best] / secs[tile_name(TILE)])}


def bench_lrn(recipe: str = "paper", overrides: tuple[str, ...] = (), batch_size: int | None = None,
              device: str = "cpu", precision: str = "fp32", channels_last: bool = False, steps: int = 10,
              rounds: int = 3) -> dict[str, Any]:
    """`lrn_timings` on the recipe's net (seeded 0) and a synthetic batch, as `bench train` runs it, with the
    Triton kernels' tiles timed where they run."""
    from alexrepro.nets import build_net
    from alexrepro.recipe_reader import load_recipe
    from alexrepro.runtime import autocast_dtype, resolve_device
    from alexrepro.training.step import place_model

    check_step_options(precision, batch_size, steps)
    dev = resolve_device(device)
    loaded = load_recipe(recipe, list(overrides))
    n = batch_size or loaded.optim.batch_size
    images, _ = synthetic_batch(n, loaded.data.crop_size, loaded.model.num_classes, dev, channels_last)
    torch.manual_seed(0)
    model = place_model(build_net(loaded.model, loaded.data.crop_size), dev, channels_last)
    report = lrn_timings(model, images, autocast_dtype(precision), steps=steps, rounds=rounds, tiles=True)
    return {"recipe": loaded.name, "batch_size": n, "device": str(dev), "precision": precision,
            "channels_last": channels_last, "steps": steps, "rounds": rounds, **report}
