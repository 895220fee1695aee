"""Building a training run: devices, the set's classes and statistics, the step, schedule, loaders, resume.

`build_run(plan, info)` returns the `Run` (what stays fixed while it trains) and its `RunState` (where
it stands: epoch, batch, step, history), resumed from the plan's checkpoint when there is one. The
order of the random draws (seed, net, then each rank's own stream, then a resumed state) is the one
every checkpoint so far was made with, so that a run and its resumption agree bitwise.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from alexrepro.data.split import open_split
from alexrepro.data.stats_file import Stats, read_stats
from alexrepro.distributed import DistInfo, tower_devices
from alexrepro.errors import UserError
from alexrepro.training.checkpoint import Checkpoint, read_checkpoint, remove_stale_temps, stats_payload
from alexrepro.training.optim import apply_hyperparameters
from alexrepro.training.plan import TrainPlan
from alexrepro.training.rng import restore_rank_rng, seed_everything
from alexrepro.training.schedule import LRSchedule
from alexrepro.training.step import StepHarness, build_step


@dataclass
class RunState:
    """Where a run stands: what a checkpoint records besides the net's, optimiser's, schedule's and loader's states."""

    epoch_tally: torch.Tensor  # (loss sum, top-1 hits, top-5 hits, images) of the epoch so far, float64 on the device
    epoch: int = 0  # the epoch to run next (0-based)
    batch: int = 0  # batches of that epoch already done (a mid-epoch resume)
    step: int = 0  # updates applied
    best_top1: float = math.inf  # lowest validation top-1 error so far
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    seconds_before: float = 0.0  # training time of the sessions before this one
    started: float = field(default_factory=time.time)  # when this session started

    def seconds(self) -> float:
        """Training time over every session of the run."""
        return self.seconds_before + time.time() - self.started


@dataclass
class Run:
    """What stays fixed while a run trains: its plan, process, devices, step, schedule, loaders and data facts."""

    plan: TrainPlan
    info: DistInfo
    devices: list[str]  # what the run folder records: this process's device, or the two towers' devices
    harness: StepHarness
    schedule: LRSchedule
    train_loader: Any
    val_loader: Any
    classes: list[dict[str, Any]]
    stats: Stats
    num_val: int  # images in the validation split: validation must score exactly these

    def snapshot(self, state: RunState, epoch: int, batch: int, rng: list[dict[str, Any]]) -> Checkpoint:
        """The checkpoint of this run at (epoch, batch), with every rank's random state `rng`."""
        harness = self.harness
        return Checkpoint(
            model=harness.model.state_dict(), recipe=self.plan.recipe, classes=self.classes, epoch=epoch,
            batch=batch, step=state.step, parallel=self.plan.parallel, optimizer=harness.optimizer.state_dict(),
            scaler=harness.scaler.state_dict() if harness.scaler.is_enabled() else None,
            schedule=self.schedule.state_dict(), rng=rng, loader=self.train_loader.state_dict(),
            history=state.history, running=state.epoch_tally.cpu().clone(), seconds=state.seconds(),
            best_top1=state.best_top1, stats=stats_payload(self.stats), set_identity=self.plan.set_identity,
        )

    def close(self) -> None:
        self.train_loader.close()
        self.val_loader.close()


def build_run(plan: TrainPlan, info: DistInfo, started: float) -> tuple[Run, RunState]:
    """The run this process trains, and its state: fresh, or resumed from `plan.resume_path`."""
    from alexrepro.loaders import make_loader

    recipe, out = plan.recipe, plan.out
    device, devices = run_devices(plan, info)
    classes, stats, num_val = open_split(out, "train").classes, read_stats(out), len(open_split(out, "val"))
    seed_everything(recipe.run.seed)  # §5's initialisation, the same on every rank
    towers = (torch.device(devices[0]), torch.device(devices[1])) if plan.parallel == "model" else None
    harness = build_step(recipe, device, world_size=info.world_size, model_devices=towers)
    schedule = LRSchedule(recipe.schedule, recipe.optim.lr)
    torch.manual_seed(recipe.run.seed + info.rank)  # dropout masks differ between ranks, as between images

    def loader(split: str, train: bool) -> Any:
        return make_loader(out, split, recipe.data, recipe.optim.batch_size, train=train, device=harness.device,
                           seed=recipe.run.seed, rank=info.rank, world_size=info.world_size, crops="center",
                           kind=recipe.data.loader, channels_last=recipe.run.channels_last)

    run = Run(plan, info, devices, harness, schedule, loader("train", True), loader("val", False), classes,
              stats, num_val)
    state = RunState(torch.zeros(4, dtype=torch.float64, device=harness.device), started=started)
    try:
        if plan.resume_path is not None:
            resume(run, state, read_checkpoint(plan.resume_path))
    except BaseException:
        run.close()
        raise
    apply_hyperparameters(harness.optimizer, recipe.optim, schedule.lr)  # the recipe's values, never the saved ones
    harness.wrap(data_parallel=plan.parallel == "data", compile_=recipe.run.compile)
    if info.is_main:
        remove_stale_temps(plan.run_dir)
    return run, state


def run_devices(plan: TrainPlan, info: DistInfo) -> tuple[torch.device, list[str]]:
    """(this process's device, the devices the run folder records: two under model parallelism)."""
    if plan.device_type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last): let cuDNN pick the fastest kernels
    else:
        device = torch.device("cpu")
    if plan.parallel != "model":
        return device, [str(device)]
    return device, list(tower_devices(plan.device_type))


def resume(run: Run, state: RunState, saved: Checkpoint) -> None:
    """Continue from `saved`: weights, optimiser, scaler, schedule, loader position, history and RNG."""
    harness = run.harness
    load_weights(harness.model, saved.model)
    try:
        harness.optimizer.load_state_dict(saved.optimizer)
    except ValueError as e:
        raise UserError(f"the optimiser state does not fit ({e}); resume with the same recipe and --parallel") from None
    run.schedule.load_state_dict(saved.schedule)
    if harness.scaler.is_enabled() and saved.scaler:
        harness.scaler.load_state_dict(saved.scaler)
    run.train_loader.load_state_dict(saved.loader)
    state.epoch, state.batch, state.step = saved.epoch, saved.batch, saved.step
    state.best_top1, state.history = saved.best_top1, list(saved.history)
    state.epoch_tally = saved.running.to(device=harness.device, dtype=torch.float64).clone()
    state.seconds_before = saved.seconds
    restore_rank_rng(saved.rng, run.info, run.plan.recipe.run.seed, state.step)


def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's weights; a UserError naming the layers when a --force'd recipe changed the net."""
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        names = re.findall(r"(?:size mismatch for|Missing key\(s\) in state_dict:) \"?([\w.]+)", str(e))
        detail = ", ".join(names[:4]) or " ".join(str(e).split())[:200]
        raise UserError(f"the checkpoint's weights do not fit the recipe's net ({detail}); resume without "
                        "changing model.* or data.crop_size, or start a new --run") from None
