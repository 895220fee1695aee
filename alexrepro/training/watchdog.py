"""Watchdogs: a non-finite loss stops the run (StepGuard); the paper-init stall at ln(classes) is reported.

§5's initialisation (N(0, 0.01) weights, biases 1 in conv2/4/5 and fc6/7) is reported by
reproductions to stall with the loss stuck at ln(1000) ≈ 6.9, the loss of a uniform guess.
Caffe's reference model changed fc6/fc7 to std 0.005 and biases to 0.1: the `caffe-init` recipe.
"""

from __future__ import annotations

import math

import torch

STALL_TOLERANCE = 0.05  # a loss within 5% of ln(C) counts as "still guessing uniformly"


def uniform_loss(num_classes: int) -> float:
    """Cross-entropy of a uniform prediction over C classes: ln C."""
    return math.log(num_classes)


def is_stalled(loss: float, num_classes: int, tolerance: float = STALL_TOLERANCE) -> bool:
    """True when the loss is within tolerance·ln(C) of ln(C)."""
    chance = uniform_loss(num_classes)
    return abs(loss - chance) <= tolerance * chance


def nonfinite_message(step: int, loss: float, lr: float, checkpoint: str | None) -> str:
    """The one-line message for a diverged run."""
    kept = f"; the last good state is in {checkpoint}" if checkpoint else ""
    return (
        f"the training loss became {loss} at step {step} (lr {lr:g}): the run diverged{kept}. "
        "Lower the learning rate (--set optim.lr=...) or check the data, then start again or "
        "resume with --resume --force"
    )


def stall_message(step: int, loss: float, num_classes: int, init: str) -> str:
    """The one-line report of the initialisation stall, with the suggested fix."""
    fix = (
        "try the Caffe initialisation: --recipe caffe-init (or --set model.init=caffe)"
        if init == "paper"
        else "check the learning rate and the data"
    )
    return (
        f"after {step} steps the loss is {loss:.3f}, still near ln({num_classes}) = "
        f"{uniform_loss(num_classes):.3f}: the net is not learning (the paper-init stall); {fix}"
    )


class StallWatch:
    """Fires once, at the first check at or after `stall_steps` steps, if the loss is near ln(C)."""

    def __init__(self, num_classes: int, stall_steps: int) -> None:
        self.num_classes = num_classes
        self.stall_steps = stall_steps
        self.checked = stall_steps <= 0

    def check(self, step: int, mean_loss: float) -> bool:
        """True exactly once: when the stall is first seen after `stall_steps` steps."""
        if self.checked or step < self.stall_steps:
            return False
        self.checked = True
        return is_stalled(mean_loss, self.num_classes)


class StepGuard:
    """The NaN watchdog without a host–device synchronisation per step.

    Each step's loss sum, all-reduced so that every rank sees the same value, is checked on the device:
    the first step whose loss is not finite is recorded, and from then on every update is refused on the
    device (PaperSGD's `ok`), so the weights stay those from before that step, the last good state. The host
    reads the record only where it reads the metrics anyway: every run.log_every steps, before a
    checkpoint and at the end of an epoch.
    """

    def __init__(self, device: torch.device) -> None:
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet, else that step (1-based)
        self.bad_loss = torch.zeros((), dtype=torch.float64, device=device)  # that step's mean loss

    def check(self, tally: torch.Tensor, step: int) -> torch.Tensor:
        """A device bool: True when step `step` (1-based) may update, i.e. its loss and every earlier one is finite."""
        clean = self.first_bad == 0
        ok = torch.isfinite(tally[0]) & clean
        first = clean & ~ok
        self.first_bad = torch.where(first, step, self.first_bad)
        self.bad_loss = torch.where(first, tally[0] / tally[3], self.bad_loss)
        return ok

    def bad_step(self) -> tuple[int, float] | None:
        """(first step with a non-finite loss, its mean loss), or None; reads the device (a synchronisation)."""
        step = int(self.first_bad)
        return (step, float(self.bad_loss)) if step else None
