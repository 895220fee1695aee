"""Exclusive folders: one alexrepro process at a time writes into a prepared set (OUT) or a run.

`lock_folder(folder, what)` takes an exclusive `fcntl.flock` on FOLDER/.alexrepro.lock and writes the
holder into it (JSON: pid, host, command, since, and a beat the holder raises every HEARTBEAT seconds). A
second process is refused with a UserError (exit 2) that names the holder. A clean release removes the file,
so a finished folder holds no lock file.

The kernel releases a flock when its holder ends, however it ends (kill -9 included). Where flock reaches
every machine (a local disk; NFS, whose locks the server keeps) that alone makes the lock; where it does not
(a file system mounted with local locks only, or one without flock, where the record alone is the lock), the
record decides: a record left in the file when the lock is taken is its last holder's. On this machine its
holder has ended (flock is exact here; without flock its pid is looked up); on another machine the beat tells:
one that does not move for STALE_BEATS beats is the record of a process or machine that ended. Such a stale
lock is taken over with one line naming it; a live holder refuses the new process, naming it.
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
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alexrepro.errors import UserError
from alexrepro.progress import console

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


HEARTBEAT = 10.0  # s between the holder's beats (its record rewritten), for a holder on another machine to see
STALE_BEATS = 3  # beats a record from another machine may stand still before its holder counts as ended
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # flock not offered here: the record alone locks


class FolderLock:
    """An exclusive lock on a folder, held from `acquire` to `release` (or the end of the process)."""

    def __init__(self, folder: str | os.PathLike[str], what: str) -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._beating = threading.Event()
        self._beat_thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        """Take the lock; a UserError naming the holder if another process has it (see the module's docstring)."""
        while True:
            try:  # O_CLOEXEC: programs this process runs do not inherit (and so do not hold) the lock
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise UserError(f"cannot lock {self.what} {self.folder} ({e.strerror or e}); "
                                "choose a folder you can write to") from None
            flocked = self._flock(fd)
            if self._is_current(fd):
                break
            os.close(fd)  # a holder removed this file as it released it: lock the file now in its place
        try:
            self._take_over(_read_fd(fd), fd, flocked)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._write_record(0)
        self._beat_thread = threading.Thread(target=self._beat, name="alexrepro-lock-beat", daemon=True)
        self._beat_thread.start()
        return self

    def _flock(self, fd: int) -> bool:
        """Lock `fd`: True if flocked, False where flock is not offered; a UserError naming the holder if held."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as e:
            if e.errno in NO_FLOCK:
                return False
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"cannot lock {self.what} {self.folder} ({e.strerror or e})") from None
            raise self._refusal(read_holder(self.folder)) from None

    def _refusal(self, holder: dict[str, Any] | None) -> UserError:
        return UserError(f"{self.what} {self.folder} is in use by another alexrepro: {_holder_text(holder)}; "
                         "wait for it to end (or stop it), then run this again")

    def _take_over(self, raw: bytes, fd: int, flocked: bool) -> None:
        """Judge the record the file held when it was locked: nothing, a stale lock (one line, then taken over),
        or a live holder that flock did not see (a UserError naming it)."""
        if not raw.strip():
            return
        holder = _parse(raw)
        if holder is None:  # torn by a beat being written (read it again), or not a record at all (stale)
            time.sleep(0.1)
            raw = _read_fd(fd)
            holder = _parse(raw)
        if holder is not None and holder.get("host") != socket.gethostname():  # another machine's: does it beat?
            if _moves(raw, fd, STALE_BEATS * HEARTBEAT):
                raise self._refusal(holder)
            why = f"not refreshed for {STALE_BEATS * HEARTBEAT:g} s: its process or its machine has ended"
        elif holder is None:
            why = "it names no holder"
        elif not flocked and (holder.get("pid") == os.getpid() or _running(holder.get("pid"))):
            raise self._refusal(holder)  # without flock, a running pid here is taken to be the holder
        else:
            why = "its process has ended"
        named = f"of {_holder_text(holder)} " if holder else ""
        console.print(f"note: {self.what} {self.folder}: taking over a stale lock {named}({why})",
                      soft_wrap=True, markup=False, highlight=False)

    def _write_record(self, beat: int) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command_line(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "beat": beat}
        data = (json.dumps(record) + "\n").encode("utf-8", "backslashreplace")
        with contextlib.suppress(OSError, TypeError):  # the name is for messages; a full disk fails the next write
            os.pwrite(self._fd, data, 0)  # type: ignore[arg-type]
            os.ftruncate(self._fd, len(data))  # type: ignore[arg-type]

    def _beat(self) -> None:
        beat = 0
        while not self._beating.wait(HEARTBEAT):
            beat += 1
            self._write_record(beat)

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
        self._beating.set()
        if self._beat_thread is not None:
            self._beat_thread.join()
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing the last descriptor of the open file releases the flock
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_fd(fd: int) -> bytes:
    with contextlib.suppress(OSError):
        return os.pread(fd, 1 << 16, 0)
    return b""


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        holder = json.loads(raw)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _moves(raw: bytes, fd: int, seconds: float) -> bool:
    """Whether the record changes (its holder beats) within `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.5, seconds / 10))
        if _read_fd(fd) != raw:
            return True
    return False


def _running(pid: object) -> bool:
    """Whether a process with this pid runs on this machine (one we may not signal counts)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike[str], what: str) -> Iterator[FolderLock]:
    """Hold the lock of `folder` (an existing folder) for the block; `what` names it in messages ("OUT")."""
    with FolderLock(folder, what) as lock:
        yield lock
