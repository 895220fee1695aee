"""Data-parallel set-up: one process per GPU (NCCL) or per CPU worker (gloo), in one small module.

On one machine `alexrepro train --gpus N` (or `--device cpu --procs N`) spawns the N processes
itself; across machines `torchrun` starts them and sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT, which `from_env` reads. Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from alexrepro.errors import UserError, WorkFailed
from alexrepro.process import lifetime
from alexrepro.process.signals import Stopped, command_is_process, stop_on_signals

FAILED_RANK_GRACE = 5.0  # s the other ranks get to end on their own when one fails, before SIGTERM, then SIGKILL
# s a rank waits in a collective for the others before it fails (`train --group-timeout`): NCCL's own default,
# long enough for rank 0 to write a checkpoint while the others wait at the barrier after it
GROUP_TIMEOUT = 600.0
_timeout = datetime.timedelta(seconds=GROUP_TIMEOUT)  # what this process joined its group with


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among world_size, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def torchrun_env() -> DistInfo | None:
    """The rank a launcher (torchrun or our own spawn) gave this process, or None when run alone."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    if world <= 1:
        return None
    return DistInfo(rank=rank, world_size=world, local_rank=local)


# What torchrun reads from its environment that a command resuming its run needs as well (docs/DISTRIBUTED.md)
LAUNCHER_ENV = ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE",)


def launcher_command() -> list[str] | None:
    """The command line of the torchrun that started this process (its parent), after the LAUNCHER_ENV settings
    it ran with (`NAME=value`, which this process inherited); None when torchrun did not start it (torchrun
    names its workers' runs in TORCHELASTIC_RUN_ID) or the command cannot be read (not Linux)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:
        return None
    settings = [f"{name}={os.environ[name]}" for name in LAUNCHER_ENV if name in os.environ]
    return settings + [a.decode(errors="surrogateescape") for a in raw.removesuffix(b"\0").split(b"\0")]


# Both towers of `--parallel model` on the devices named here, e.g. "cuda:0,cuda:0": the two-GPU code path (its
# exchanges and per-tower layers) run on a one-GPU machine, to check it there; no faster than one device.
TOWER_DEVICES_ENV = "ALEXREPRO_TOWER_DEVICES"


def tower_devices(device_type: str) -> tuple[str, str]:
    """The devices of §3.2's two towers: cuda:0 and cuda:1 (cpu twice), or the two ALEXREPRO_TOWER_DEVICES names."""
    named = os.environ.get(TOWER_DEVICES_ENV, "").strip()
    if not named:
        return ("cuda:0", "cuda:1") if device_type == "cuda" else ("cpu", "cpu")
    parts = [p.strip() for p in named.split(",")]
    try:
        devices = [torch.device(p) for p in parts]
    except RuntimeError:
        devices = []
    if len(devices) != 2 or any(d.type != device_type for d in devices):
        raise UserError(f"{TOWER_DEVICES_ENV}={named!r}: name two {device_type} devices, e.g. "
                        f"{'cuda:0,cuda:0' if device_type == 'cuda' else 'cpu,cpu'}")
    if device_type == "cuda" and any((d.index or 0) >= torch.cuda.device_count() for d in devices):
        raise UserError(f"{TOWER_DEVICES_ENV}={named!r} names a GPU this machine lacks "
                        f"({torch.cuda.device_count()} present)")
    return str(devices[0]), str(devices[1])


def resolve_launch(device: str, gpus: int, procs: int, parallel: str | None) -> tuple[str, int, str]:
    """(device type, processes to start, parallel mode none|data|model) for a request; UserError if impossible.

    `--gpus N` counts GPUs (one process each); `--procs N` counts gloo processes on the CPU.
    `--parallel model` is §3.2's two-GPU split (two CUDA devices; on the CPU both towers run there).
    Under torchrun the processes already exist, so none are started.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device must be cpu, cuda or auto, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device cpu")
    if gpus < 1 or procs < 1:
        raise UserError("--gpus and --procs must be at least 1")
    if device == "cpu" and gpus > 1:
        why = "no CUDA device is available" if not torch.cuda.is_available() else "--device cpu was asked for"
        raise UserError(f"--gpus {gpus} counts GPUs but this run is on the CPU ({why}); "
                        "for several processes on the CPU use --procs N")
    if device == "cuda" and procs > 1:
        raise UserError("--procs is for --device cpu; on GPUs use --gpus N (one process per GPU)")
    towers_named = parallel == "model" and bool(os.environ.get(TOWER_DEVICES_ENV, "").strip())
    if device == "cuda" and gpus > torch.cuda.device_count() and not towers_named:
        raise UserError(f"--gpus {gpus} but only {torch.cuda.device_count()} CUDA devices are present")
    world = gpus if device == "cuda" else procs
    mode = parallel or ("data" if world > 1 else "none")
    if mode not in ("none", "data", "model"):
        raise UserError(f"--parallel must be data or model, got {mode!r}")
    if mode == "model":
        if device == "cuda" and gpus != 2:
            raise UserError("--parallel model is the paper's two-GPU split: it needs exactly --gpus 2")
        if procs > 1:
            raise UserError("--parallel model runs one process; drop --procs")
        tower_devices(device)  # a UserError now for a bad ALEXREPRO_TOWER_DEVICES
        return device, 1, mode
    if torchrun_env() is not None:
        return device, 1, "data"
    return device, world, mode if world > 1 else "none"


def device_type(device: str) -> str:
    """cpu or cuda for a --device value (auto: cuda where there is a GPU): the backend a group joins with, before
    the request is checked (a bad value becomes cpu here; resolve_launch refuses it)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device == "cuda" else "cpu"


def backend_for(device_type: str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if device_type == "cuda" else "gloo"


def init_process_group(info: DistInfo, device_type: str, timeout: float = GROUP_TIMEOUT) -> None:
    """Join the process group named by the MASTER_ADDR/MASTER_PORT environment.

    `timeout` (s) bounds every collective: a rank that waits longer for another one fails, so that a rank
    that died or stalls ends the job instead of hanging it (alexrepro/group_health.py names that rank).
    """
    global _timeout
    if not info.distributed or dist.is_initialized():
        return
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    _timeout = datetime.timedelta(seconds=timeout)
    dist.init_process_group(backend_for(device_type), rank=info.rank, world_size=info.world_size, timeout=_timeout)


def group_timeout() -> datetime.timedelta:
    """The timeout this process joined its group with: the groups made beside it take the same (torch would
    give them its backend's default, 30 minutes for gloo)."""
    return _timeout


def cleanup() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1) when running alone."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def max_over_ranks(value: float, device: torch.device) -> float:
    """The largest `value` over the ranks (the value itself when running alone)."""
    if rank_and_world()[1] == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor across ranks, in place (a no-op when running alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, indexed by rank, on every rank ([obj] when running alone)."""
    if dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    """Wait for every rank (a no-op when running alone)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def free_port() -> int:
    """A TCP port free on this machine right now, for the rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, args: tuple, outdir: str, parent: int) -> None:
    """One spawned process: set the torchrun-style environment, run fn, record its result, error or stop."""
    lifetime.bind_to_parent(parent)  # ends with the launching process, however that ends
    command_is_process()  # this rank's life is its part of the command (training/loop.py: work_done)
    with contextlib.suppress(OSError):  # a session of its own, as torchrun gives its workers: a terminal's
        os.setsid()  # Ctrl-C reaches the launcher alone, which ends or signals the ranks itself, once
    os.environ.update(
        {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
         "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    )
    try:
        result = fn(*args)
    except (UserError, WorkFailed) as e:
        kind = "user" if isinstance(e, UserError) else "work"
        Path(outdir, f"error-{rank}.json").write_text(json.dumps({"kind": kind, "message": str(e)}))
        raise SystemExit(1) from None
    except Stopped as e:  # exit 0: a failed rank would make the launcher end the others, mid-checkpoint
        Path(outdir, f"stopped-{rank}.json").write_text(json.dumps({"signum": e.signum, "message": e.message}))
        return
    if rank == 0:
        Path(outdir, "result.json").write_text(json.dumps(result, default=str))


def launch(fn: Callable[..., Any], world_size: int, args: tuple = (), forward: tuple[int, ...] = ()) -> Any:
    """Run fn(*args) in world_size spawned processes; rank 0's return value (JSON-able) comes back.

    A UserError or WorkFailed in any rank is raised again here (the first rank's, by rank order). A stop
    signal that reaches this process ends the ranks at once (evaluation: nothing to keep); a signal in
    `forward` (training) is passed on to every rank instead, which stop together and say what they kept:
    their `Stopped` is raised again here. A second signal ends this process at once, and with it the ranks.
    """
    lifetime.start_quiet_resource_tracker()  # ranks ended at once leave no warning after the command's line
    with tempfile.TemporaryDirectory(prefix="alexrepro-spawn-") as outdir:
        context = mp.start_processes(
            _entry, args=(fn, world_size, free_port(), args, outdir, os.getpid()), nprocs=world_size,
            join=False, start_method="spawn",
        )
        sent = _wait_forwarding(context, forward) if forward else _wait(context)
        return _outcome(Path(outdir), sent)


def _wait(context: Any) -> None:
    """Wait for the ranks; a stop signal here, or a failed rank, ends the others now (not at exit)."""
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException:
        pass  # the error file says why; checked by _outcome
    except mp.ProcessRaisedException as e:
        raise WorkFailed(f"a training process crashed: {str(e).strip().splitlines()[-1]}") from None
    except BaseException:
        lifetime.end_processes(context.processes)
        raise


def _wait_forwarding(context: Any, forward: tuple[int, ...]) -> int | None:
    """Wait for the ranks, passing the first of `forward` that reaches this process on to each; that signal."""
    with stop_on_signals(forward, at_once=False) as request:
        sent: int | None = None
        try:
            while not context.join(timeout=0.2, grace_period=FAILED_RANK_GRACE):
                if request.signum is not None and sent is None:
                    sent = request.signum
                    for p in context.processes:
                        if p.is_alive():
                            os.kill(p.pid, sent)
        except mp.ProcessExitedException:
            pass
        except mp.ProcessRaisedException as e:
            raise WorkFailed(f"a training process crashed: {str(e).strip().splitlines()[-1]}") from None
        except BaseException:
            lifetime.end_processes(context.processes)
            raise
        return sent if sent is not None else request.signum


def _outcome(outdir: Path, sent: int | None) -> Any:
    """Rank 0's result; else the first rank's error, or the ranks' stop (rank 0's line), raised again."""
    errors = sorted(outdir.glob("error-*.json"))
    if errors:
        err = json.loads(errors[0].read_text())
        raise (UserError if err["kind"] == "user" else WorkFailed)(err["message"])
    stops = sorted(outdir.glob("stopped-*.json"))
    if stops:
        said = json.loads(stops[0].read_text())
        raise Stopped(int(said["signum"]), str(said["message"]))
    result = outdir / "result.json"
    if not result.is_file():
        if sent is not None:  # the ranks were signalled before they could say what they kept
            raise Stopped(sent, "the processes ended before their first step; nothing new was written")
        raise WorkFailed("a training process exited without a result; rerun with --debug for its traceback")
    return json.loads(result.read_text())
