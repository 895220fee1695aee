"""A process group that ends instead of hanging: the ranks agree before they work, and name who went silent.

Across machines a rank can see other files than rank 0 (another mount of OUT, a stale copy of RUN), fail
where the others do not (OUT unreadable on its node), or stop answering in the middle of a collective
(killed, stopped, stuck). `agree` makes every rank say, once, what it sees and whether it failed; a rank
that differs or failed ends the job on every rank with one line naming that rank and its host, instead of
leaving the others waiting for it. `Heartbeat` keeps a counter per rank in the group's store (the
rendezvous store under torchrun); when a collective fails (the process group's timeout, or a peer that
went away), `silent_ranks` tells which ranks stopped counting, so the line names them.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import torch.distributed as dist

from alexrepro.distributed import DistInfo, gather_objects
from alexrepro.errors import UserError, WorkFailed

# What each rank says it sees, and how a difference from rank 0's is told (the key's meaning, what to do).
FACTS = {
    "set": ("sees another prepared set in OUT than rank 0",
            "every node must read the same OUT (a shared file system, or identical copies)"),
    "resume": ("would resume from another checkpoint than rank 0",
               "every node must see the same RUN, on a shared file system"),
    "recipe": ("resolved another recipe than rank 0",
               "run the same command, with the same alexrepro, on every node"),
}


def where(rank: int, host: str, pid: int | None = None) -> str:
    """'rank 1 (pid 4242 on node-b)': how a line names a rank."""
    return f"rank {rank} ({'pid ' + str(pid) + ' on ' if pid else 'on '}{host})"


def agree(info: DistInfo, failure: str | None, facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's host, pid, failure and facts, by rank; a UserError on every rank (printed by rank 0 only)
    if a rank failed (`failure`: its one line) or its facts differ from rank 0's."""
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "failure": failure, "facts": facts}
    every = gather_objects(mine)
    for rank, said in enumerate(every):
        if said["failure"]:
            raise UserError(f"{where(rank, said['host'], said['pid'])}: {said['failure']}", quiet=info.rank != 0)
    reference = every[0]["facts"]
    for rank, said in enumerate(every[1:], start=1):
        for key, (differs, todo) in FACTS.items():
            if said["facts"].get(key) != reference.get(key):
                raise UserError(f"{where(rank, said['host'], said['pid'])} {differs} "
                                f"({_short(said['facts'].get(key))} against {_short(reference.get(key))}): {todo}",
                                quiet=info.rank != 0)
    return every


def _short(value: Any) -> str:
    text = "nothing" if value is None else str(value)
    return text if len(text) <= 24 else text[:23] + "…"


BEAT = 1.0  # s between a rank's beats; a rank that misses SILENT_BEATS of them in a row is named
SILENT_BEATS = 3


def _client(timeout: float) -> dist.TCPStore:
    """A connection of our own to the group's store (MASTER_ADDR:MASTER_PORT, as torchrun and launch set)."""
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=datetime.timedelta(seconds=timeout), wait_for_workers=False)


class Heartbeat:
    """This rank's counter in the group's store, raised every `period` seconds by a daemon thread."""

    def __init__(self, info: DistInfo, period: float = BEAT) -> None:
        self.info = info
        self.period = period
        self.prefix = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.store: dist.TCPStore | None = None

    def start(self) -> Heartbeat:
        if not self.info.distributed or "MASTER_ADDR" not in os.environ:
            return self
        # a name for this group's keys, from rank 0: torchrun may keep its store over the group's restarts, and
        # the restart counts it gives the ranks are their node's own, not the group's
        self.prefix = f"alexrepro/{gather_objects(uuid.uuid4().hex)[0]}"
        self.store = _client(max(30.0, SILENT_BEATS * self.period))
        self.store.set(self._key("where", self.info.rank), f"{socket.gethostname()} {os.getpid()}")
        self.store.add(self._key("beat", self.info.rank), 1)
        self._thread = threading.Thread(target=self._run, name="alexrepro-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.store.add(self._key("beat", self.info.rank), 1)  # type: ignore[union-attr]
            except (RuntimeError, OSError):  # the store went away with the group: nothing left to tell
                return

    def _key(self, what: str, rank: int) -> str:
        return f"{self.prefix}/{what}/{rank}"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.period)

    def silent_ranks(self) -> list[str]:
        """The other ranks whose counters stood still for SILENT_BEATS beats, each as `where` names it; ['the
        group's store'] when the store itself does not answer (rank 0's process, or its torchrun, holds it)."""
        if self.store is None:
            return []
        others = [r for r in range(self.info.world_size) if r != self.info.rank]
        try:
            client = _client(max(5.0, SILENT_BEATS * self.period))
            before = {r: self._count(client, r) for r in others}
            time.sleep(SILENT_BEATS * self.period)
            after = {r: self._count(client, r) for r in others}
            return [self._named(client, r) for r in others if after[r] == before[r]]
        except (RuntimeError, OSError):
            return ["the group's store (held by rank 0's process, or its torchrun)"]


    def _count(self, client: dist.TCPStore, rank: int) -> int:
        return int(client.add(self._key("beat", rank), 0))  # adding 0 reads the counter (0 if it never beat)

    def _named(self, client: dist.TCPStore, rank: int) -> str:
        try:
            host, pid = client.get(self._key("where", rank)).decode().split()
            return where(rank, host, int(pid))
        except (RuntimeError, OSError, ValueError):
            return f"rank {rank}"


@contextlib.contextmanager
def named_failures(info: DistInfo, timeout: float) -> Iterator[Heartbeat]:
    """Within the block this rank beats; an error escaping it while another rank is silent (a collective that
    failed because that rank died, stopped or stuck) becomes one WorkFailed naming that rank."""
    beat = Heartbeat(info).start()
    try:
        yield beat
    except (UserError, WorkFailed):
        raise
    except Exception as e:
        silent = beat.silent_ranks()
        if not silent:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WorkFailed(
            f"{', '.join(silent)} stopped answering; {where(info.rank, socket.gethostname(), os.getpid())} "
            f"ends the job after a collective failed ({' '.join(first.split())[:160]}); a collective waits "
            f"at most the group's timeout, {timeout:g} s (train --group-timeout)") from None
    finally:
        beat.stop()
