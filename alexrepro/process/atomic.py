"""Atomic file writes: write to a temporary name in the same folder, fsync, rename.

Also the one-line account of a failed write (disk full, read-only, no permission): `write_failure` and
`described_write_errors` name the path and the free space left on its file system.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import re
import shutil
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alexrepro.errors import UserError, WorkFailed
from alexrepro.process import lifetime

# Write errors that a user fixes by choosing another folder or its permissions (exit 2); every other one
# (disk full, quota, I/O error, file too large) is failed work (exit 1) whose fix is to free space and resume.
REFUSED_WRITES = (errno.EROFS, errno.EACCES, errno.EPERM)


def temp_name(path: Path) -> Path:
    """The temporary sibling a write goes to before its rename (unique per process)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed onto `path`.

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    lifetime.exit_if_orphaned()  # a worker whose parent has ended writes nothing more
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        lifetime.exit_if_orphaned()  # ... not even the rename that would publish what it wrote
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def writable_folder(path: str | os.PathLike[str], what: str, hint: str | None = None) -> Path:
    """Create `path` (and its parents) if needed and check it can be written; a UserError if not.

    `what` names the folder in the message, e.g. "OUT" or "--run"; `hint` says what to do instead.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; {hint or 'give a folder'}")
    hint = hint or "choose a folder you can write to"
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {path} ({e.strerror or e}); {hint}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write to {what} {path} (read-only or no permission); {hint}")
    return path


def writable_file(path: str | os.PathLike[str], what: str, hint: str | None = None) -> Path:
    """Check that a file can be written at `path` (creating its folder); a UserError if not.

    Call it before the work whose result goes there, so that a typo does not throw the result away.
    """
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    writable_folder(path.parent, f"{what} {path}: the folder", hint)
    return path


# --------------------------------------------------------------------------------------------- write errors
def free_space(path: str | os.PathLike[str]) -> int | None:
    """Bytes free (to this user) on the file system that holds `path` or its nearest existing folder."""
    for folder in (Path(path), *Path(path).parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'; whole bytes below 1 KiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def error_number(error: BaseException) -> int | None:
    """The errno of a failed write: the exception's own, or the one HDF5 only names in its text."""
    for e in (error, error.__context__):
        if isinstance(e, OSError) and e.errno:
            return e.errno
        found = re.search(r"errno = (\d+)", str(e)) if e is not None else None
        if found:
            return int(found[1])
    return None


def write_failure(path: str | os.PathLike[str], error: BaseException, hint: str) -> UserError | WorkFailed:
    """The one-line error for a write to `path` that failed with `error`: the reason and the free space.

    Read-only or forbidden (EROFS, EACCES, EPERM) is a UserError (exit 2); anything else, disk full
    first, is WorkFailed (exit 1). `hint` says what to do, e.g. "free space, then run the same prep again".
    """
    code = error_number(error)
    reason = os.strerror(code) if code else " ".join(str(error).split()) or type(error).__name__
    free = free_space(path)
    room = f"{format_bytes(free)} free there" if free is not None else "free space unknown"
    message = f"cannot write {path}: {reason} ({room}); {hint}"
    return UserError(message) if code in REFUSED_WRITES else WorkFailed(message)


def is_write_error(error: BaseException) -> bool:
    """An OSError, or HDF5's RuntimeError that carries an errno (h5py raises one when closing a file it
    could not extend)."""
    return isinstance(error, OSError) or (isinstance(error, RuntimeError) and error_number(error) is not None)


@contextlib.contextmanager
def described_write_errors(path: str | os.PathLike[str], hint: str) -> Iterator[None]:
    """Within the block, a failed write becomes `write_failure(path, ...)`: one line, no traceback.

    Wrap only code that writes (to `path`): every OSError inside is taken for a write error. HDF5 objects
    of a file that could not be written fail again as they are freed, and h5py prints each of those
    failures as a traceback on stderr; within the block, and while the failed writer is freed, those are
    not printed (every other unraisable error is, as before).
    """
    with _quiet_hdf5_cleanup():
        try:
            yield
        except (OSError, RuntimeError) as e:
            if not is_write_error(e):
                raise
            failure = write_failure(path, e, hint)
            for err in (e, e.__context__):  # free the failed writer's objects now, while they are not printed
                if err is not None and err.__traceback__ is not None:
                    traceback.clear_frames(err.__traceback__)
            del e
            gc.collect()
            raise failure from None


def _hdf5_cleanup_failure(error: BaseException | None) -> bool:
    """h5py's report of an object that could not be flushed as it was freed (an errno in the text)."""
    return isinstance(error, RuntimeError) and error_number(error) is not None


@contextlib.contextmanager
def _quiet_hdf5_cleanup() -> Iterator[None]:
    # h5py (Cython) prints a failed deallocation twice: through sys.excepthook, then sys.unraisablehook.
    excepthook, unraisablehook = sys.excepthook, sys.unraisablehook

    def on_exception(kind: type[BaseException], value: BaseException, tb: Any) -> None:
        if not _hdf5_cleanup_failure(value):
            excepthook(kind, value, tb)

    def on_unraisable(unraisable: Any) -> None:
        if not _hdf5_cleanup_failure(unraisable.exc_value):
            unraisablehook(unraisable)

    sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook
