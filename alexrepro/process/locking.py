"""Exclusive folders: one alexrepro process at a time writes into a prepared set (OUT) or a run.

`lock_folder(folder, what)` takes an exclusive `fcntl.flock` on FOLDER/.alexrepro.lock and writes the
holder into it (JSON: pid, host, command, since). The kernel releases a flock when its holder ends, however
it ends (kill -9 included), so a lock is never stale: a file left by a killed process is simply locked
again by the next one. A second process is refused with a UserError (exit 2) that names the holder. A
clean release removes the file, so a finished folder holds no lock file.

On NFS, Linux emulates flock with POSIX byte-range locks, which NFS (lockd, or v4 itself) shares between
machines; the `host` in the message tells a holder on another machine from one on this one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alexrepro.errors import UserError

LOCK_FILE = ".alexrepro.lock"

_command: str | None = None  # the command line this process runs (set by the CLI)
_args: list[str] | None = None  # its arguments after `alexrepro`


def set_command_line(args: list[str]) -> None:
    """Record the command this process runs (`alexrepro ARGS`), for lock holders and resume hints."""
    global _command, _args
    _command = "alexrepro " + shlex.join(args)
    _args = list(args)


def command_args() -> list[str] | None:
    """The arguments after `alexrepro` of the command this process runs; None unless the CLI recorded them."""
    return None if _args is None else list(_args)


def command_line() -> str:
    """The command this process runs: as the CLI recorded it, else this process's own argv."""
    return _command or shlex.join(sys.argv)


def read_holder(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What the lock file of `folder` says about its holder (None if absent or unreadable)."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def _holder_text(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (it has not written its name yet)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')} "
            f"({holder.get('command')})")


class FolderLock:
    """An exclusive lock on a folder, held from `acquire` to `release` (or the end of the process)."""

    def __init__(self, folder: str | os.PathLike[str], what: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        """Take the lock; a UserError naming the holder if another process has it."""
        while True:
            try:  # O_CLOEXEC: programs this process runs do not inherit (and so do not hold) the lock
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise UserError(f"cannot lock {self.what} {self.folder} ({e.strerror or e}); "
                                "choose a folder you can write to") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise UserError(f"cannot lock {self.what} {self.folder} ({e.strerror or e})") from None
                raise UserError(
                    f"{self.what} {self.folder} is in use by another alexrepro: {_holder_text(read_holder(self.folder))}; "
                    "wait for it to end (or stop it), then run this again"
                ) from None
            if self._is_current(fd):
                break
            os.close(fd)  # a holder removed this file as it released it: lock the file now in its place
        self._fd = fd
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        with contextlib.suppress(OSError):  # the holder's name is for messages; a full disk fails the next write
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode("utf-8", "backslashreplace"), 0)
        return self

    def _is_current(self, fd: int) -> bool:
        """Whether the file `fd` locks is still the one at self.path (and not one removed meanwhile)."""
        try:
            here, there = os.fstat(fd), os.stat(self.path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        """Remove the lock file and release the lock (removed first, while still held: see acquire)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing the last descriptor of the open file releases the flock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike[str], what: str) -> Iterator[FolderLock]:
    """Hold the lock of `folder` (an existing folder) for the block; `what` names it in messages ("OUT")."""
    with FolderLock(folder, what) as lock:
        yield lock
