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
    """SGD with §5's update rule; state holds each parameter's velocity v."""

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's Optimizer.step signature
        """Apply §5's rule to every parameter that has a gradient (in place, same maths as paper_update)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                v = state["velocity"]
                v.mul_(mu)
                if wd != 0:
                    v.add_(p, alpha=-wd * lr)
                v.add_(p.grad, alpha=-lr)
                p.add_(v)
        return loss


def decay_groups(model: nn.Module, weight_decay: float, decay_on: str) -> list[dict]:
    """Parameter groups: "weights" decays only conv/linear weights (tensors of ≥2 dims), "all" everything.

    Biases are 1-D; cuda-convnet and Caffe did not decay them, and §5 writes the rule for "weight w".
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if decay_on == "all":
        return [{"params": params, "weight_decay": weight_decay}]
    if decay_on != "weights":
        raise ValueError(f"weight_decay_on must be 'weights' or 'all', got {decay_on!r}")
    decayed = [p for p in params if p.dim() >= 2]
    plain = [p for p in params if p.dim() < 2]
    groups = [{"params": decayed, "weight_decay": weight_decay}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser the recipe names: §5's rule ("paper") or torch.optim.SGD ("torch-sgd")."""
    groups = decay_groups(model, cfg.weight_decay, cfg.weight_decay_on)
    if cfg.name == "paper":
        return PaperSGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.name == "torch-sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    raise ValueError(f"unknown optimiser {cfg.name!r}")


def apply_hyperparameters(optimizer: torch.optim.Optimizer, cfg: OptimConfig, lr: float) -> None:
    """Set lr, momentum and weight decay on every group from the recipe (after a state load).

    torch's Optimizer.load_state_dict restores the saved hyper-parameters; a resumed run must use
    the ones it was given (pytorch/examples#816), so they are written back here.
    """
    groups = optimizer.param_groups
    decays = [cfg.weight_decay] * len(groups) if cfg.weight_decay_on == "all" else [cfg.weight_decay, 0.0]
    for group, wd in zip(groups, decays, strict=False):
        group["lr"] = lr
        group["momentum"] = cfg.momentum
        group["weight_decay"] = wd


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate ε of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
