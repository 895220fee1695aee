"""One training step of §5, the same in `alexrepro train`, `bench train` and `bench profile`.

`build_step(recipe, device)` builds what a step needs from a recipe, in the order the training loop
always has (net, its placement and memory format, optimiser, scaler, NaN guard): a `StepHarness`.
`harness.step(images, labels, step)` is `train_step`: forward, loss, top-k tally, the guard's
device-side check, backward and §5's update, queued without one host read of a device value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from alexrepro import distributed
from alexrepro.recipe import Recipe
from alexrepro.runtime import autocast_dtype
from alexrepro.topk import topk_for, true_class_rank
from alexrepro.training.optim import PaperSGD, make_optimizer
from alexrepro.training.watchdog import StepGuard


def autocast(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to `dtype` on the device's type; plain float32 (autocast off) when dtype is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def place_model(model: nn.Module, device: torch.device, channels_last: bool,
                towers: tuple[torch.device, torch.device] | None = None) -> nn.Module:
    """The net on `device` (or its two towers on `towers`, §3.2), its 4-D weights in channels-last order when asked."""
    if towers is not None:
        from alexrepro.nets.alexnet import model_parallel

        model = model_parallel(model, towers)
    else:
        model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


@dataclass
class StepHarness:
    """What one training step needs, built by `build_step`; `net` is what is called, `model` what is saved."""

    model: nn.Module  # the plain net: what a checkpoint stores
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None  # None: float32, as in the paper
    topk: tuple[int, int]
    device: torch.device  # where the images, tallies and guard live (the first tower's under model parallelism)
    guard: StepGuard
    world_size: int = 1
    net: nn.Module | None = None  # `model`, or DDP / torch.compile around it once `wrap` ran

    def __post_init__(self) -> None:
        if self.net is None:
            self.net = self.model

    def wrap(self, data_parallel: bool = False, compile_: bool = False) -> None:
        """Call the net through DDP and/or torch.compile (after any state is loaded into `model`)."""
        net = self.model
        if data_parallel:
            device_ids = [self.device] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=device_ids)
        self.net = torch.compile(net) if compile_ else net

    def step(self, images: torch.Tensor, labels: torch.Tensor, step: int = 1) -> torch.Tensor:
        """`train_step` on this harness: the step's tally on the device, zeros if the guard refused it."""
        return train_step(self.net, images, labels, self.optimizer, self.scaler, self.amp_dtype, self.topk,
                          self.device, self.world_size, self.guard, step)


def build_step(recipe: Recipe, device: torch.device, *, precision: str | None = None,
               channels_last: bool | None = None, world_size: int = 1,
               model_devices: tuple[torch.device, torch.device] | None = None) -> StepHarness:
    """The recipe's net, optimiser, scaler and guard on `device` (seed the RNG first: the net's init draws).

    `precision` and `channels_last` default to the recipe's run section; `model_devices` splits the net's
    two towers over two devices (§3.2), the first of which then holds the inputs and tallies.
    """
    from alexrepro.nets import build_net, set_run_kernels

    precision = recipe.run.precision if precision is None else precision
    channels_last = recipe.run.channels_last if channels_last is None else channels_last
    model = place_model(build_net(recipe.model, recipe.data.crop_size), device, channels_last, model_devices)
    set_run_kernels(model, recipe.run)  # after model_parallel, which builds its own layers
    device = model_devices[0] if model_devices is not None else device
    optimizer = make_optimizer(model, recipe.optim)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    return StepHarness(model, optimizer, scaler, autocast_dtype(precision), topk_for(recipe.model.num_classes),
                       device, StepGuard(device), world_size)


def train_step(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None, topk: tuple[int, int],
               device: torch.device, world_size: int = 1, guard: StepGuard | None = None, step: int = 1,
               ) -> torch.Tensor:
    """One step of §5, queued without waiting for the device: the step's (loss sum, top-1 hits, top-5 hits,
    images) over every rank, on the device; all zeros for a step the guard refused."""
    losses, tally = forward_and_tally(net, images, labels, amp_dtype, topk, device)
    ok = guard.check(tally, step) if guard is not None else None
    backward_and_update(losses, tally[3], world_size, optimizer, scaler, ok)
    return tally if ok is None else torch.where(ok, tally, torch.zeros_like(tally))


def forward_and_tally(net: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      amp_dtype: torch.dtype | None, topk: tuple[int, int], device: torch.device,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass: per-image losses, and (loss sum, top-1 hits, top-5 hits, images) summed over ranks,
    left on `device` (float64)."""
    with autocast(device, amp_dtype):
        logits = net(images)
    losses = F.cross_entropy(logits.float(), labels, reduction="none")
    ranks = true_class_rank(logits.detach().float(), labels)
    count = torch.full((), float(len(labels)), dtype=torch.float64, device=losses.device)
    tally = torch.stack([losses.detach().sum().double(), (ranks < topk[0]).sum().double(),
                         (ranks < topk[1]).sum().double(), count])
    return losses, distributed.all_reduce_sum(tally.to(device))


def backward_and_update(losses: torch.Tensor, global_images: float | torch.Tensor, world_size: int,
                        optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                        ok: torch.Tensor | None = None) -> None:
    """Backward pass and §5's update on the mean loss over the global batch; `ok` False refuses the update.

    PaperSGD takes `ok` on the device; torch.optim.SGD (the comparison optimiser) is skipped from the
    host, which waits for the device there.
    """
    # Sum over this rank's images ÷ the global batch × world: DDP's average is then the global mean.
    if world_size > 1:
        scale = world_size / global_images  # a device tensor in the loop: no host read
        loss = losses.sum() * (scale.to(losses.dtype) if isinstance(scale, torch.Tensor) else scale)
    else:
        loss = losses.mean()
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if ok is None:
        scaler.step(optimizer)
    elif isinstance(optimizer, PaperSGD):
        scaler.step(optimizer, ok=ok)
    elif bool(ok):
        scaler.step(optimizer)
    scaler.update()
