"""The training loop of §5, top to bottom in `train()`; `run_training()` starts it where the plan says.

`alexrepro.training.plan.plan_training(TrainOptions)` resolves the request into a `TrainPlan`;
`run_training` then runs `train` in this process, in N spawned processes (`--gpus N`, or `--procs N`
on the CPU) or in a process torchrun started. `train` builds the run (training/build.py), then for each
epoch: `train_one_epoch`, `validate`, `record_epoch`, `save_run_state`. What the run tells on the way
(metrics, log lines, progress, TensorBoard, stall warnings) goes through one `RunReporter`.

The run folder is held for the whole run (training/run_folder.py). SIGINT, SIGTERM and SIGUSR1 stop the
run after the step every rank agrees on, with a checkpoint written through `save_run_state`, the one save
point, and one line saying how to resume (training/stopping.py); before training starts they stop it at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import torch

from alexrepro import distributed
from alexrepro.errors import UserError, WorkFailed
from alexrepro.group_health import agree, named_failures
from alexrepro.process.signals import Stopped, StopRequest, signal_name, stop_on_signals, work_done
from alexrepro.progress import console
from alexrepro.recipe import recipe_to_toml
from alexrepro.topk import true_class_rank
from alexrepro.training import checkpoint
from alexrepro.training.build import Run, RunState, build_run
from alexrepro.training.optim import set_lr
from alexrepro.training.plan import TrainOptions, TrainPlan, group_timeout_of, plan_training
from alexrepro.training.reporter import RunReporter, epoch_record, tensorboard_writer
from alexrepro.training.rng import capture_rng, rng_isolated
from alexrepro.training.run_folder import claim_run_folder, keep_aside
from alexrepro.training.step import StepHarness, autocast
from alexrepro.training.stopping import TRAIN_SIGNALS, WRITE_FAILED, StopVote, stop_line
from alexrepro.training.watchdog import StallWatch, nonfinite_message

__all__ = ["TrainOptions", "TrainPlan", "plan_training", "run_training", "train"]


def run_training(opts: TrainOptions) -> dict[str, Any] | None:
    """Plan, then train here, in spawned data-parallel processes, or under torchrun (None on ranks > 0).

    This process (under torchrun, rank 0) holds the run folder from before the plan to the end.
    """
    env = distributed.torchrun_env()
    if env is not None:
        return torchrun_training(opts, env)
    with stop_on_signals(TRAIN_SIGNALS):  # until a rank trains, a stop needs no checkpoint: at once
        try:
            with claim_run_folder(opts.run_dir):
                plan = plan_training(opts)
                prepare(plan, owner=True)
                if plan.world_size > 1:
                    summary = distributed.launch(_process, plan.world_size, (plan,), forward=TRAIN_SIGNALS)
                    work_done()  # the ranks have finished: a signal now leaves the run as done
                    return summary
                return _process(plan)
        except Stopped as e:
            if e.message or e.quiet:
                raise
            raise Stopped(e.signum, "before training began; nothing was written") from None


def torchrun_training(opts: TrainOptions, env: distributed.DistInfo) -> dict[str, Any] | None:
    """One rank of a group torchrun started: join the group first, so that every check after it is agreed
    (group_health.agree: a rank that fails or sees other files ends every rank with one line naming it), then
    train; rank 0 holds the run folder. None on ranks > 0."""
    owner = env.is_main
    with stop_on_signals(TRAIN_SIGNALS):
        try:
            distributed.init_process_group(env, distributed.device_type(opts.device), group_timeout_of(opts))
            with contextlib.ExitStack() as held:
                plan = agreed_plan(opts, env, held)
                prepare(plan, owner)
                distributed.barrier()  # an earlier run is kept aside before any rank reads RUN again
                summary = _process(plan)
        except Stopped as e:
            if e.message or e.quiet:
                raise
            raise Stopped(e.signum, "before training began; nothing was written", quiet=not owner) from None
        finally:
            distributed.cleanup()
    return summary if owner else None


def agreed_plan(opts: TrainOptions, env: distributed.DistInfo, held: contextlib.ExitStack) -> TrainPlan:
    """The plan, the same on every rank: rank 0 claims the run folder (held until `held` closes), every rank
    plans, and the ranks compare what they see (group_health.agree)."""
    failure, plan, facts = None, None, {}
    try:
        if env.is_main:
            held.enter_context(claim_run_folder(opts.run_dir))
        plan = plan_training(opts)
        facts = plan_facts(plan)
    except UserError as e:
        failure = str(e)
    agree(env, failure, facts)
    assert plan is not None  # agree raises on every rank if any failed
    return plan


def plan_facts(plan: TrainPlan) -> dict[str, Any]:
    """What every rank must see alike: the prepared set's identity, the checkpoint it resumes, the recipe."""
    resume = None
    if plan.resume_path is not None:
        resume = f"{plan.resume_path.name} at {checkpoint.checkpoint_position(plan.resume_path)}"
    digest = hashlib.sha256(recipe_to_toml(plan.recipe).encode()).hexdigest()
    return {"set": plan.set_identity, "resume": resume, "recipe": digest}


def prepare(plan: TrainPlan, owner: bool) -> None:
    """What comes between the plan and the first process: the TensorBoard check, notes, an earlier run kept aside."""
    if plan.tensorboard:
        tensorboard_writer(None)  # a missing TensorBoard is a UserError before any process starts
    if not owner:  # under torchrun rank 0 says it
        return
    for note in plan.notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False, highlight=False)
    if plan.keep_aside:
        kept = keep_aside(plan.run_dir)
        console.print(f"note: the earlier run's files in {plan.run_dir} are now in {kept}", soft_wrap=True)


def _process(plan: TrainPlan) -> dict[str, Any]:
    """One training process: join the process group (if any), train, leave; stop signals only recorded. A rank
    that stops answering ends the others within the group's timeout, named (group_health.named_failures)."""
    info = distributed.torchrun_env() or distributed.DistInfo()
    if info.distributed and plan.parallel == "none":
        plan = replace(plan, parallel="data")
    if info.distributed and plan.device_type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    with stop_on_signals(TRAIN_SIGNALS, at_once=False) as request:
        distributed.init_process_group(info, plan.device_type, plan.group_timeout)
        try:
            with named_failures(info, plan.group_timeout):
                summary = train(plan, info, request)
        finally:
            distributed.cleanup()
        work_done()  # a signal from here on (the summary, shutting down) leaves the finished run as it is
        return summary


def train(plan: TrainPlan, info: distributed.DistInfo, request: StopRequest | None = None) -> dict[str, Any]:
    """Train the recipe's net on the prepared set; rank 0 writes the run folder and returns the summary.

    `request` records stop signals (alexrepro.process.signals): the run then stops after the step every rank agrees
    on, with a checkpoint, raising Stopped.
    """
    run, state = build_run(plan, info, started=time.time())
    reporter = start_reporter(run, state)
    vote = StopVote(request or StopRequest(), info.distributed)
    try:
        watch_records(reporter, vote)
        if vote.now() is not None:  # a signal while the run was being built (or its records could not start)
            stop_run(run, state, reporter, state.epoch, state.batch, vote.signum)
        for epoch in range(state.epoch, plan.recipe.schedule.epochs):
            lr = run.schedule.lr
            train_one_epoch(run, state, reporter, epoch, lr, vote)
            try:
                val = validate(run.harness, run.val_loader, expected=run.num_val, vote=vote)  # on the centre crop
            except UserError as e:  # a damaged val shard or image: the epoch's training is kept, as on a stop
                stop_on_bad_data(run, state, epoch, run.train_loader.plan.num_batches, lr, e)
            if val is None:  # stopped in validation: the epoch's training is kept, its validation comes again
                stop_run(run, state, reporter, epoch, run.train_loader.plan.num_batches, vote.signum)
            is_best = record_epoch(run, state, reporter, epoch, lr, val)
            written = save_run_state(run, state, epoch + 1, 0, epoch_end=True, is_best=is_best)
            watch_records(reporter, vote)
            if vote.now() is not None:  # a signal, or a record that failed, at the epoch's end: stop there
                stop_run(run, state, reporter, epoch + 1, 0, vote.signum, written)
    finally:
        vote.close()
        reporter.close()
        run.close()
    if reporter.failure is not None:  # TensorBoard's last flush, after the last checkpoint
        raise record_failed(reporter, f"the run finished; its checkpoints are in {checkpoint.checkpoint_dir(plan.run_dir)}")
    return run_summary(run, state, reporter.warnings)


def start_reporter(run: Run, state: RunState) -> RunReporter:
    """The run's reporter, after it recorded the run in its folder (rank 0)."""
    plan, recipe, info = run.plan, run.plan.recipe, run.info
    stall = StallWatch(recipe.model.num_classes, recipe.run.stall_steps)
    if plan.resume_path is not None and state.step > recipe.run.stall_steps:
        stall.checked = True  # the run before the resume already passed the stall check
    reporter = RunReporter(plan.run_dir, run.harness.device, is_main=info.is_main, show_progress=plan.show_progress,
                           tensorboard=plan.tensorboard, stall=stall, init=recipe.model.init)
    every_process = run.devices if plan.parallel != "data" else [plan.device_type] * info.world_size
    reporter.begin(recipe, run.devices, every_process, info.world_size, plan.resume_path, state.epoch, state.step)
    return reporter


def train_one_epoch(run: Run, state: RunState, reporter: RunReporter, epoch: int, lr: float,
                    vote: StopVote | None = None) -> None:
    """§5's SGD over the training split from batch `state.batch` on; logs and checkpoints as the recipe says,
    and stops (a checkpoint, then Stopped) after the step at which `vote` agrees on a stop signal.

    Each step is queued without a host read; the host reads the device (the NaN guard, the metrics) only
    every run.log_every steps, before a mid-epoch checkpoint, at the epoch's last batch and at a stop.
    """
    harness, loader, run_config = run.harness, run.train_loader, run.plan.recipe.run
    set_lr(harness.optimizer, lr)
    start = state.batch
    loader.set_epoch(epoch, start)
    harness.net.train()
    total = start + len(loader)  # len() counts from start
    if start == 0:
        state.epoch_tally.zero_()
    reporter.start_epoch(epoch, run.plan.recipe.schedule.epochs, total, start)
    for i, images, labels in read_or_stop(run, state, epoch, start, lr):
        state.step += 1
        tally = harness.step(images, labels, state.step)  # queued: no wait for the device here
        state.epoch_tally += tally
        reporter.add(tally)
        stop = vote.step() if vote is not None else None  # host-side only; the same on every rank
        log_now = state.step % run_config.log_every == 0 or i == total - 1
        save_now = bool(run_config.checkpoint_every) and state.step % run_config.checkpoint_every == 0 and i + 1 < total
        if not (log_now or save_now or stop):
            continue
        stop_if_diverged(run, state, epoch, i, lr)
        if log_now:
            reporter.log_step(epoch, i + 1, total, state.step, lr, state.seconds(), state.epoch_tally)
            watch_records(reporter, vote)
        if stop:
            stop_run(run, state, reporter, epoch, i + 1, stop)
        if save_now:
            save_run_state(run, state, epoch, i + 1)
    state.batch = 0
    reporter.end_epoch()


def read_or_stop(run: Run, state: RunState, epoch: int, start: int, lr: float) -> Iterator[tuple[int, Any, Any]]:
    """(batch index, images, labels) of the epoch from batch `start` on; a batch that does not read (a damaged
    shard or image: a UserError) stops the run with a checkpoint of the last good step (`stop_on_bad_data`)."""
    batches = rng_isolated(run.train_loader)
    i = start
    while True:
        try:
            images, labels = next(batches)
        except StopIteration:
            return
        except UserError as e:
            stop_on_bad_data(run, state, epoch, i, lr, e)
        yield i, images, labels
        i += 1


def stop_on_bad_data(run: Run, state: RunState, epoch: int, batch: int, lr: float, error: UserError) -> NoReturn:
    """Checkpoint the steps done (epoch, batch), then raise the data's one line saying where they are kept.

    A single process only: among several, the other ranks are already in the next step's collectives, so
    the error ends the run as it is and the checkpoints written before stay (docs/RELIABILITY.md, D8).
    """
    if run.info.distributed:
        raise error
    stop_if_diverged(run, state, epoch, batch, lr)  # never a checkpoint of a diverged net
    save_run_state(run, state, epoch, batch)
    # The line names neither the folder nor the position: it reads the same whichever loader met the damage
    # (DALI reads ahead, so it meets it batches sooner); --resume says the position.
    raise UserError(f"{error}; training stopped: the run's {checkpoint.LAST} keeps every step before it; once the "
                    "set reads, run the same command with --resume") from None


def stop_if_diverged(run: Run, state: RunState, epoch: int, batch: int, lr: float) -> None:
    """WorkFailed if a loss since the last look was not finite, after saving the last good state.

    The guard refused every update from the bad step on, so the weights are those from before it: the
    checkpoint records the updates applied and, as its position, the batch that failed.
    """
    bad = run.harness.guard.bad_step()  # the host reads the device here, and only at these points
    if bad is None:
        return
    bad_step, bad_loss = bad
    failed_batch = batch - (state.step - bad_step)
    state.step = bad_step - 1
    where = save_run_state(run, state, epoch, failed_batch).get("last")
    raise WorkFailed(nonfinite_message(bad_step, bad_loss, lr, str(where) if where else None))


def stop_run(run: Run, state: RunState, reporter: RunReporter, epoch: int, batch: int, signum: int,
             written: dict[str, Path] | None = None) -> NoReturn:
    """Checkpoint the run at (epoch, batch) and raise Stopped with the line saying where and how to resume
    (or, for WRITE_FAILED, the record's failure with that line). `written`: what save_run_state returned
    for a checkpoint of (epoch, batch) already written, on every rank, so that none is written again."""
    where = (save_run_state(run, state, epoch, batch) if written is None else written).get("last")
    line = stop_line(epoch, batch, run.train_loader.plan.num_batches, state.step, where, run.plan.resume_command)
    if signum == WRITE_FAILED:
        if run.info.is_main:
            raise record_failed(reporter, f"training stopped: {line}")
        raise Stopped(signal.SIGTERM, line, quiet=True)  # rank 0 says it
    reporter.note(f"stopped by {signal_name(signum)}: {line}")
    raise Stopped(signum, line, quiet=not run.info.is_main)


def watch_records(reporter: RunReporter, vote: StopVote | None) -> None:
    """A run record that could not be written stops the run at the next step every rank agrees on (W1)."""
    if reporter.failure is not None and vote is not None:
        vote.fail()


def record_failed(reporter: RunReporter, then: str) -> UserError | WorkFailed:
    """The record's one line (the file, the free space there), then `then`: where the run is kept."""
    failure = reporter.failure
    assert failure is not None
    return type(failure)(f"{failure}; {then}")


def save_run_state(run: Run, state: RunState, epoch: int, batch: int, *, epoch_end: bool = False,
                   is_best: bool = False) -> dict[str, Path]:
    """The one place the run is checkpointed: every rank's RNG is gathered, rank 0 writes, every rank waits.

    Returns the files written (on rank 0; empty elsewhere).
    """
    rng = distributed.gather_objects(capture_rng())  # every rank's state, by rank
    written: dict[str, Path] = {}
    if run.info.is_main:
        snapshot = run.snapshot(state, epoch, batch, rng)
        written = checkpoint.write_run_checkpoint(run.plan.run_dir, snapshot, epoch_end=epoch_end,
                                                  is_best=is_best, keep_last=run.plan.recipe.run.keep_last)
    distributed.barrier()
    return written


@torch.no_grad()
def validate(harness: StepHarness, loader: Any, expected: int, vote: StopVote | None = None) -> dict[str, float] | None:
    """Centre-crop top-1/top-5 error over every rank's images; the image count must equal `expected`.

    None when `vote` agrees on a stop signal before the last batch.
    """
    device, topk = harness.device, harness.topk
    harness.net.eval()
    loader.set_epoch(0)
    hits = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, images
    for images, labels in rng_isolated(loader):
        if vote is not None and vote.step():
            return None
        if len(labels) == 0:
            continue
        with autocast(device, harness.amp_dtype):
            logits = harness.net(images)
        ranks = true_class_rank(logits.float(), labels)
        hits += torch.stack([(ranks < topk[0]).sum(), (ranks < topk[1]).sum(),
                             torch.tensor(len(labels), device=ranks.device)]).double().to(device)
    hits = distributed.all_reduce_sum(hits).cpu()
    if int(hits[2]) != expected:  # count the images scored across ranks (torchvision only warns)
        raise WorkFailed(f"validation scored {int(hits[2])} images but the split has {expected}")
    return {"top1_error": float(1 - hits[0] / hits[2]), "top5_error": float(1 - hits[1] / hits[2]),
            "images": int(hits[2])}


def record_epoch(run: Run, state: RunState, reporter: RunReporter, epoch: int, lr: float,
                 val: dict[str, float]) -> bool:
    """The schedule and the best error follow validation top-1 error (§5); the epoch's record is written.
    True when this epoch's net is the best so far."""
    reduced = run.schedule.epoch_end(epoch, val["top1_error"])
    is_best = val["top1_error"] < state.best_top1
    state.best_top1 = min(state.best_top1, val["top1_error"])
    record = epoch_record(epoch, state.step, lr, state.epoch_tally.cpu(), val, state.seconds(), is_best, reduced)
    state.history.append(record)
    reporter.log_epoch(record, run.schedule.lr)
    return is_best


def run_summary(run: Run, state: RunState, warnings: list[str]) -> dict[str, Any]:
    """What `alexrepro train --json` prints: the run, its best and last errors, where its checkpoints are."""
    plan, history = run.plan, state.history
    best = min(history, key=lambda r: r["val_top1_error"]) if history else None
    folder = checkpoint.checkpoint_dir(plan.run_dir)
    return {
        "run": str(plan.run_dir), "recipe": plan.recipe.name, "epochs": len(history), "steps": state.step,
        "best_epoch": best["epoch"] if best else None,
        "best_val_top1_error": best["val_top1_error"] if best else None,
        "best_val_top5_error": best["val_top5_error"] if best else None,
        "last_val_top1_error": history[-1]["val_top1_error"] if history else None,
        "last_val_top5_error": history[-1]["val_top5_error"] if history else None,
        "seconds": state.seconds(), "world_size": run.info.world_size, "devices": run.devices,
        "parallel": plan.parallel, "resumed_from": str(plan.resume_path) if plan.resume_path else None,
        "checkpoints": {name: str(folder / file) for name, file in (("last", checkpoint.LAST), ("best", checkpoint.BEST))
                        if (folder / file).exists()},
        "warnings": warnings,
    }
