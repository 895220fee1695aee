"""Opening shard files: h5py handles and plain descriptors, how many one process keeps, and pread.

h5py handles do not survive fork or pickling: a shard opens its files lazily in each process, and
each process keeps at most MAX_OPEN_SHARDS h5py handles open (least recently used closed first), so
a set with more shards than `ulimit -n` still reads.

Batches of JPEG bytes (the loaders' hot path) skip HDF5 altogether: a jpeg shard's `data` is one
contiguous dataset, so its byte offset in the file (`contiguous_start`) plus `offsets` locate every
image, and the bytes are read with os.pread on a plain descriptor. A descriptor costs no HDF5 state,
so a process keeps far more of them (MAX_OPEN_FDS, from RLIMIT_NOFILE) than h5py handles and
ImageNet's ~1,250 shards stay open instead of reopening in every shuffled batch. See docs/FORMAT.md
and docs/PERFORMANCE.md.
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import h5py
import numpy as np

from alexrepro.errors import UserError

# Shard handles one process keeps open at once (each ~0.5 MB RSS and a descriptor): 256 stays well under
# the common `ulimit -n` of 1024 per worker; ImageNet has ~1,250 shards, so shuffled batches still reopen
# some (about 0.2 ms each). Batch reads of jpeg shards use plain descriptors instead (below).
MAX_OPEN_SHARDS = 256
# Plain descriptors (the pread path) one process keeps open at once. None: a quarter of the soft
# RLIMIT_NOFILE once raised to the hard limit, at most 65,536. A quarter, because a forked loader
# worker inherits its parent's descriptors beside its own, and h5py handles, pipes and sockets need
# the rest; with Linux's usual hard limit (≥ 524,288) that is 65,536, far above ImageNet's shard count.
MAX_OPEN_FDS: int | None = None

_FD_CAP_MAX = 65_536
_fd_cap: int | None = None  # descriptor_cap() derived from the limit, once per process tree


# --------------------------------------------------------------------------------------------- opening
def open_shard_file(path: str | os.PathLike[str]) -> h5py.File:
    """Open a shard read-only; a UserError that tells a missing or damaged shard from too many open files."""
    path = Path(path)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise _unreadable(path, e) from None


def open_shard_descriptor(path: str | os.PathLike[str]) -> int:
    """Open a shard as a plain read-only descriptor (for os.pread); the same UserErrors as open_shard_file."""
    path = Path(path)
    try:
        return os.open(path, os.O_RDONLY)  # not inherited by exec'd programs (PEP 446); forks do inherit it
    except OSError as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: OSError) -> UserError:
    if _too_many_open_files(e):
        return UserError(
            f"cannot open shard {path}: too many open files in this process (limit {_open_limit()}); "
            "raise `ulimit -n` (or use fewer loader workers) and run again; the shard itself is not at fault"
        )
    out = path.parent.parent
    reason = "missing" if not path.is_file() else " ".join(str(e).split())
    return UserError(
        f"cannot read shard {path} ({reason}); check the set with "
        f"alexrepro info {out} --verify and run alexrepro prep again to rebuild it"
    )


def _too_many_open_files(e: OSError) -> bool:
    """Whether `e` is EMFILE (h5py often leaves errno unset and only names it in the message)."""
    text = str(e)
    return e.errno == errno.EMFILE or "errno = 24" in text or "Too many open files" in text


def _open_limit() -> str:
    try:
        import resource

        return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, OSError, ValueError):
        return "unknown"


# --------------------------------------------------------------------------------------------- pread
def contiguous_start(dset: h5py.Dataset) -> int | None:
    """Where a uint8 dataset's bytes lie as they are in its file, or None if pread cannot read them.

    Only a contiguous dataset (no chunks, hence no compression or other filters) stored inside the
    file is its own bytes at one offset; an empty dataset has no storage and no offset.
    """
    if not hasattr(os, "pread") or dset.dtype != np.uint8 or dset.external:
        return None
    if dset.chunks is not None or dset.compression is not None:
        return None
    return dset.id.get_offset()


def pread_into(fd: int, view: memoryview, pos: int) -> int:
    """Read up to len(view) bytes at file position `pos` into `view`; how many were read (0 at the end)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], pos)  # straight into the caller's buffer
    data = os.pread(fd, len(view), pos)
    view[: len(data)] = data
    return len(data)


def descriptor_cap() -> int:
    """How many plain shard descriptors one process keeps open: MAX_OPEN_FDS, or derived from the limit."""
    global _fd_cap
    if MAX_OPEN_FDS is not None:
        return max(1, MAX_OPEN_FDS)
    if _fd_cap is None:  # once: forked workers inherit the raised limit and this value
        _fd_cap = max(1, min(_raise_open_limit() // 4, _FD_CAP_MAX))
    return _fd_cap


def _raise_open_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; return the soft limit then in force."""
    try:
        import resource
    except ImportError:  # not POSIX: no pread either, so no plain descriptors are opened
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4 * _FD_CAP_MAX
    target = 4 * _FD_CAP_MAX if hard == resource.RLIM_INFINITY else hard  # some kernels refuse an unlimited soft
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # not allowed here: keep the limit we have
    return soft


# --------------------------------------------------------------------------------------------- how many stay open
T = TypeVar("T")


class OpenFiles:
    """The shard files of one kind this process holds open, least recently used first, at most cap().

    Forgotten after a fork: the parent's handles and descriptors are not the child's to use or
    close, so a child reopens its own.
    """

    def __init__(self, cap: Callable[[], int]) -> None:
        self._cap = cap
        self._held: OrderedDict[int, LazyFile] = OrderedDict()
        self._pid = os.getpid()

    def _entries(self) -> OrderedDict[int, LazyFile]:
        if self._pid != os.getpid():
            self._held.clear()
            self._pid = os.getpid()
        return self._held

    def __len__(self) -> int:
        return len(self._entries())

    def touch(self, file: LazyFile) -> bool:
        """Whether `file` is held here; if it is, it becomes the most recently used."""
        held = self._entries()
        if id(file) not in held:
            return False
        held.move_to_end(id(file))
        return True

    def make_room(self) -> None:
        """Release the least recently used files until one more fits under the cap."""
        held = self._entries()
        while held and len(held) >= max(1, self._cap()):
            _, oldest = held.popitem(last=False)
            oldest.release()

    def add(self, file: LazyFile) -> None:
        self._entries()[id(file)] = file

    def discard(self, file: LazyFile) -> None:
        self._entries().pop(id(file), None)


class LazyFile(Generic[T]):
    """One shard's open file of one kind (an h5py handle or a descriptor), opened on first use in each process."""

    def __init__(self, held: OpenFiles, open_file: Callable[[], T], close_file: Callable[[T], None]) -> None:
        self._held = held
        self._open_file = open_file
        self._close_file = close_file
        self._value: T | None = None
        self._pid = -1

    def get(self) -> T:
        """This process's open file, opened now if it is not (closing the least recently used one first)."""
        pid = os.getpid()
        if self._value is not None and self._pid == pid and self._held.touch(self):
            return self._value
        self._value = None  # another process's file (after a fork): not ours to use or close
        self._held.make_room()
        self._value = self._open_file()
        self._pid = pid
        self._held.add(self)
        return self._value

    def release(self) -> None:
        """Close this process's file, if it holds one (it reopens on the next get)."""
        if self._value is not None and self._pid == os.getpid():
            self._close_file(self._value)
        self._value = None

    def close(self) -> None:
        """Release the file and forget it in this process's count."""
        if self._pid == os.getpid():
            self._held.discard(self)
        self.release()


HANDLES = OpenFiles(lambda: MAX_OPEN_SHARDS)  # h5py handles; the cap is read at each open
DESCRIPTORS = OpenFiles(descriptor_cap)  # plain descriptors for pread


def open_shard_count() -> int:
    """How many shard handles this process holds open (at most MAX_OPEN_SHARDS)."""
    return len(HANDLES)


def open_descriptor_count() -> int:
    """How many plain shard descriptors this process holds open (at most descriptor_cap())."""
    return len(DESCRIPTORS)
