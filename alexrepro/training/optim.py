"""§5's stochastic gradient descent, with the paper's own update rule as its own optimiser.

    v ← μ·v − λ·ε·w − ε·∂L/∂w        w ← w + v

ε (the learning rate) sits inside the velocity, so a change of ε affects only the steps after it.
torch.optim.SGD keeps v ← μ·v + g + λ·w and steps w ← w − ε·v: with a constant ε the two rules give
the same weights, but after an lr change SGD's velocity still carries the old gradients at the new ε.
`optim.name = "torch-sgd"` selects torch.optim.SGD for comparison.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from alexrepro.recipe import OptimConfig


def paper_update(
    w: torch.Tensor, v: torch.Tensor, g: torch.Tensor, lr: float, momentum: float, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of §5's rule, out of place: (new weights, new velocity)."""
    v_new = momentum * v - weight_decay * lr * w - lr * g  # §5: v ← 0.9·v − 0.0005·ε·w − ε·g
    return w + v_new, v_new  # §5: w ← w + v


class PaperSGD(torch.optim.Optimizer):
    """SGD with §5's update rule, run as one fused kernel per device that a device-side flag can skip.

    §5's velocity v is kept in gradient units, u = −v/ε, because then the rule is exactly torch's
    fused SGD kernel (one pass over weights, gradients and u, instead of four per tensor):

        u ← μ·u + g + λ·w        w ← w − ε·u

    Substituting v = −ε·u gives v ← μ·v − λ·ε·w − ε·g and w ← w + v, §5's rule. ε sits inside v: when ε
    changes, u is first multiplied by ε_old/ε_new (`group["buffer_lr"]` is the ε it is expressed in), which
    leaves v as it was, so the old gradients keep their old ε (torch.optim.SGD's velocity does not).
    `velocity(p)` returns v; the checkpoint holds u and `buffer_lr`.

    `step(ok=t)` takes a boolean tensor on the device: where it is False the kernel leaves weights and
    velocities untouched, so a non-finite loss can be refused without the host waiting for the device.
    GradScaler's `found_inf` (fp16) is honoured the same way (`_step_supports_amp_scaling`), and the
    gradients are unscaled inside the same kernel.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self._step_supports_amp_scaling = True  # GradScaler hands over grad_scale/found_inf, no host sync

    def velocity(self, p: torch.Tensor) -> torch.Tensor:
        """§5's v for parameter p (zeros before its first step)."""
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                state = self.state.get(p, {})
                if "buffer" not in state:
                    return torch.zeros_like(p)
                return -group["buffer_lr"] * state["buffer"]
        raise KeyError("not a parameter of this optimiser")

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a saved state; a checkpoint that kept §5's v itself ("velocity") is converted to u = −v/ε."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "velocity" in state:
                    state["buffer"] = -state.pop("velocity") / group["lr"]
            group.setdefault("buffer_lr", group["lr"])

    @torch.no_grad()
    def step(self, closure=None, ok: torch.Tensor | None = None):  # noqa: ANN001, ANN201 - torch's signature
        """Apply §5's rule to every parameter that has a gradient, unless `ok` (a bool tensor) is False."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._update(ok)
        return loss

    def _update(self, ok: torch.Tensor | None) -> None:
        """The update itself (under step's no_grad): each group's parameters in one fused kernel per device."""
        grad_scale = getattr(self, "grad_scale", None)  # set by GradScaler.step (fp16)
        skip = getattr(self, "found_inf", None)
        if ok is not None:
            refused = (~ok).float()
            skip = refused if skip is None else torch.maximum(skip.float(), refused.to(skip.device))
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            by_device: dict[torch.device, tuple[list, list, list]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "buffer" not in state:
                    state["buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                elif state["buffer"].stride() != p.stride():  # resumed with another run.channels_last
                    state["buffer"] = _with_strides_of(p, state["buffer"])
                ps, gs, us = by_device.setdefault(p.device, ([], [], []))
                ps.append(p)
                gs.append(p.grad if p.grad.stride() == p.stride() else _with_strides_of(p, p.grad))
                us.append(state["buffer"])
            if not by_device:
                continue
            buffer_lr = group.get("buffer_lr", lr)
            for device, (ps, gs, us) in by_device.items():
                if buffer_lr != lr:  # ε changed: express u in the new ε's units (v itself is unchanged)
                    torch._foreach_mul_(us, buffer_lr / lr)
                torch._fused_sgd_(
                    ps, gs, us, weight_decay=wd, momentum=mu, lr=lr, dampening=0.0, nesterov=False,
                    maximize=False, is_first_step=False,
                    grad_scale=None if grad_scale is None else grad_scale.to(device),
                    found_inf=None if skip is None else skip.to(device),
                )
            group["buffer_lr"] = lr


def _with_strides_of(param: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """`t`'s values laid out as `param` is: the fused kernel's CUDA path needs parameters, gradients and
    buffers with equal strides (autograd's gradients match; a gradient set by hand or a buffer saved under
    another memory format may not)."""
    return torch.empty_like(param).copy_(t)


def group_settings(weight_decay: float, decay_on: str, bias_lr_mult: float = 1.0) -> tuple[dict, dict]:
    """(weights', biases') weight decay and `lr_mult`, the one rule `decay_groups` and
    `apply_hyperparameters` both follow.

    Biases are 1-D; cuda-convnet and Caffe did not decay them, and §5 writes the rule for "weight w".
    `lr_mult` is a group's ε as a multiple of the schedule's: 1 for weights, `bias_lr_mult` for biases
    (1 in §5; Caffe's reference models use 2).
    """
    if decay_on not in ("weights", "all"):
        raise ValueError(f"weight_decay_on must be 'weights' or 'all', got {decay_on!r}")
    return ({"weight_decay": weight_decay, "lr_mult": 1.0},
            {"weight_decay": weight_decay if decay_on == "all" else 0.0, "lr_mult": bias_lr_mult})


def decay_groups(model: nn.Module, weight_decay: float, decay_on: str, bias_lr_mult: float = 1.0) -> list[dict]:
    """Parameter groups: "weights" decays only conv/linear weights (tensors of ≥2 dims), "all" everything;
    one group when weights and biases follow the same rule, else weights then biases (`group_settings`)."""
    weights, biases = group_settings(weight_decay, decay_on, bias_lr_mult)
    params = [p for p in model.parameters() if p.requires_grad]
    if weights == biases:
        return [{"params": params, **weights}]
    groups = [{"params": [p for p in params if p.dim() >= 2], **weights}]
    plain = [p for p in params if p.dim() < 2]
    if plain:
        groups.append({"params": plain, **biases})
    return groups


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser the recipe names: §5's rule ("paper") or torch.optim.SGD ("torch-sgd")."""
    groups = decay_groups(model, cfg.weight_decay, cfg.weight_decay_on, cfg.bias_lr_mult)
    for group in groups:
        group["lr"] = cfg.lr * group["lr_mult"]
    if cfg.name == "paper":
        return PaperSGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "torch-sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimiser {cfg.name!r}")


def apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: OptimConfig, lr: float) -> None:
    """Set lr, momentum, weight decay and lr multiples on every group from the recipe (after a state load).

    torch's Optimizer.load_state_dict restores the saved hyper-parameters; a resumed run must use
    the ones it was given (pytorch/examples#816), so they are written back here. The groups are those
    of `decay_groups`: one (everything) or two (weights, then biases).
    """
    # one group: everything (both rules alike) or the weights of a net without biases; else weights, biases
    settings = group_settings(cfg.weight_decay, cfg.weight_decay_on, cfg.bias_lr_mult)
    for group, s in zip(optimizer.param_groups, settings, strict=False):
        group.update(s, lr=lr * s["lr_mult"], momentum=cfg.momentum)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the schedule's learning rate ε: each group gets ε × its `lr_mult`."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
