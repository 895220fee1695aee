"""Stopping a run on a signal: every rank after the same step, a checkpoint, one line saying how to resume.

SIGINT (Ctrl-C), SIGTERM (a scheduler's stop; torchrun passes it on to every rank) and SIGUSR1 (SLURM's
warning before a pre-emption, `sbatch --signal=USR1@120`) only record themselves while a run trains
(`alexrepro.process.signals.stop_on_signals(TRAIN_SIGNALS, at_once=False)`); the loop asks `StopVote.step()` after
each step and, once every rank agrees, writes a mid-epoch checkpoint through its one save point and raises
`Stopped` with the line to print. A second signal ends the process at once (alexrepro.process.signals).
"""

from __future__ import annotations

import itertools
import re
import shlex
import signal
from pathlib import Path

import torch
import torch.distributed as dist

from alexrepro.distributed import group_timeout
from alexrepro.process.signals import StopRequest

TRAIN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
# Not a signal: rank 0 could not write a run record (metrics.jsonl, log.txt, TensorBoard). Voted like a
# signal, so that every rank stops after the same step with a checkpoint; above every signal number, so
# the MAX of the votes says the failure when a signal came too.
WRITE_FAILED = 1024


class StopVote:
    """Whether to stop now: the same answer on every rank, so that every rank stops after the same step.

    Alone, the answer is the request itself. Among several processes each rank's request (its signal
    number, 0 for none) is all-reduced with MAX once per step, asynchronously, over a gloo group of
    CPU tensors: a step sends its vote and uses the previous step's result, so the answer comes one
    step after the signal and no step waits for the device (the vote never touches it) or for the other
    ranks beyond the message itself. Every rank calls `step()` equally often (the loop calls it once
    per batch, and every rank gets every batch, empty or not), so the votes pair up.
    """

    def __init__(self, request: StopRequest, distributed: bool) -> None:
        self.request = request
        self.group = dist.new_group(backend="gloo", timeout=group_timeout()) if distributed else None
        self._pending: tuple[dist.Work, torch.Tensor] | None = None
        self.signum: int | None = None  # the signal agreed on (or WRITE_FAILED), once agreed
        self.failed = False  # this rank could not write a run record: vote WRITE_FAILED from now on

    def fail(self) -> None:
        """Vote WRITE_FAILED from the next vote on (rank 0, whose record could not be written)."""
        self.failed = True

    def _mine(self) -> int:
        return WRITE_FAILED if self.failed else self.request.signum or 0

    def step(self) -> int | None:
        """Called once per step on every rank: the signal every rank has agreed to stop on, or None."""
        if self.group is None:
            self.signum = self._mine() or None
            return self.signum
        agreed = self._collect()
        if agreed is None:
            self._pending = self._send(async_op=True)
        return agreed

    def now(self) -> int | None:
        """A vote answered at once (one blocking exchange): before the first step, after the run is built."""
        if self.group is None:
            return self.step()
        agreed = self._collect()
        if agreed is None:
            self._pending = self._send(async_op=False)
            agreed = self._collect()
        return agreed

    def close(self) -> None:
        """Wait for the vote still in flight, so that none is left when the process group goes."""
        self._collect()

    def _send(self, async_op: bool) -> tuple[dist.Work, torch.Tensor]:
        flag = torch.tensor([self._mine()], dtype=torch.int64)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=async_op)
        return work, flag

    def _collect(self) -> int | None:
        if self._pending is None:
            return None
        work, flag = self._pending
        self._pending = None
        if work is not None:
            work.wait()
        agreed = int(flag[0])
        if agreed:
            self.signum = agreed
        return agreed or None


def resume_command(args: list[str] | None, out: Path, run_dir: Path, launcher: list[str] | None = None) -> str:
    """The command that continues this run: its own, with --resume (--resume-from, --force and
    --allow-changed-data dropped: the run's checkpoints now record its recipe and set); a command with
    --auto-resume as it is. Under torchrun (`launcher`: its command line) the torchrun command with these
    arguments, to run on every node.

    `args` are the command's arguments after `alexrepro` (None when training was started from Python).
    """
    if args is None:
        rest = ["train", str(out), "--run", str(run_dir), "--resume"]
    else:
        kept, skip = [], False
        for arg in args:
            if skip:
                skip = False
            elif arg in ("--resume-from",):
                skip = True
            elif arg not in ("--resume", "--force", "--allow-changed-data") and not arg.startswith("--resume-from="):
                kept.append(arg)
        rest = kept if "--auto-resume" in kept else [*kept, "--resume"]
    if launcher is None:
        return "alexrepro " + shlex.join(rest)
    head = torchrun_head(launcher)
    if head is None:
        return "alexrepro " + shlex.join(rest) + " (under torchrun, on every node, as this run was started)"
    return shlex.join([*head, *([] if "--" in head else ["--"]), *rest]) + " (on every node)"


def torchrun_head(argv: list[str]) -> list[str] | None:
    """torchrun's command line up to `-m alexrepro` (its own options, after any `NAME=value` settings), as a shell
    runs it; None if it has none.

    `python -m torch.distributed.run ...` stays as it is; the `torchrun` script, which the kernel shows after
    the interpreter of its first line, is given by its path alone.
    """
    settings = [a for a in itertools.takewhile(lambda a: re.match(r"[A-Za-z_]\w*=", a), argv)]
    argv = argv[len(settings):]
    for i in range(2, len(argv)):
        if argv[i] == "alexrepro" and argv[i - 1] in ("-m", "--module", "--"):
            head = argv[: i + 1]
            if Path(head[1]).name == "torchrun":
                head = head[1:]
            return settings + head
    return None


def stop_line(epoch: int, batch: int, batches: int, step: int, checkpoint: Path | None, command: str) -> str:
    """What the stopped run kept and how to go on: the line the CLI prints after `stopped by SIGxxx: `."""
    where = f"checkpoint {checkpoint}" if checkpoint is not None else "a checkpoint"
    return (f"{where} holds epoch [{epoch}] batch {batch}/{batches} (step {step}); "
            f"resume with: {command}")
