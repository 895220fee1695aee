"""What the host does around a benchmark: CPU time and busy cores, the page cache, and the state a run starts in.

Linux only (it reads /proc and calls mincore); elsewhere each function returns None or an empty record, so a
benchmark still runs. Used by `bench loader` to tell apart the causes of a loader's run-to-run spread:
a cold page cache, worker start-up, CPU contention from processes that are not ours, a narrowed CPU
affinity, a different kernel (sandbox) or CPU clock.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
import platform
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class ProcTimes:
    """One process's parent, command name and CPU seconds (user + system, all its threads)."""

    ppid: int
    comm: str
    cpu_s: float


def process_table() -> dict[int, ProcTimes]:
    """Every process's parent, name and CPU seconds, from /proc/<pid>/stat (empty off Linux)."""
    table: dict[int, ProcTimes] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return table
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # ended meanwhile, or not ours to read
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split at the last ")"
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        rest = raw[raw.rfind(")") + 2 :].split()
        table[pid] = ProcTimes(int(rest[1]), comm, (int(rest[11]) + int(rest[12])) / _TICKS)
    return table


def descendants(table: dict[int, ProcTimes], root: int) -> set[int]:
    """`root` and every process below it in `table`."""
    children: dict[int, list[int]] = {}
    for pid, p in table.items():
        children.setdefault(p.ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _system_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat's first line."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total


@dataclass
class CpuMeter:
    """CPU use over a window: this process and its children, every other process, and the whole machine.

    `start()` then `stop()`; `stop` returns seconds of CPU per second of wall time ("cores busy"). Children
    that end inside the window count through os.times() (reaped children), live ones through /proc.
    """

    wall: float = 0.0
    table: dict[int, ProcTimes] = field(default_factory=dict)
    reaped: float = 0.0
    jiffies: tuple[int, int] | None = None

    def start(self) -> CpuMeter:
        self.table, self.jiffies = process_table(), _system_jiffies()
        t = os.times()
        self.reaped = t.children_user + t.children_system
        self.wall = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.wall
        table, jiffies, t = process_table(), _system_jiffies(), os.times()
        ours = descendants(table, os.getpid())
        before = self.table
        ours_s = sum(p.cpu_s - (before[pid].cpu_s if pid in before else 0.0) for pid, p in table.items() if pid in ours)
        ours_s += t.children_user + t.children_system - self.reaped
        others = sorted(((p.cpu_s - before[pid].cpu_s, pid, p.comm) for pid, p in table.items()
                         if pid not in ours and pid in before and p.cpu_s > before[pid].cpu_s), reverse=True)
        cores = os.cpu_count() or 1
        out: dict[str, Any] = {
            "wall_s": round(wall, 4), "cores": cores,
            "ours_cores_busy": round(ours_s / wall, 3) if wall > 0 else None,
            "ours_processes": len(ours),
            "others_cores_busy": round(sum(s for s, _, _ in others) / wall, 3) if wall > 0 else None,
            "others_top": [{"pid": pid, "name": name, "cores_busy": round(s / wall, 3)} for s, pid, name in others[:5]],
        }
        if jiffies is not None and self.jiffies is not None and jiffies[1] > self.jiffies[1]:
            busy = (jiffies[0] - self.jiffies[0]) / (jiffies[1] - self.jiffies[1])
            out["machine_busy_fraction"] = round(busy, 4)  # of all cores, everything running
            out["machine_cores_busy"] = round(busy * cores, 3)
        return out


def _libc() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return libc


def resident_bytes(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """(bytes of the file in the page cache, file size), by mincore over a read-only mapping; None off Linux."""
    if not platform.system() == "Linux":
        return None
    size = os.path.getsize(path)
    if size == 0:
        return 0, 0
    page = mmap.PAGESIZE
    libc = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            return None
        try:
            pages = (size + page - 1) // page
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                return None
            resident = sum(v & 1 for v in vec)
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return min(resident * page, size), size


def page_cache_fraction(paths: Iterable[str | os.PathLike[str]]) -> float | None:
    """The share of the files' bytes in the page cache (None where it cannot be read)."""
    have = total = 0
    for p in paths:
        r = resident_bytes(p)
        if r is None:
            return None
        have, total = have + r[0], total + r[1]
    return round(have / total, 4) if total else None


def evict(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Ask the kernel to drop the files' clean pages from the page cache (a cold read next; best effort)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _cpu_mhz() -> float | None:
    """The mean clock of the cores now (cpufreq where there is one, else /proc/cpuinfo)."""
    freqs = []
    for f in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/scaling_cur_freq"):
        try:
            freqs.append(int(f.read_text()) / 1000)
        except (OSError, ValueError):
            pass
    if not freqs:
        try:
            freqs = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("cpu MHz")]
        except (OSError, ValueError, IndexError):
            return None
    return round(sum(freqs) / len(freqs), 1) if freqs else None


def host_state() -> dict[str, Any]:
    """What a run starts in: CPUs this process may use, load, clock, processes running, the kernel."""
    state: dict[str, Any] = {"kernel": platform.release(), "cpu_mhz": _cpu_mhz()}
    if hasattr(os, "sched_getaffinity"):
        state["affinity_cpus"] = len(os.sched_getaffinity(0))  # a narrowed mask is inherited by forked workers
    if hasattr(os, "getloadavg"):
        state["loadavg_1min"] = round(os.getloadavg()[0], 2)
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("procs_running"):
                state["procs_running"] = int(line.split()[1])
    except OSError:
        pass
    return state
