"""What a training run tells while it runs, behind one object: `RunReporter`.

The run folder's metrics.jsonl and log.txt (rank 0, through run_folder.RunLog), the progress bar on stderr,
TensorBoard scalars (--tensorboard) and the paper-init stall warning. The training loop hands it
each step's tally (a device tensor, never read here between log points) and the records to write.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from alexrepro.errors import UserError, WorkFailed
from alexrepro.process.atomic import described_write_errors
from alexrepro.progress import console, make_progress
from alexrepro.recipe import Recipe
from alexrepro.training.run_folder import RECORD_HINT, RunLog
from alexrepro.training.watchdog import StallWatch, stall_message


def epoch_line(epoch: int, i: int, n: int, loss: float, top1: float, top5: float, lr: float, ips: float) -> str:
    """torchvision's reference log line: Epoch: [e][i/N] loss acc@1 acc@5 (accuracies in %)."""
    width = len(str(n))
    return (
        f"Epoch: [{epoch}][{i:>{width}}/{n}]  lr {lr:.6g}  loss {loss:.4f}  "
        f"acc@1 {top1:6.2f}  acc@5 {top5:6.2f}  img/s {ips:,.1f}"
    )


def val_line(record: dict[str, Any], next_lr: float) -> str:
    """The log line of an epoch's validation (an epoch record of metrics.jsonl); the new lr when it was cut."""
    return (f"Epoch: [{record['epoch']}] val  top-1 error {100 * record['val_top1_error']:.2f}%  top-5 error "
            f"{100 * record['val_top5_error']:.2f}%{'  (best)' if record['best'] else ''}"
            f"{f'  lr -> {next_lr:g}' if record['lr_reduced'] else ''}")


def tensorboard_writer(run_dir: Path | None):  # noqa: ANN201
    """A SummaryWriter under RUN/tensorboard (None for run_dir None: only check that TensorBoard imports),
    or a UserError saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return None if run_dir is None else SummaryWriter(str(Path(run_dir) / "tensorboard"))


def step_record(window: torch.Tensor, epoch: int, batch: int, step: int, lr: float, secs: float,
                total_secs: float) -> dict[str, Any]:
    """The metrics.jsonl record of the steps since the last one: `window` is their summed tally (on the CPU)."""
    n = float(window[3]) or 1.0
    return {"kind": "step", "epoch": epoch, "batch": batch, "step": step, "lr": lr,
            "train_loss": float(window[0]) / n, "train_top1_error": 1 - float(window[1]) / n,
            "train_top5_error": 1 - float(window[2]) / n, "images_per_s": float(window[3]) / max(secs, 1e-9),
            "seconds": total_secs}


def epoch_record(epoch: int, step: int, lr: float, tally: torch.Tensor, val: dict[str, float], seconds: float,
                 is_best: bool, lr_reduced: bool) -> dict[str, Any]:
    """The metrics.jsonl record of a finished epoch: its training tally (on the CPU) and its validation."""
    return {
        "kind": "epoch", "epoch": epoch, "step": step, "lr": lr,
        "train_loss": float(tally[0] / tally[3]), "train_top1_error": float(1 - tally[1] / tally[3]),
        "train_top5_error": float(1 - tally[2] / tally[3]), "val_top1_error": val["top1_error"],
        "val_top5_error": val["top5_error"], "val_images": val["images"],
        "seconds": seconds, "best": is_best, "lr_reduced": lr_reduced,
    }


class RunReporter:
    """Step records, epoch lines, the progress bar, TensorBoard and stall warnings of one training process.

    Files are written on rank 0 only (`is_main`); the stall check runs on every rank, as its warning is
    about that rank's loss. `warnings` collects the warnings given, for the run's summary. A record that
    cannot be written (metrics.jsonl, log.txt, TensorBoard's files) is kept as `failure`, its one line, and
    nothing more is written: the loop then checkpoints the run and stops with that line (W1).
    """

    def __init__(self, run_dir: Path, device: torch.device, *, is_main: bool, show_progress: bool,
                 tensorboard: bool, stall: StallWatch, init: str) -> None:
        self.log = RunLog(run_dir, enabled=is_main)
        self.device = device
        self.failure: UserError | WorkFailed | None = None
        self.tensorboard_dir = Path(run_dir) / "tensorboard"
        self.writer = None
        if tensorboard and is_main:
            with self.recording(self.tensorboard_dir):
                self.writer = tensorboard_writer(run_dir)
        self.stall, self.init = stall, init
        self.is_main = is_main
        self.warnings: list[str] = []
        self.show_progress = show_progress and is_main
        self.progress = make_progress(show=self.show_progress)
        self.progress.start()  # stopped in close()
        self.task: Any = None
        self._new_window()

    @contextlib.contextmanager
    def recording(self, path: Path | None = None) -> Iterator[None]:
        """A block of writes: a failed one becomes `failure` (the first only) and ends every later write.

        `path` names what a write that fails with a bare OSError was writing (TensorBoard's writer);
        RunLog names its own files.
        """
        try:
            with described_write_errors(path, RECORD_HINT) if path is not None else contextlib.nullcontext():
                yield
        except (UserError, WorkFailed) as e:
            self.failure = self.failure or e
            writer, self.log.enabled, self.writer = self.writer, False, None
            if writer is not None:
                with contextlib.suppress(Exception):  # its own failure is the one said, if any
                    writer.close()

    def begin(self, recipe: Recipe, devices: list[str], all_devices: list[str], world_size: int,
              resumed_from: Path | None, epoch: int, step: int) -> None:
        """Record the run in its folder: recipe.toml, environment.json (`all_devices`: every process's), metrics
        cut back to `step`, and a log line naming this process's `devices`."""
        if not self.is_main:
            return
        with self.recording():
            self.log.write_recipe(recipe)
            self.log.write_environment(all_devices, world_size)
            self.log.truncate_metrics(step)
            self.log.line(f"{'resumed from ' + str(resumed_from) if resumed_from else 'started'} at epoch [{epoch}] "
                          f"step {step}: recipe {recipe.name}, devices {devices}, world {world_size}")

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        """A progress task for the epoch's `total` batches, `done` of them already (a mid-epoch resume)."""
        self._new_window()
        # [epoch] as the log lines and the summary number it (0-based, like torchvision's)
        self.task = self.progress.add_task(f"Epoch: [{epoch}] of {epochs}", total=total, completed=done, unit="batch")

    def add(self, tally: torch.Tensor) -> None:
        """One step's tally, added on the device (no host read); the bar advances."""
        self.window += tally
        self.progress.update(self.task, advance=1)

    def log_step(self, epoch: int, batch: int, total: int, step: int, lr: float, seconds: float,
                 epoch_tally: torch.Tensor) -> None:
        """Write the record and log line of the steps since the last call (reads the device), check the stall."""
        record = step_record(self.window.cpu(), epoch, batch, step, lr, time.time() - self.window_started, seconds)
        loss = record["train_loss"]
        with self.recording():
            self.log.metrics(record)
            self.log.line(epoch_line(epoch, batch, total, loss, 100 * (1 - record["train_top1_error"]),
                                     100 * (1 - record["train_top5_error"]), lr, record["images_per_s"]))
        if self.show_progress:  # the epoch's tally is read only for the bar's status
            tally = epoch_tally.cpu()
            self.progress.update(self.task, status=f"step {step} loss {loss:.3f} lr {lr:.3g} top-1 err "
                                 f"{float(1 - tally[1] / max(float(tally[3]), 1.0)):.1%} "
                                 f"{record['images_per_s']:,.0f} img/s")
        if self.writer is not None:
            with self.recording(self.tensorboard_dir):
                self.writer.add_scalar("train/loss", loss, step)
                self.writer.add_scalar("train/lr", lr, step)
        if self.stall.check(step, loss):
            self.warnings.append(stall_message(step, loss, self.stall.num_classes, self.init))
            console.print(f"[yellow]warning:[/yellow] {self.warnings[-1]}")
            with self.recording():
                self.log.line(f"warning: {self.warnings[-1]}")
        self._new_window()

    def note(self, text: str) -> None:
        """One line in log.txt (rank 0)."""
        with self.recording():
            self.log.line(text)

    def end_epoch(self) -> None:
        self.progress.remove_task(self.task)

    def log_epoch(self, record: dict[str, Any], next_lr: float) -> None:
        """Write a finished epoch's record and its validation line (also on the console)."""
        line = val_line(record, next_lr)
        with self.recording():
            self.log.metrics(record)
            self.log.line(line)
        if self.is_main:
            console.print(line, highlight=False)
        if self.writer is not None:
            with self.recording(self.tensorboard_dir):
                self.writer.add_scalar("val/top1_error", record["val_top1_error"], record["epoch"] + 1)
                self.writer.add_scalar("val/top5_error", record["val_top5_error"], record["epoch"] + 1)

    def close(self) -> None:
        """Stop the bar and flush TensorBoard's files (a failure there becomes `failure`, as any write's)."""
        self.progress.stop()
        if self.writer is not None:
            with self.recording(self.tensorboard_dir):
                self.writer.close()

    def _new_window(self) -> None:
        self.window = torch.zeros(4, dtype=torch.float64, device=self.device)
        self.window_started = time.time()
