"""Finding the splits, their images and their labels in an ImageNet source tree (SRC).

Layouts read (DESIGN.md "Sources prep must read"):
    class-per-folder      <split>/<wnid>/<name>.JPEG (train, and val/test when foldered)
    flat + devkit         <split>/ILSVRC<year>_<split>_%08d.JPEG labelled by the devkit's
                          ILSVRC<year>_{validation,test}_ground_truth.txt (ILSVRC<year>_ID per line)
                          through meta.mat (ILSVRC<year>_ID -> WNID; NOT the sorted-WNID order)
    flat + Kaggle         val/ILSVRC2012_val_%08d.JPEG labelled by LOC_val_solution.csv
    tar files, in place   ILSVRC2012_img_train.tar (one <wnid>.tar per class inside) and
                          ILSVRC2012_img_val.tar (flat); images are read at their byte offsets
Class indices are the sorted WNIDs (folder names) of the training split.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from alexrepro.errors import UserError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
FLAT_NAME = re.compile(r"^ILSVRC(?P<year>\d{4})_(?P<split>val|test)_(?P<num>\d{8})$")
GROUND_TRUTH_NAME = re.compile(r"^ILSVRC(?P<year>\d{4})_(?P<split>validation|test)_ground_truth\.txt$")
KAGGLE_ROOT = Path("ILSVRC") / "Data" / "CLS-LOC"  # Kaggle's image folders, under SRC
DEVKIT_DIRS = ("devkit", "devkit/data", "ILSVRC2012_devkit_t12", "ILSVRC2012_devkit_t12/data")


@dataclass(frozen=True)
class Item:
    """One source image: its key (path relative to SRC), label, and where its bytes lie."""

    key: str
    label: int
    path: str  # the image file, or the tar file that holds it
    offset: int = -1  # byte offset inside `path` for tar members; -1: the whole file
    size: int = -1


@dataclass(frozen=True)
class ClassInfo:
    index: int
    wnid: str
    name: str


@dataclass
class SplitSource:
    """The images of one split, plus files found but not labelled (they count as skipped)."""

    name: str
    layout: str
    items: list[Item]
    unlabelled: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)

    @property
    def found(self) -> int:
        return len(self.items) + len(self.unlabelled)


@dataclass
class Source:
    root: Path
    classes: list[ClassInfo]
    splits: dict[str, SplitSource]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Entry:
    key: str
    stem: str
    folder: str | None  # the class folder (or class tar) the file sits in, if any
    path: str
    offset: int = -1
    size: int = -1


def read_item(item: Item) -> bytes:
    """The encoded bytes of one source image (a plain file, or a slice of a tar file)."""
    if item.offset < 0:
        with open(item.path, "rb") as f:
            return f.read()
    with open(item.path, "rb") as f:
        f.seek(item.offset)
        return f.read(item.size)


# --------------------------------------------------------------------------------------------- listing
Problem = tuple[str, str]  # (key, reason): a file found and not read, reported in skipped.tsv
OUTSIDE = "outside the archive (an absolute path or '..'): not read"


def printable(text: str) -> str:
    """`text` as valid UTF-8: bytes of a file name that are not UTF-8 (which Python decodes to lone
    surrogates) become `\\xNN` escapes, so keys, skipped.tsv and the manifest always encode."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that did not come from a file name
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def _is_image_name(name: str) -> bool:
    return not os.path.basename(name).startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def _key(path: Path, root: Path) -> str:
    return printable(path.relative_to(root).as_posix())


def _class_folders(folder: Path, root: Path) -> tuple[list[Path], list[Problem]]:
    """The class folders of a split folder, symlinked ones followed; links that loop or lead nowhere reported.

    A class folder that resolves to the split folder or one above it would list the split's own files
    again (a loop), so it is reported and not read.
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
        if not is_dir:
            continue
        if target is not None and (target == here or target in here.parents):
            problems.append((_key(path, root) + "/", f"a symbolic link to {printable(str(target))}, which holds "
                                                     "this split (a loop): not read"))
            continue
        folders.append(path)
    return folders, problems


def list_folder(folder: Path, root: Path) -> tuple[list[_Entry], list[Problem]]:
    """Images directly in `folder` (flat) and in its class folders (symlinks followed), sorted by key;
    and the links that could not be followed."""
    entries = []
    for path in sorted(folder.iterdir()):
        if _is_image_name(path.name) and not path.is_dir():
            entries.append(_Entry(_key(path, root), _stem(path.name), None, str(path)))
    folders, problems = _class_folders(folder, root)
    for class_folder in folders:
        wnid = printable(class_folder.name)
        try:
            names = sorted(os.listdir(class_folder))  # a symlinked file is read through its link
        except OSError as e:
            problems.append((_key(class_folder, root) + "/", f"cannot be listed ({e.strerror or e}): not read"))
            continue
        for name in names:
            p = class_folder / name
            if _is_image_name(name) and not p.is_dir():
                entries.append(_Entry(_key(p, root), _stem(name), wnid, str(p)))
    return sorted(entries, key=lambda e: e.key), problems


def _member_parts(name: str) -> list[str] | None:
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


def _class_tar_entries(outer: tarfile.TarFile, m: tarfile.TarInfo, path: Path, base: str,
                       problems: list[Problem]) -> list[_Entry]:
    """The images of one class tar (<wnid>.tar) inside the outer tar, read in place."""
    wnid, entries = printable(_stem(m.name)), []
    try:
        with tarfile.open(fileobj=outer.extractfile(m), mode="r:") as inner:
            for im in inner:
                key = f"{base}/{printable(m.name)}/{printable(im.name)}"
                if im.isdir():
                    continue
                what = _not_a_file(im)
                if what is not None or _member_parts(im.name) is None:
                    problems.append((key, f"{what} in a class tar, not an image file: not read" if what else OUTSIDE))
                elif _is_image_name(im.name):
                    entries.append(_Entry(key, _stem(im.name), wnid, str(path), m.offset_data + im.offset_data,
                                          im.size))
    except (tarfile.TarError, EOFError) as e:
        problems.append((f"{base}/{printable(m.name)}", f"not a readable tar ({printable(str(e))}): not read"))
    return entries


def list_tar(path: Path, root: Path) -> tuple[list[_Entry], list[Problem]]:
    """Images inside an uncompressed tar, read in place: <image> (flat), <class>/<image>, or the images of
    one <class>.tar per class; and the members outside that structure (links, devices, absolute or '..'
    paths, deeper folders), which are reported and never read, so they can never become a class."""
    base = printable(path.relative_to(root).as_posix())
    entries: list[_Entry] = []
    problems: list[Problem] = []
    try:
        with tarfile.open(path, "r:") as outer:
            for m in outer:
                if m.isdir():
                    continue
                key, parts, what = f"{base}/{printable(m.name)}", _member_parts(m.name), _not_a_file(m)
                if what is not None:
                    problems.append((key, f"{what} in the tar, not an image file: not read"))
                elif parts is None:
                    problems.append((key, OUTSIDE))
                elif m.name.lower().endswith(".tar"):
                    if len(parts) == 1:
                        entries += _class_tar_entries(outer, m, path, base, problems)
                    else:
                        problems.append((key, "a class tar inside a folder of the archive: not read"))
                elif _is_image_name(m.name):
                    if len(parts) <= 2:
                        folder = printable(parts[0]) if len(parts) == 2 else None
                        entries.append(_Entry(key, _stem(m.name), folder, str(path), m.offset_data, m.size))
                    else:
                        problems.append((key, "deeper than <class>/<image> in the archive: not read"))
    except (tarfile.ReadError, EOFError) as e:
        raise UserError(
            f"{path} is not an uncompressed tar ({e}); prep reads .tar files in place, so decompress it first"
        ) from None
    return sorted(entries, key=lambda e: e.key), problems


# --------------------------------------------------------------------------------------------- labels
def read_meta(path: Path) -> tuple[str, dict[int, tuple[str, str, bool]]]:
    """A devkit meta.mat: (year, {ILSVRC<year>_ID: (wnid, words, is_leaf)})."""
    import numpy as np
    import scipy.io

    try:
        synsets = np.atleast_1d(scipy.io.loadmat(str(path), squeeze_me=True)["synsets"]).ravel()
        id_field = next(f for f in synsets.dtype.names if re.fullmatch(r"ILSVRC\d{4}_ID", f))
    except (OSError, ValueError, KeyError, TypeError, StopIteration) as e:
        raise UserError(f"{path} is not a devkit meta.mat with a synsets table ({e}); check --devkit") from None
    table = {}
    for row in synsets:
        leaf = "num_children" not in synsets.dtype.names or int(row["num_children"]) == 0
        table[int(row[id_field])] = (str(row["WNID"]).strip(), str(row["words"]).strip(), leaf)
    return id_field[6:10], table


def read_ground_truth(path: Path) -> list[int]:
    """A devkit ground-truth file: the ILSVRC<year>_ID of image number i on line i."""
    try:
        return [int(line) for line in path.read_text().split()]
    except ValueError:
        raise UserError(f"{path} is not a devkit ground-truth file (one integer ID per line)") from None


def read_kaggle_solution(path: Path) -> dict[str, str]:
    """Kaggle's LOC_val_solution.csv: {ImageId: wnid}, the first WNID of PredictionString."""
    labels = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                labels[row["ImageId"].strip()] = row["PredictionString"].split()[0]
            except (KeyError, IndexError, AttributeError):
                raise UserError(f"{path} is not Kaggle's LOC_val_solution.csv (ImageId,PredictionString)") from None
    return labels


def read_synset_mapping(path: Path) -> dict[str, str]:
    """Kaggle's LOC_synset_mapping.txt: {wnid: names}, one '<wnid> <names>' per line."""
    names = {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} as a synset mapping ({e}); check --synset-mapping") from None
    for line in text.splitlines():
        if line.strip():
            wnid, _, name = line.strip().partition(" ")
            names[wnid] = name.strip()
    if not any(re.fullmatch(r"n\d{8}", w) for w in names):
        raise UserError(f"{path} is not a synset mapping (lines of '<wnid> <names>', e.g. 'n01440764 tench, "
                        "Tinca tinca'); check --synset-mapping")
    return names


@dataclass
class _Labelling:
    """Where the labels of flat folders come from."""

    metas: dict[str, dict[int, tuple[str, str, bool]]]  # year -> meta table
    ground_truth: dict[tuple[str, str], Path]  # (year, "val"|"test") -> file
    kaggle: Path | None
    explicit: dict[str, Path]  # split -> labels file given on the command line

    def stem_to_wnid(self, split: str, stems: list[str]) -> dict[str, str] | None:
        """{stem: wnid} for a flat split's images, or None when nothing labels them."""
        flat = [m for m in (FLAT_NAME.match(s) for s in stems) if m]
        year = flat[0]["year"] if flat else None
        path = self.explicit.get(split)
        if path is not None and path.suffix.lower() == ".csv":
            return read_kaggle_solution(path)
        if path is None:
            path = self.ground_truth.get((year, split)) if year else None
        if path is not None:
            gt_year = GROUND_TRUTH_NAME.match(path.name)
            meta_year = gt_year["year"] if gt_year else year
            meta = self.metas.get(meta_year) or (next(iter(self.metas.values())) if len(self.metas) == 1 else None)
            if meta is None:
                raise UserError(f"{path} gives devkit IDs, but no meta.mat was found to map them; give --devkit DIR")
            ids = read_ground_truth(path)
            labels = {}
            for m in flat:
                num = int(m["num"])
                if 1 <= num <= len(ids) and ids[num - 1] in meta:
                    labels[m.string] = meta[ids[num - 1]][0]
            return labels
        if split == "val" and self.kaggle is not None:
            return read_kaggle_solution(self.kaggle)
        return None


def _find_labelling(
    src: Path, devkit: Path | None, val_labels: Path | None, test_labels: Path | None
) -> _Labelling:
    dirs = [devkit, devkit / "data"] if devkit is not None else [src / d for d in DEVKIT_DIRS]
    if devkit is None:
        for p in sorted(p for p in src.glob("*devkit*") if p.is_dir()):
            dirs += [p, p / "data"]
        dirs.append(src)
    metas: dict[str, dict[int, tuple[str, str, bool]]] = {}
    ground_truth: dict[tuple[str, str], Path] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        if (d / "meta.mat").is_file():
            year, table = read_meta(d / "meta.mat")
            metas.setdefault(year, table)
        for p in sorted(d.glob("ILSVRC*_ground_truth.txt")):
            m = GROUND_TRUTH_NAME.match(p.name)
            if m:
                split = "val" if m["split"] == "validation" else "test"
                ground_truth.setdefault((m["year"], split), p)
    if devkit is not None and not metas:
        raise UserError(f"no meta.mat in {devkit} or {devkit / 'data'}; point --devkit at the devkit folder")
    kaggle = src / "LOC_val_solution.csv"
    explicit = {s: p for s, p in (("val", val_labels), ("test", test_labels)) if p is not None}
    return _Labelling(metas, ground_truth, kaggle if kaggle.is_file() else None, explicit)


# --------------------------------------------------------------------------------------------- discovery
def _locate_split(src: Path, image_root: Path, split: str) -> Path | None:
    """A split's folder, else an uncompressed tar in SRC whose name contains the split's name."""
    folder = image_root / split
    if folder.is_dir():
        return folder
    tars = sorted(p for p in src.glob("*.tar") if split in p.name.lower() and p.is_file())
    return tars[0] if tars else None


def _list_split(src: Path, location: Path) -> tuple[list[_Entry], list[Problem]]:
    return list_folder(location, src) if location.is_dir() else list_tar(location, src)


def _train_classes(location: Path) -> list[str]:
    """Class names of a training split, without listing images: the class folders list_folder reads, or the
    class tars and <class>/ folders of a tar that list_tar reads (the same rules, so the two agree)."""
    if location.is_dir():
        return sorted(printable(p.name) for p in _class_folders(location, location)[0])
    names = set()
    try:
        with tarfile.open(location, "r:") as tar:
            for m in tar:
                parts = _member_parts(m.name)
                if not m.isfile() or parts is None:
                    continue
                if len(parts) == 1 and m.name.lower().endswith(".tar"):
                    names.add(printable(_stem(m.name)))
                elif len(parts) == 2 and _is_image_name(m.name):
                    names.add(printable(parts[0]))
    except (tarfile.ReadError, EOFError) as e:
        raise UserError(f"{location} is not an uncompressed tar ({e}); prep reads .tar files in place, so "
                        "decompress it first") from None
    return sorted(names)


def _check_file(path: Path | None, what: str, folder: bool = False) -> Path | None:
    if path is not None and not Path(path).exists():
        raise UserError(f"{what} {path} does not exist; check the path")
    if path is not None and not folder and Path(path).is_dir():
        raise UserError(f"{what} {path} is a folder; give the file itself")
    return None if path is None else Path(path)


def find_sources(
    src: Path,
    splits: list[str] | None = None,
    devkit: Path | None = None,
    val_labels: Path | None = None,
    test_labels: Path | None = None,
    synset_mapping: Path | None = None,
) -> Source:
    """Find the splits of SRC, list and label their images; classes are the sorted training WNIDs."""
    src = Path(src)
    if not src.is_dir():
        raise UserError(f"source {src} does not exist or is not a folder; give the ImageNet folder as SRC")
    for s in splits or []:
        if s not in SPLITS:
            raise UserError(f"unknown split {s!r}; choose from {', '.join(SPLITS)}")
    devkit = _check_file(devkit, "--devkit", folder=True)
    val_labels = _check_file(val_labels, "--val-labels")
    test_labels = _check_file(test_labels, "--test-labels")
    synset_mapping = _check_file(synset_mapping, "--synset-mapping")
    image_root = src / KAGGLE_ROOT if (src / KAGGLE_ROOT).is_dir() else src

    located = {s: loc for s in SPLITS if (loc := _locate_split(src, image_root, s)) is not None}
    if not located:
        raise UserError(
            f"{src} holds no recognisable ImageNet layout: expected train/, val/ or test/ folders "
            "or ILSVRC2012_img_train.tar / ILSVRC2012_img_val.tar; point SRC at the dataset folder"
        )
    wanted = list(splits) if splits else list(located)
    missing = [s for s in wanted if s not in located]
    if missing:
        raise UserError(f"{src} has no {missing[0]} split (found: {', '.join(located)}); check SRC or --split")

    labelling = _find_labelling(src, devkit, val_labels, test_labels)
    listed, problems = {}, {}
    for s in wanted:
        listed[s], problems[s] = _list_split(src, located[s])
    wnids, origin = _class_wnids(located, listed, labelling)
    names = _class_names(src, labelling, synset_mapping)
    classes = [ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids)]
    index = {c.wnid: c.index for c in classes}

    notes = [] if origin == "train" else [f"no training split: class indices are the sorted WNIDs of {origin}"]
    result: dict[str, SplitSource] = {}
    for split in wanted:
        where = located[split].relative_to(src).as_posix() + ("/" if located[split].is_dir() else "")
        entries, unlabelled = listed[split], list(problems[split])
        if split == "train":  # training images are labelled by their class folder or tar, never by name
            stray = [e for e in entries if e.folder is None]
            unlabelled += [(e.key, "not inside a class folder or class tar: not read") for e in stray]
            entries = [e for e in entries if e.folder is not None]
        flat = [e for e in entries if e.folder is None]
        by_stem = labelling.stem_to_wnid(split, [e.stem for e in flat]) if flat else {}
        if flat and by_stem is None:
            msg = (
                f"{where} holds {len(flat)} images with no class folder and no ground truth was found "
                f"(devkit ILSVRC*_ground_truth.txt + meta.mat, or LOC_val_solution.csv)"
            )
            if splits:
                raise UserError(f"{msg}; give --{split}-labels FILE or --devkit DIR")
            notes.append(f"{split} not prepared: {msg}")
            continue
        items = []
        for e in entries:
            wnid = e.folder if e.folder is not None else by_stem.get(e.stem)
            if wnid is None:
                unlabelled.append((e.key, "no ground-truth label for this image"))
            elif wnid not in index:
                unlabelled.append((e.key, f"class {wnid} is not among the {len(index)} training classes"))
            else:
                items.append(Item(e.key, index[wnid], e.path, e.offset, e.size))
        layout = "class folders" if not flat else ("flat" if len(flat) == len(entries) else "mixed")
        result[split] = SplitSource(split, f"{layout} in {where}", items, sorted(unlabelled))
    if not result:
        raise UserError(f"{src} has no split that can be labelled: {'; '.join(notes)}")
    return Source(src, classes, result, notes)


def _class_wnids(
    located: dict[str, Path], listed: dict[str, list[_Entry]], labelling: _Labelling
) -> tuple[list[str], str]:
    """The sorted class WNIDs: the training split's class folders, else the devkit's, else val's folders."""
    if "train" in located:
        wnids = _train_classes(located["train"])
        if not wnids:
            raise UserError(f"{located['train']} has no class folders (train/<wnid>/*.JPEG); check SRC")
        return wnids, "train"
    for year in sorted(labelling.metas, reverse=True):
        leaves = sorted(w for w, _, leaf in labelling.metas[year].values() if leaf)
        if leaves:
            return leaves, f"the ILSVRC{year} devkit"
    for split, entries in listed.items():
        folders = sorted({e.folder for e in entries if e.folder is not None})
        if folders:
            return folders, f"the {split} class folders"
    raise UserError("cannot tell the classes: no training split, devkit meta.mat or class folders; give --devkit")
def _class_names(src: Path, labelling: _Labelling, synset_mapping: Path | None) -> dict[str, str]:
    names: dict[str, str] = {}
    for year in sorted(labelling.metas):
        names.update({w: words for w, words, _ in labelling.metas[year].values()})
    mapping = synset_mapping or (src / "LOC_synset_mapping.txt")
    if mapping.is_file():
        names.update(read_synset_mapping(mapping))
    return names
