"""Listing the images of a split in SRC: a folder (flat, or one folder per class) or an uncompressed tar.

Tars are read in place: ILSVRC2012_img_train.tar holds one <wnid>.tar per class, ILSVRC2012_img_val.tar
is flat; each image is found by its byte offset and size inside the outer tar. Sources are taken as they
are found: symlinked class folders and files are followed (loops and dangling links reported), file
names that are not UTF-8 get `\\xNN`-escaped keys, and tar members outside the class structure (absolute
or '..' paths, links, devices, deeper folders) are reported, never read and never a class.

Every file is listed, whatever its name or suffix: prep reads it if Pillow opens it as an image and
otherwise reports it in skipped.tsv with the reason (nothing is dropped without a word). A folder inside a
class folder is reported, not read. `leave_out` (the OUT being prepared, when it lies inside SRC) is
neither listed nor a class, so a prep into it resumes with the same listing.
"""

from __future__ import annotations

import errno
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from alexrepro.errors import UserError

Problem = tuple[str, str]  # (key, reason): a file found and not read, reported in skipped.tsv
NOT_A_FILE = "not a regular file (a FIFO, socket or device): not read"
OUTSIDE = "outside the archive (an absolute path or '..'): not read"


@dataclass(frozen=True)
class ListedImage:
    """One image file found in SRC, before it is labelled: its key, file stem, class folder and location."""

    key: str
    stem: str
    folder: str | None  # the class folder (or class tar) the file sits in, if any
    path: str
    offset: int = -1
    size: int = -1


def printable(text: str) -> str:
    """`text` as valid UTF-8: bytes of a file name that are not UTF-8 (which Python decodes to lone
    surrogates) become `\\xNN` escapes, so keys, skipped.tsv and the manifest always encode."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def is_class_tar(name: str) -> bool:
    """A tar member that is a class's own tar (<wnid>.tar), not one of its images."""
    return name.lower().endswith(".tar")


def _same(path: Path, other: Path | None) -> bool:
    return other is not None and path.resolve() == other


def stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def _key(path: Path, root: Path) -> str:
    return printable(path.relative_to(root).as_posix())


def class_folders(folder: Path, root: Path, leave_out: Path | None = None) -> tuple[list[Path], list[Problem]]:
    """The class folders of a split folder, symlinked ones followed; links that loop or lead nowhere reported.

    A class folder that resolves to the split folder or one above it would list the split's own files
    again (a loop), so it is reported and not read. `leave_out` (a resolved path: OUT) is passed over.
    """
    here = folder.resolve()
    folders, problems = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()  # follows symlinks
            target = path.resolve(strict=True) if entry.is_symlink() else None
        except (OSError, RuntimeError) as e:  # ELOOP, a dangling link; RuntimeError: a loop (Python < 3.13)
            loops = isinstance(e, RuntimeError) or e.errno == errno.ELOOP
            reason = "a symbolic link that loops" if loops else f"a broken symbolic link ({e.strerror or e})"
            problems.append((_key(path, root) + "/", f"{printable(reason)}: not read"))
            continue
        if not is_dir or _same(path, leave_out):
            continue
        if target is not None and (target == here or target in here.parents):
            problems.append((_key(path, root) + "/", f"a symbolic link to {printable(str(target))}, which holds "
                                                     "this split (a loop): not read"))
            continue
        folders.append(path)
    return folders, problems


def _kind(entry: os.DirEntry) -> str:
    """file, dir (symlinks followed), link (one that loops or leads nowhere) or other (FIFO, socket, device)."""
    try:
        if entry.is_file():
            return "file"
        if entry.is_dir():
            return "dir"
    except OSError:  # ELOOP
        return "link"
    return "link" if entry.is_symlink() else "other"


def list_folder(folder: Path, root: Path, leave_out: Path | None = None) -> tuple[list[ListedImage], list[Problem]]:
    """The files directly in `folder` (flat) and in its class folders (symlinks followed), sorted by key;
    and what was found and not listed (links that could not be followed, folders inside class folders,
    FIFOs and devices)."""
    entries: list[ListedImage] = []
    folders, problems = class_folders(folder, root, leave_out)  # it reports the split's links that do not resolve
    with os.scandir(folder) as found:
        for entry in sorted(found, key=lambda e: e.name):
            kind = _kind(entry)
            if kind == "file":
                entries.append(ListedImage(_key(Path(entry.path), root), stem(entry.name), None, entry.path))
            elif kind == "other":
                problems.append((_key(Path(entry.path), root), NOT_A_FILE))
    for class_folder in folders:
        wnid = printable(class_folder.name)
        try:
            with os.scandir(class_folder) as found:  # a symlinked file is read through its link
                listed = sorted(found, key=lambda e: e.name)
        except OSError as e:
            problems.append((_key(class_folder, root) + "/", f"cannot be listed ({e.strerror or e}): not read"))
            continue
        for entry in listed:
            file, kind = class_folder / entry.name, _kind(entry)
            if kind in ("file", "link"):  # a link that loops or leads nowhere is read, and skipped with its reason
                entries.append(ListedImage(_key(file, root), stem(entry.name), wnid, str(file)))
            elif kind == "dir":
                if not _same(file, leave_out):
                    problems.append((_key(file, root) + "/", "a folder inside a class folder (deeper than "
                                                             "<class>/<image>): not read"))
            else:
                problems.append((_key(file, root), NOT_A_FILE))
    return sorted(entries, key=lambda e: e.key), problems


def member_parts(name: str) -> list[str] | None:
    """A tar member's path as its parts, or None if it points outside the archive (absolute, or '..')."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        return None
    return parts


def _not_a_file(m: tarfile.TarInfo) -> str | None:
    """What a tar member is when it is not a regular file (a link, a device, ...); None for a file."""
    if m.isfile():
        return None
    for test, what in ((m.issym, "a symbolic link"), (m.islnk, "a hard link"), (m.ischr, "a device"),
                       (m.isblk, "a device"), (m.isfifo, "a FIFO")):
        if test():
            return what
    return "not a regular file"


def _list_class_tar(outer: tarfile.TarFile, m: tarfile.TarInfo, path: Path, base: str,
                    problems: list[Problem]) -> list[ListedImage]:
    """The images of one class tar (<wnid>.tar) inside the outer tar, located by their offsets in the outer file."""
    wnid, entries = printable(stem(m.name)), []
    try:
        with tarfile.open(fileobj=outer.extractfile(m), mode="r:") as inner:
            for im in inner:
                key = f"{base}/{printable(m.name)}/{printable(im.name)}"
                if im.isdir():
                    continue
                what = _not_a_file(im)
                if what is not None or member_parts(im.name) is None:
                    problems.append((key, f"{what} in a class tar, not an image file: not read" if what else OUTSIDE))
                else:
                    entries.append(ListedImage(key, stem(im.name), wnid, str(path), m.offset_data + im.offset_data,
                                               im.size))
    except (tarfile.TarError, EOFError) as e:
        problems.append((f"{base}/{printable(m.name)}", f"not a readable tar ({printable(str(e))}): not read"))
    return entries


def list_tar(path: Path, root: Path) -> tuple[list[ListedImage], list[Problem]]:
    """Images inside an uncompressed tar, read in place: <image> (flat), <class>/<image>, or the images of
    one <class>.tar per class; and the members outside that structure (links, devices, absolute or '..'
    paths, deeper folders), which are reported and never read, so they can never become a class."""
    base = printable(path.relative_to(root).as_posix())
    entries: list[ListedImage] = []
    problems: list[Problem] = []
    try:
        with tarfile.open(path, "r:") as outer:
            for m in outer:
                if m.isdir():
                    continue
                key, parts, what = f"{base}/{printable(m.name)}", member_parts(m.name), _not_a_file(m)
                if what is not None:
                    problems.append((key, f"{what} in the tar, not an image file: not read"))
                elif parts is None:
                    problems.append((key, OUTSIDE))
                elif is_class_tar(m.name):
                    if len(parts) == 1:
                        entries += _list_class_tar(outer, m, path, base, problems)
                    else:
                        problems.append((key, "a class tar inside a folder of the archive: not read"))
                else:
                    if len(parts) <= 2:
                        folder = printable(parts[0]) if len(parts) == 2 else None
                        entries.append(ListedImage(key, stem(m.name), folder, str(path), m.offset_data, m.size))
                    else:
                        problems.append((key, "deeper than <class>/<image> in the archive: not read"))
    except (tarfile.ReadError, EOFError) as e:
        raise UserError(
            f"{path} is not an uncompressed tar ({e}); prep reads .tar files in place, so decompress it first"
        ) from None
    return sorted(entries, key=lambda e: e.key), problems


def train_classes(location: Path, leave_out: Path | None = None) -> list[str]:
    """Class names of a training split, without listing images: the class folders list_folder reads, or the
    class tars and <class>/ folders of a tar that list_tar reads (the same rules, so the two agree)."""
    if location.is_dir():
        return sorted(printable(p.name) for p in class_folders(location, location, leave_out)[0])
    names = set()
    try:
        with tarfile.open(location, "r:") as tar:
            for m in tar:
                parts = member_parts(m.name)
                if not m.isfile() or parts is None:
                    continue
                if len(parts) == 1 and is_class_tar(m.name):
                    names.add(printable(stem(m.name)))
                elif len(parts) == 2 and not is_class_tar(m.name):
                    names.add(printable(parts[0]))
    except (tarfile.ReadError, EOFError) as e:
        raise UserError(f"{location} is not an uncompressed tar ({e}); prep reads .tar files in place, so "
                        "decompress it first") from None
    return sorted(names)
