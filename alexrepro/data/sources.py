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
def _is_image_name(name: str) -> bool:
    return not os.path.basename(name).startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def list_folder(folder: Path, root: Path) -> list[_Entry]:
    """Images directly in `folder` (flat) and one level down (class folders), sorted by key."""
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        depth = len(Path(dirpath).relative_to(folder).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if depth == 0 else []
        class_folder = Path(dirpath).name if depth == 1 else None
        for name in filenames:
            if _is_image_name(name):
                p = Path(dirpath) / name
                entries.append(_Entry(p.relative_to(root).as_posix(), _stem(name), class_folder, str(p)))
    return sorted(entries, key=lambda e: e.key)


def list_tar(path: Path, root: Path) -> list[_Entry]:
    """Images inside an uncompressed tar, read in place: members, or members of one tar per class."""
    base = path.relative_to(root).as_posix()
    entries = []
    try:
        with tarfile.open(path, "r:") as outer:
            for m in outer:
                if not m.isfile():
                    continue
                if m.name.lower().endswith(".tar"):
                    inner_file = outer.extractfile(m)
                    with tarfile.open(fileobj=inner_file, mode="r:") as inner:
                        for im in inner:
                            if im.isfile() and _is_image_name(im.name):
                                entries.append(
                                    _Entry(
                                        f"{base}/{m.name}/{im.name}",
                                        _stem(im.name),
                                        _stem(m.name),
                                        str(path),
                                        m.offset_data + im.offset_data,
                                        im.size,
                                    )
                                )
                elif _is_image_name(m.name):
                    parent = os.path.basename(os.path.dirname(m.name)) or None
                    entries.append(
                        _Entry(f"{base}/{m.name}", _stem(m.name), parent, str(path), m.offset_data, m.size)
                    )
    except tarfile.ReadError as e:
        raise UserError(
            f"{path} is not an uncompressed tar ({e}); prep reads .tar files in place, so decompress it first"
        ) from None
    return sorted(entries, key=lambda e: e.key)


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


def _list_split(src: Path, location: Path) -> list[_Entry]:
    return list_folder(location, src) if location.is_dir() else list_tar(location, src)


def _train_classes(location: Path) -> list[str]:
    """Class names of a training split from its folder names (or class tars), without listing images."""
    if location.is_dir():
        return sorted(d.name for d in location.iterdir() if d.is_dir() and not d.name.startswith("."))
    with tarfile.open(location, "r:") as tar:
        names = set()
        for m in tar:
            if m.isfile() and m.name.lower().endswith(".tar"):
                names.add(_stem(m.name))
            elif m.isfile() and _is_image_name(m.name) and os.path.dirname(m.name):
                names.add(os.path.basename(os.path.dirname(m.name)))
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
    listed = {s: _list_split(src, located[s]) for s in wanted}
    wnids, origin = _class_wnids(located, listed, labelling)
    names = _class_names(src, labelling, synset_mapping)
    classes = [ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids)]
    index = {c.wnid: c.index for c in classes}

    notes = [] if origin == "train" else [f"no training split: class indices are the sorted WNIDs of {origin}"]
    result: dict[str, SplitSource] = {}
    for split in wanted:
        where = located[split].relative_to(src).as_posix() + ("/" if located[split].is_dir() else "")
        entries = listed[split]
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
        items, unlabelled = [], []
        for e in entries:
            wnid = e.folder if e.folder is not None else by_stem.get(e.stem)
            if wnid is None:
                unlabelled.append((e.key, "no ground-truth label for this image"))
            elif wnid not in index:
                unlabelled.append((e.key, f"class {wnid} is not among the {len(index)} training classes"))
            else:
                items.append(Item(e.key, index[wnid], e.path, e.offset, e.size))
        layout = "class folders" if not flat else ("flat" if len(flat) == len(entries) else "mixed")
        result[split] = SplitSource(split, f"{layout} in {where}", items, unlabelled)
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
