"""Child processes end with their parent, however the parent ends (kill -9 included), and write nothing after.

A worker calls `bind_to_parent(parent_pid)` first thing (pool initializers: `init_worker`; `worker_pool` is a
process pool whose workers do). On Linux that
arms the parent-death signal (prctl PR_SET_PDEATHSIG, SIGKILL): the kernel kills the worker the moment its
parent dies. Everywhere, `exit_if_orphaned()` before each write (alexrepro.process.atomic calls it before creating a
file and again before the rename that publishes it) ends a worker whose parent is gone, so nothing is
written after the parent's death even where the signal is not available.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from alexrepro.errors import WorkFailed

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHAN_EXIT = 1  # exit status of a worker that finds its parent gone

_parent: int | None = None  # the pid this process was bound to; None: not a bound worker


def _arm_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send `signum` to this process when its parent dies (Linux only); whether it could."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def bind_to_parent(parent_pid: int) -> None:
    """In a child: die (SIGKILL) when `parent_pid` dies; exit at once if it already has.

    The death signal is tied to the thread that started the child, so start workers from the main thread
    (ProcessPoolExecutor, multiprocessing and torch's spawn all do).
    """
    global _parent
    _parent = int(parent_pid)
    _arm_parent_death_signal(signal.SIGKILL)
    exit_if_orphaned()  # the parent may have died before the signal was armed


def parent_gone() -> bool:
    """Whether this is a bound worker whose parent has ended (it was re-parented)."""
    return _parent is not None and os.getppid() != _parent


def exit_if_orphaned() -> None:
    """End this process at once, writing nothing more, if it is a bound worker whose parent has ended."""
    if parent_gone():
        os._exit(ORPHAN_EXIT)


def init_worker(parent_pid: int) -> None:
    """Pool initializer: bind to the parent, and leave Ctrl-C to it.

    A terminal sends SIGINT to every process in the foreground group; the parent stops its workers itself
    and says what it kept, so a worker ignores SIGINT instead of dying with a traceback of its own.
    """
    bind_to_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


LOADER_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


def init_loader_worker(parent_pid: int, *_: object) -> None:
    """A loader's worker (DataLoader `worker_init_fn`, DALI's Python workers): bind to the parent, and leave
    every stop signal to it.

    Ctrl-C in a terminal, and a scheduler's SIGTERM or SIGUSR1 (SLURM signals every process of a job), reach
    the workers too; a worker that died of one would break the loader before training reaches the step where
    it checkpoints and stops. The parent ends its workers itself, and the parent-death signal ends them if
    it dies.
    """
    bind_to_parent(parent_pid)
    for signum in LOADER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


def stop_pool(pool: Executor, grace: float = 5.0) -> None:
    """End a ProcessPoolExecutor now: its workers are terminated (SIGTERM, then SIGKILL after `grace` s) and
    waited for; work in flight is lost, which is why every write is atomic.
    """
    # Python 3.14 has pool.terminate_workers(); before it the workers are only reachable as `_processes`.
    end_processes(list((getattr(pool, "_processes", None) or {}).values()), grace)
    pool.shutdown(wait=True, cancel_futures=True)


def end_processes(processes: list[Any], grace: float = 5.0) -> None:
    """Terminate (SIGTERM, then SIGKILL after `grace` s) the processes still alive, and wait for them."""
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(grace)
        if p.is_alive():
            p.kill()
            p.join()


# multiprocessing's resource tracker (one helper process per launching process, shared by the processes it
# spawns) unlinks the semaphores of processes ended at once and warns about each "leak" as it exits, after
# the command's last line. The cleaning is what is wanted; the warning is not a thing the user can act on.
TRACKER_WARNING = "ignore:resource_tracker:UserWarning"


def start_quiet_resource_tracker() -> None:
    """Start this process's resource tracker (if it is not running yet) with its leak warning off.

    The tracker takes its warning filters from this interpreter's -W options when it starts, so the filter
    goes into sys.warnoptions first; call this before spawning processes.
    """
    from multiprocessing import resource_tracker

    if TRACKER_WARNING not in sys.warnoptions:
        sys.warnoptions.append(TRACKER_WARNING)
    resource_tracker.ensure_running()


@contextlib.contextmanager
def worker_pool(workers: int, died: str, setup: Callable[..., None] | None = None,
                setup_args: tuple[Any, ...] = ()) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` spawned processes bound to this one (`init_worker`, then `setup(*setup_args)`).

    Spawned, not forked: no h5py handle or progress-bar thread is inherited. If the block raises (a stop
    signal, a failed task), the workers end at once (`stop_pool`), and a worker that died (killed, out of
    memory) is WorkFailed(`died`); otherwise the pool shuts down, waiting for its workers.
    """
    ctx = multiprocessing.get_context("spawn")
    start_quiet_resource_tracker()
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_pool_worker,
                               initargs=(os.getpid(), setup, setup_args))
    try:
        yield pool
    except BaseException as e:
        stop_pool(pool)
        if isinstance(e, BrokenProcessPool):
            raise WorkFailed(died) from None
        raise
    pool.shutdown(wait=True)


def _init_pool_worker(parent_pid: int, setup: Callable[..., None] | None, setup_args: tuple[Any, ...]) -> None:
    init_worker(parent_pid)
    if setup is not None:
        setup(*setup_args)
