"""Atomic file writes: write to a temporary name in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alexrepro.errors import UserError


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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
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
