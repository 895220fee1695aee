"""Listing the images of a split in SRC: a folder (flat, or one folder per class) or an uncompressed tar.

Tars are read in place: ILSVRC2012_img_train.tar holds one <wnid>.tar per class, ILSVRC2012_img_val.tar
is flat; each image is found by its byte offset and size inside the outer tar.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from alexrepro.errors import UserError

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class ListedImage:
    """One image file found in SRC, before it is labelled: its key, file stem, class folder and location."""

    key: str
    stem: str
    folder: str | None  # the class folder (or class tar) the file sits in, if any
    path: str
    offset: int = -1
    size: int = -1


def is_image_name(name: str) -> bool:
    return not os.path.basename(name).startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def list_folder(folder: Path, root: Path) -> list[ListedImage]:
    """Images directly in `folder` (flat) and one level down (class folders), sorted by key."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        depth = len(Path(dirpath).relative_to(folder).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth == 0 else []
        class_folder = Path(dirpath).name if depth == 1 else None
        for name in filenames:
            if is_image_name(name):
                file = Path(dirpath) / name
                entries.append(ListedImage(file.relative_to(root).as_posix(), stem(name), class_folder, str(file)))
    return sorted(entries, key=lambda e: e.key)


def list_tar(path: Path, root: Path) -> list[ListedImage]:
    """Images inside an uncompressed tar, read in place: members, or members of one tar per class."""
    base = path.relative_to(root).as_posix()
    entries = []
    try:
        with tarfile.open(path, "r:") as outer:
            for member in outer:
                if not member.isfile():
                    continue
                if member.name.lower().endswith(".tar"):
                    entries += _list_class_tar(outer, member, f"{base}/{member.name}", str(path))
                elif is_image_name(member.name):
                    parent = os.path.basename(os.path.dirname(member.name)) or None
                    entries.append(ListedImage(f"{base}/{member.name}", stem(member.name), parent, str(path),
                                               member.offset_data, member.size))
    except tarfile.ReadError as e:
        raise UserError(
            f"{path} is not an uncompressed tar ({e}); prep reads .tar files in place, so decompress it first"
        ) from None
    return sorted(entries, key=lambda e: e.key)


def _list_class_tar(outer: tarfile.TarFile, member: tarfile.TarInfo, key: str, path: str) -> list[ListedImage]:
    """The images of one class tar inside `outer`, located by their offsets in the outer file."""
    entries = []
    with tarfile.open(fileobj=outer.extractfile(member), mode="r:") as inner:
        for image in inner:
            if image.isfile() and is_image_name(image.name):
                entries.append(ListedImage(f"{key}/{image.name}", stem(image.name), stem(member.name), path,
                                           member.offset_data + image.offset_data, image.size))
    return entries


def train_classes(location: Path) -> list[str]:
    """Class names of a training split from its folder names (or class tars), without listing images."""
    if location.is_dir():
        return sorted(d.name for d in location.iterdir() if d.is_dir() and not d.name.startswith("."))
    with tarfile.open(location, "r:") as tar:
        names = set()
        for member in tar:
            if member.isfile() and member.name.lower().endswith(".tar"):
                names.add(stem(member.name))
            elif member.isfile() and is_image_name(member.name) and os.path.dirname(member.name):
                names.add(os.path.basename(os.path.dirname(member.name)))
    return sorted(names)
