"""§5's learning-rate schedule: divide by 10 when validation error stops improving, three times.

Two kinds: "plateau" (the paper's: divide the lr by `factor` when validation top-1 error has not
improved by `threshold` for `patience` epochs, at most `max_reductions` times) and "step" (divide
at fixed epoch `milestones`). The state holds how many reductions happened, never the lr itself:
the lr is always the recipe's base lr × factor^reductions, so a run resumed with a new base lr uses
it (pytorch/examples#816: the saved lr must not override the one given).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from alexrepro.recipe import ScheduleConfig


@dataclass
class PlateauState:
    """What the plateau rule remembers between epochs."""

    best: float = math.inf  # lowest validation top-1 error seen
    bad_epochs: int = 0  # epochs since the last improvement (or reduction)
    reductions: int = 0


def plateau_step(
    state: PlateauState, error: float, patience: int, threshold: float, max_reductions: int
) -> PlateauState:
    """The plateau rule after one epoch's validation error: the next state (reductions may grow by 1)."""
    if error < state.best - threshold:
        return PlateauState(best=error, bad_epochs=0, reductions=state.reductions)
    bad = state.bad_epochs + 1
    if bad >= patience and state.reductions < max_reductions:
        return PlateauState(best=state.best, bad_epochs=0, reductions=state.reductions + 1)
    return PlateauState(best=state.best, bad_epochs=bad, reductions=state.reductions)


def step_reductions(epochs_done: int, milestones: list[int]) -> int:
    """How many milestones have passed once `epochs_done` epochs are complete."""
    return sum(1 for m in milestones if epochs_done >= m)


def reductions_so_far(cfg: ScheduleConfig, epochs_done: int, plateau: PlateauState) -> int:
    """The reductions of the schedule's kind: milestones passed ("step") or the plateau rule's count."""
    if cfg.kind == "step":
        return step_reductions(epochs_done, cfg.milestones)
    return plateau.reductions


def scheduled_lr(base_lr: float, factor: float, reductions: int) -> float:
    """ε after `reductions` reductions: the base lr times factor^reductions (§5: divided by 10 each time)."""
    return base_lr * factor**reductions


class LRSchedule:
    """The recipe's schedule: call `epoch_end(epoch, val_top1_error)` after each validation."""

    def __init__(self, cfg: ScheduleConfig, base_lr: float) -> None:
        self.cfg = cfg
        self.base_lr = base_lr
        self.plateau = PlateauState()
        self.epochs_done = 0

    @property
    def reductions(self) -> int:
        """How many times the lr has been divided so far."""
        return reductions_so_far(self.cfg, self.epochs_done, self.plateau)

    @property
    def lr(self) -> float:
        """The learning rate ε for the next epoch."""
        return scheduled_lr(self.base_lr, self.cfg.factor, self.reductions)

    def epoch_end(self, epoch: int, val_top1_error: float) -> bool:
        """Record epoch `epoch` (0-based) and its validation error; True if the lr was just reduced."""
        before = self.reductions
        self.epochs_done = epoch + 1
        self.plateau = plateau_step(
            self.plateau, val_top1_error, self.cfg.patience, self.cfg.threshold, self.cfg.max_reductions
        )
        return self.reductions > before

    def state_dict(self) -> dict[str, Any]:
        p = self.plateau
        return {
            "kind": self.cfg.kind,
            "epochs_done": self.epochs_done,
            "best": p.best,
            "bad_epochs": p.bad_epochs,
            "reductions": p.reductions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters; the lr follows from the current recipe's base lr and factor."""
        self.epochs_done = int(state["epochs_done"])
        self.plateau = PlateauState(
            best=float(state["best"]), bad_epochs=int(state["bad_epochs"]), reductions=int(state["reductions"])
        )
