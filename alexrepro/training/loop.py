"""The training loop of §5, top to bottom in `train()`; `run_training()` starts it where the plan says.

`alexrepro.training.plan.plan_training(TrainOptions)` resolves the request into a `TrainPlan`;
`run_training` then runs `train` in this process, in N spawned processes (`--gpus N`, or `--procs N`
on the CPU) or in a process torchrun started.
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alexrepro.training import checkpoint as ck
from alexrepro import distributed as D
from alexrepro.errors import UserError, WorkFailed
from alexrepro.evaluation.metrics import true_class_rank
from alexrepro.training.optim import PaperSGD, apply_hyperparameters, make_optimizer, set_lr
from alexrepro.data.prepared import open_split, read_manifest, read_stats
from alexrepro.progress import console, make_progress
from alexrepro.training.runlog import RunLog, epoch_line
from alexrepro.training.schedule import LRSchedule
from alexrepro.training.plan import TrainOptions, TrainPlan, plan_training
from alexrepro.training.watchdog import StallWatch, nonfinite_message, stall_message

__all__ = ["TrainOptions", "TrainPlan", "plan_training", "run_training", "train"]


def run_training(opts: TrainOptions) -> dict[str, Any] | None:
    """Plan, then train here, in spawned data-parallel processes, or under torchrun (None on ranks > 0)."""
    plan = plan_training(opts)
    if plan.tensorboard:
        _tensorboard_writer(None)
    for note in plan.notes:
        console.print(f"note: {note}")
    if plan.world_size > 1 and D.torchrun_env() is None:
        return D.launch(_process, plan.world_size, (plan,))
    summary = _process(plan)
    env = D.torchrun_env()
    return None if env is not None and not env.is_main else summary


def _process(plan: TrainPlan) -> dict[str, Any]:
    """One training process: join the process group (if any), train, leave."""
    info = D.torchrun_env() or D.DistInfo()
    if info.distributed and plan.parallel == "none":
        plan = replace(plan, parallel="data")
    if info.distributed and plan.device_type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // info.world_size))
    D.init_process_group(info, plan.device_type)
    try:
        return train(plan, info)
    finally:
        D.cleanup()


def train(plan: TrainPlan, info: D.DistInfo) -> dict[str, Any]:
    """Train the recipe's net on the prepared set; rank 0 writes the run folder and returns the summary."""
    from alexrepro.loaders import make_loader
    from alexrepro.nets import build_net
    from alexrepro.nets.alexnet import model_parallel

    t0 = time.time()
    recipe, out, run_dir = plan.recipe, plan.out, plan.run_dir
    m_cfg, d_cfg, o_cfg, s_cfg, r_cfg = recipe.model, recipe.data, recipe.optim, recipe.schedule, recipe.run
    if plan.device_type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.backends.cudnn.benchmark = True  # fixed shapes (drop_last): let cuDNN pick the fastest kernels
    else:
        device = torch.device("cpu")
    devices = [str(device)] if plan.parallel != "model" else (
        ["cuda:0", "cuda:1"] if plan.device_type == "cuda" else ["cpu", "cpu"])

    # ---- data: the prepared set must match the recipe
    classes = read_manifest(out).class_list()
    if len(classes) != m_cfg.num_classes:
        raise UserError(
            f"the recipe has model.num_classes = {m_cfg.num_classes} but {out} has {len(classes)} classes; "
            f"add --set model.num_classes={len(classes)}"
        )
    stats = read_stats(out)
    num_val = len(open_split(out, "val"))

    # ---- model, optimiser, schedule (§5), same init on every rank
    random.seed(r_cfg.seed)
    np.random.seed(r_cfg.seed)
    torch.manual_seed(r_cfg.seed)
    model = build_net(m_cfg, d_cfg.crop_size)
    if plan.parallel == "model":
        model = model_parallel(model, (torch.device(devices[0]), torch.device(devices[1])))
        device = torch.device(devices[0])
    else:
        model = model.to(device)
    if r_cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, o_cfg)
    schedule = LRSchedule(s_cfg, o_cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=r_cfg.precision == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(r_cfg.precision)
    torch.manual_seed(r_cfg.seed + info.rank)  # dropout masks differ between ranks, as between images

    def loader(split: str, train: bool):
        return make_loader(
            out, split, d_cfg, o_cfg.batch_size, train=train, device=device, seed=r_cfg.seed,
            rank=info.rank, world_size=info.world_size, crops="center", kind=d_cfg.loader,
            channels_last=r_cfg.channels_last,
        )

    train_loader, val_loader = loader("train", True), loader("val", False)

    # ---- resume: weights, optimiser, schedule, RNG, loader position, history
    start_epoch, start_batch, step, seconds_before = 0, 0, 0, 0.0
    best_top1, history = math.inf, []
    epoch_tally = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, top-1 hits, top-5 hits, images
    if plan.resume_path is not None:
        saved = ck.load_checkpoint(plan.resume_path)
        try:
            model.load_state_dict(saved["model"])
        except RuntimeError as e:  # a --force'd change of the net's shape
            names = re.findall(r"(?:size mismatch for|Missing key\(s\) in state_dict:) \"?([\w.]+)", str(e))
            detail = ", ".join(names[:4]) or " ".join(str(e).split())[:200]
            raise UserError(f"the checkpoint's weights do not fit the recipe's net ({detail}); resume without "
                            "changing model.* or data.crop_size, or start a new --run") from None
        try:
            optimizer.load_state_dict(saved["optimizer"])
        except ValueError as e:
            raise UserError(f"the optimiser state does not fit ({e}); resume with the same recipe and --parallel") from None
        schedule.load_state_dict(saved["schedule"])
        if scaler.is_enabled() and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        train_loader.load_state_dict(saved["loader"])
        start_epoch, start_batch, step = int(saved["epoch"]), int(saved["batch"]), int(saved["step"])
        best_top1 = float(saved["best_top1"])
        history = list(saved["metrics"]["history"])
        epoch_tally = saved["metrics"]["running"].to(device=device, dtype=torch.float64).clone()
        seconds_before = float(saved["metrics"].get("seconds", 0.0))
        _restore_rank_rng(saved["rng"], info, r_cfg.seed, step)
    apply_hyperparameters(optimizer, o_cfg, schedule.lr)  # the recipe's values, never the saved ones

    net = model
    if plan.parallel == "data":
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if r_cfg.compile:
        net = torch.compile(net)

    # ---- the run folder (rank 0)
    log = RunLog(run_dir, enabled=info.is_main)
    if info.is_main:
        ck.remove_stale_temps(run_dir)
        log.write_recipe(recipe)
        log.write_environment(devices if plan.parallel != "data" else [f"{plan.device_type}"] * info.world_size,
                              info.world_size)
        log.truncate_metrics(step)
        log.line(f"{'resumed from ' + str(plan.resume_path) if plan.resume_path else 'started'} at epoch "
                 f"{start_epoch} step {step}: recipe {recipe.name}, devices {devices}, world {info.world_size}")
    writer = _tensorboard_writer(run_dir) if plan.tensorboard and info.is_main else None
    stall = StallWatch(m_cfg.num_classes, r_cfg.stall_steps)
    guard = StepGuard(device)
    if plan.resume_path is not None and step > r_cfg.stall_steps:
        stall.checked = True  # the run before the resume already passed the stall check
    warnings: list[str] = []
    topk = (1, min(5, m_cfg.num_classes))
    progress = make_progress() if plan.show_progress and info.is_main else None
    if progress is not None:
        progress.start()

    def payload(epoch: int, batch: int, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": ck.unwrap(model).state_dict(), "recipe": recipe.to_dict(), "recipe_name": recipe.name,
            "classes": classes, "epoch": epoch, "batch": batch, "step": step, "parallel": plan.parallel,
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "schedule": schedule.state_dict(), "rng": rng, "loader": train_loader.state_dict(),
            "metrics": {"history": history, "running": epoch_tally.cpu().clone(),
                        "seconds": seconds_before + time.time() - t0},
            "best_top1": best_top1, "stats": ck.stats_payload(stats),
        }

    # ---- the loop (§5)
    last_paths: dict[str, Path] = {}
    try:
        for epoch in range(start_epoch, s_cfg.epochs):
            lr = schedule.lr
            set_lr(optimizer, lr)
            train_loader.set_epoch(epoch, start_batch)
            net.train()
            n_batches = start_batch + len(train_loader)  # len() counts from start_batch
            if start_batch == 0:
                epoch_tally.zero_()
            window, t_window = torch.zeros(4, dtype=torch.float64, device=device), time.time()
            task = None if progress is None else progress.add_task(
                f"epoch {epoch + 1}/{s_cfg.epochs}", total=n_batches, completed=start_batch, unit="batch")
            for i, (images, labels) in enumerate(ck.rng_isolated(train_loader), start=start_batch):
                step += 1
                tally = train_step(net, images, labels, optimizer, scaler, amp_dtype, topk, device,
                                   info.world_size, guard, step)  # queued: no wait for the device here
                epoch_tally += tally
                window += tally
                if progress is not None:
                    progress.update(task, advance=1)
                log_now = step % r_cfg.log_every == 0 or i == n_batches - 1
                save_now = bool(r_cfg.checkpoint_every) and step % r_cfg.checkpoint_every == 0 and i + 1 < n_batches
                if not (log_now or save_now):
                    continue
                bad = guard.bad_step()  # the host reads the device here, and only at these points
                if bad is not None:  # watchdog: every update since the bad step was refused; keep that state
                    bad_step, bad_loss = bad
                    step, batch = bad_step - 1, i - (step - bad_step)  # the updates applied; the batch that failed
                    where, rng = None, D.gather_objects(ck.capture_rng())  # every rank's state, by rank
                    if info.is_main:
                        where = ck.write_run_checkpoint(run_dir, payload(epoch, batch, rng), epoch_end=False,
                                                        is_best=False, keep_last=r_cfg.keep_last)["last"]
                    D.barrier()
                    raise WorkFailed(nonfinite_message(bad_step, bad_loss, lr, str(where) if where else None))
                if log_now:
                    w = window.cpu()
                    secs = time.time() - t_window
                    rec = _train_record(w, epoch, i + 1, step, lr, secs, seconds_before + time.time() - t0)
                    log.metrics(rec)
                    log.line(epoch_line(epoch, i + 1, n_batches, rec["train_loss"], 100 * (1 - rec["train_top1_error"]),
                                        100 * (1 - rec["train_top5_error"]), lr, rec["images_per_s"]))
                    if progress is not None:
                        ep = epoch_tally.cpu()
                        progress.update(task, status=f"step {step} loss {rec['train_loss']:.3f} lr {lr:.3g} top-1 err "
                                        f"{float(1 - ep[1] / max(float(ep[3]), 1.0)):.1%} {rec['images_per_s']:,.0f} img/s")
                    if writer is not None:
                        writer.add_scalar("train/loss", rec["train_loss"], step)
                        writer.add_scalar("train/lr", lr, step)
                    if stall.check(step, rec["train_loss"]):
                        warnings.append(stall_message(step, rec["train_loss"], m_cfg.num_classes, m_cfg.init))
                        console.print(f"[yellow]warning:[/yellow] {warnings[-1]}")
                        log.line(f"warning: {warnings[-1]}")
                    window, t_window = torch.zeros(4, dtype=torch.float64, device=device), time.time()
                if save_now:
                    rng = D.gather_objects(ck.capture_rng())
                    if info.is_main:
                        last_paths.update(ck.write_run_checkpoint(run_dir, payload(epoch, i + 1, rng), epoch_end=False,
                                                                  is_best=False, keep_last=r_cfg.keep_last))
                    D.barrier()
            start_batch = 0
            if progress is not None:
                progress.remove_task(task)

            # ---- validation on the centre crop; the schedule and best checkpoint follow top-1 error
            val = validate(net, val_loader, device, amp_dtype, topk, expected=num_val)
            reduced = schedule.epoch_end(epoch, val["top1_error"])
            is_best = val["top1_error"] < best_top1
            best_top1 = min(best_top1, val["top1_error"])
            t_ep = epoch_tally.cpu()
            record = {
                "kind": "epoch", "epoch": epoch, "step": step, "lr": lr,
                "train_loss": float(t_ep[0] / t_ep[3]), "train_top1_error": float(1 - t_ep[1] / t_ep[3]),
                "train_top5_error": float(1 - t_ep[2] / t_ep[3]), "val_top1_error": val["top1_error"],
                "val_top5_error": val["top5_error"], "val_images": val["images"],
                "seconds": seconds_before + time.time() - t0, "best": is_best, "lr_reduced": reduced,
            }
            history.append(record)
            log.metrics(record)
            val_line = (f"Epoch: [{epoch}] val  top-1 error {100 * val['top1_error']:.2f}%  top-5 error "
                        f"{100 * val['top5_error']:.2f}%{'  (best)' if is_best else ''}"
                        f"{f'  lr -> {schedule.lr:g}' if reduced else ''}")
            log.line(val_line)
            if info.is_main:
                console.print(val_line, highlight=False)
            if writer is not None:
                writer.add_scalar("val/top1_error", val["top1_error"], epoch + 1)
                writer.add_scalar("val/top5_error", val["top5_error"], epoch + 1)
            rng = D.gather_objects(ck.capture_rng())
            if info.is_main:
                last_paths.update(ck.write_run_checkpoint(run_dir, payload(epoch + 1, 0, rng), epoch_end=True,
                                                          is_best=is_best, keep_last=r_cfg.keep_last))
            D.barrier()
    finally:
        if progress is not None:
            progress.stop()
        if writer is not None:
            writer.close()
        train_loader.close()
        val_loader.close()

    best = min(history, key=lambda r: r["val_top1_error"]) if history else None
    folder = ck.checkpoint_dir(run_dir)
    return {
        "run": str(run_dir), "recipe": recipe.name, "epochs": len(history), "steps": step,
        "best_epoch": best["epoch"] if best else None,
        "best_val_top1_error": best["val_top1_error"] if best else None,
        "best_val_top5_error": best["val_top5_error"] if best else None,
        "last_val_top1_error": history[-1]["val_top1_error"] if history else None,
        "last_val_top5_error": history[-1]["val_top5_error"] if history else None,
        "seconds": seconds_before + time.time() - t0, "world_size": info.world_size, "devices": devices,
        "parallel": plan.parallel, "resumed_from": str(plan.resume_path) if plan.resume_path else None,
        "checkpoints": {k: str(folder / n) for k, n in (("last", ck.LAST), ("best", ck.BEST)) if (folder / n).exists()},
        "warnings": warnings,
    }


def _restore_rank_rng(saved: Any, info: D.DistInfo, seed: int, step: int) -> None:
    """Give each rank back its own random state (dropout masks differ between ranks, as between images).

    Checkpoints hold every rank's state, indexed by rank. Resumed on another number of processes,
    ranks that have no saved state of their own start a fresh stream from (seed, rank, step).
    """
    states = saved if isinstance(saved, list) else [saved]
    if info.rank < len(states) and len(states) == info.world_size:
        ck.restore_rng(states[info.rank])
        return
    if info.rank == 0:
        console.print(f"note: the checkpoint holds random states for {len(states)} process(es), this run has "
                      f"{info.world_size}; dropout streams restart from the seed, so the run is not bitwise "
                      "the one it continues")
    ck.restore_rng(states[0])
    torch.manual_seed(seed + 1_000_003 * info.rank + step)


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


def train_step(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None, topk: tuple[int, int],
               device: torch.device, world_size: int = 1, guard: StepGuard | None = None, step: int = 1,
               ) -> torch.Tensor:
    """One step of §5, queued without waiting for the device: the step's (loss sum, top-1 hits, top-5 hits,
    images) over every rank, on the device; all zeros for a step the guard refused."""
    losses, tally = forward_and_tally(net, images, labels, amp_dtype, topk, device)
    ok = guard.check(tally, step) if guard is not None else None
    backward_and_update(losses, tally[3], world_size, optimizer, scaler, ok)
    return tally if ok is None else torch.where(ok, tally, torch.zeros_like(tally))


def forward_and_tally(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      amp_dtype: torch.dtype | None, topk: tuple[int, int], device: torch.device,
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward pass: per-image losses, and (loss sum, top-1 hits, top-5 hits, images) summed over ranks,
    left on `device` (float64)."""
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = net(images)
    losses = F.cross_entropy(logits.float(), labels, reduction="none")
    ranks = true_class_rank(logits.detach().float(), labels)
    count = torch.full((), float(len(labels)), dtype=torch.float64, device=losses.device)
    tally = torch.stack([losses.detach().sum().double(), (ranks < topk[0]).sum().double(),
                         (ranks < topk[1]).sum().double(), count])
    return losses, D.all_reduce_sum(tally.to(device))


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


@torch.no_grad()
def validate(net: torch.nn.Module, loader, device: torch.device, amp_dtype: torch.dtype | None,  # noqa: ANN001
             topk: tuple[int, int], expected: int) -> dict[str, float]:
    """Centre-crop top-1/top-5 error over every rank's images; the image count must equal `expected`."""
    net.eval()
    loader.set_epoch(0)
    hits = torch.zeros(3, dtype=torch.float64, device=device)  # top-1 hits, top-5 hits, images
    for images, labels in ck.rng_isolated(loader):
        if len(labels) == 0:
            continue
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = net(images)
        ranks = true_class_rank(logits.float(), labels)
        hits += torch.stack([(ranks < topk[0]).sum(), (ranks < topk[1]).sum(), torch.tensor(len(labels), device=ranks.device)]).double().to(device)
    hits = D.all_reduce_sum(hits).cpu()
    if int(hits[2]) != expected:  # count the images scored across ranks (torchvision only warns)
        raise WorkFailed(f"validation scored {int(hits[2])} images but the split has {expected}")
    return {"top1_error": float(1 - hits[0] / hits[2]), "top5_error": float(1 - hits[1] / hits[2]),
            "images": int(hits[2])}


def _train_record(window: torch.Tensor, epoch: int, batch: int, step: int, lr: float, secs: float,
                  total_secs: float) -> dict[str, Any]:
    n = float(window[3]) or 1.0
    return {"kind": "step", "epoch": epoch, "batch": batch, "step": step, "lr": lr,
            "train_loss": float(window[0]) / n, "train_top1_error": 1 - float(window[1]) / n,
            "train_top5_error": 1 - float(window[2]) / n, "images_per_s": float(window[3]) / max(secs, 1e-9),
            "seconds": total_secs}


def _tensorboard_writer(run_dir: Path | None):  # noqa: ANN202
    """A SummaryWriter under RUN/tensorboard, or a UserError saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return None if run_dir is None else SummaryWriter(str(Path(run_dir) / "tensorboard"))
