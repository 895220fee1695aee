"""Finding the splits, their images and their labels in an ImageNet source tree (SRC).

Layouts read (docs/FORMAT.md; listing in alexrepro.data.source_files, labels in alexrepro.data.source_labels):
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

import os
from dataclasses import dataclass, field
from pathlib import Path

from alexrepro.data.imaging import image_suffixes, opens_as_image
from alexrepro.data.manifest import ClassInfo
from alexrepro.data.source_files import ListedImage, Problem, list_folder, list_tar, train_classes
from alexrepro.data.source_labels import Labelling, find_labelling, read_synset_mapping
from alexrepro.errors import UserError

SPLITS = ("train", "val", "test")
KAGGLE_ROOT = Path("ILSVRC") / "Data" / "CLS-LOC"  # Kaggle's image folders, under SRC


@dataclass(frozen=True)
class Item:
    """One source image: its key (path relative to SRC), label, and where its bytes lie."""

    key: str
    label: int
    path: str  # the image file, or the tar file that holds it
    offset: int = -1  # byte offset inside `path` for tar members; -1: the whole file
    size: int = -1


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
    """What prep found in SRC: the classes (sorted training WNIDs), the splits, and notes for the user."""

    root: Path
    classes: list[ClassInfo]
    splits: dict[str, SplitSource]
    notes: list[str] = field(default_factory=list)


def read_item(item: Item) -> bytes:
    """The encoded bytes of one source image (a plain file, or a slice of a tar file)."""
    if item.offset < 0:
        with open(item.path, "rb") as f:
            return f.read()
    with open(item.path, "rb") as f:
        f.seek(item.offset)
        return f.read(item.size)


def _locate_split(src: Path, image_root: Path, split: str) -> Path | None:
    """A split's folder, else an uncompressed tar in SRC whose name contains the split's name."""
    folder = image_root / split
    if folder.is_dir():
        return folder
    tars = sorted(p for p in src.glob("*.tar") if split in p.name.lower() and p.is_file())
    return tars[0] if tars else None


def _list_split(src: Path, location: Path, leave_out: Path | None) -> tuple[list[ListedImage], list[Problem]]:
    return list_folder(location, src, leave_out) if location.is_dir() else list_tar(location, src)


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
    leave_out: Path | None = None,
) -> Source:
    """Find the splits of SRC, list and label their images; classes are the sorted training WNIDs.

    `leave_out` (OUT, when it lies inside SRC) is not listed. A training class with no image is a UserError
    naming it, before any image is read.
    """
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
    located, wanted = _locate_splits(src, splits)
    labelling = find_labelling(src, devkit, val_labels, test_labels)
    leave_out = None if leave_out is None else Path(leave_out).resolve()
    listed, problems = {}, {}
    for s in wanted:
        listed[s], problems[s] = _list_split(src, located[s], leave_out)
    wnids, origin = _class_wnids(located, listed, labelling, leave_out)
    if "train" in listed:
        check_classes_hold_images(wnids, listed["train"], located["train"].relative_to(src).as_posix())
    names = _class_names(src, labelling, synset_mapping)
    classes = [ClassInfo(i, w, names.get(w, w)) for i, w in enumerate(wnids)]
    index = {c.wnid: c.index for c in classes}

    notes = [] if origin == "train" else [f"no training split: class indices are the sorted WNIDs of {origin}"]
    result: dict[str, SplitSource] = {}
    for split in wanted:
        where = located[split].relative_to(src).as_posix() + ("/" if located[split].is_dir() else "")
        made = _split_source(split, where, listed[split], problems[split], labelling, index)
        if isinstance(made, SplitSource):
            result[split] = made
        elif splits:
            raise UserError(f"{made}; give --{split}-labels FILE or --devkit DIR")
        else:
            notes.append(f"{split} not prepared: {made}")
    if not result:
        raise UserError(f"{src} has no split that can be labelled: {'; '.join(notes)}")
    return Source(src, classes, result, notes)


def _split_source(split: str, where: str, entries: list[ListedImage], problems: list[Problem],
                  labelling: Labelling, index: dict[str, int]) -> SplitSource | str:
    """One split's labelled images and the files not read; or, for a flat split without ground truth, why not."""
    not_read = list(problems)
    if split == "train":  # training images are labelled by their class folder or tar, never by name
        not_read += [(e.key, "not inside a class folder or class tar: not read") for e in entries if e.folder is None]
        entries = [e for e in entries if e.folder is not None]
    flat = [e for e in entries if e.folder is None]
    by_stem = labelling.stem_to_wnid(split, [e.stem for e in flat]) if flat else {}
    if flat and by_stem is None:
        if len(flat) == len(entries):
            return (f"{where} holds {len(flat)} images with no class folder and no ground truth was found "
                    f"(devkit ILSVRC*_ground_truth.txt + meta.mat, or LOC_val_solution.csv)")
        # beside class folders (a stray file): reported, and the split is kept
        not_read += [(e.key, "not inside a class folder, and no ground truth names its class: not read")
                     for e in flat]
        entries = [e for e in entries if e.folder is not None]
        flat = []
    items, unlabelled = _label_images(entries, by_stem or {}, index)
    layout = "class folders" if not flat else ("flat" if len(flat) == len(entries) else "mixed")
    return SplitSource(split, f"{layout} in {where}", items, sorted(not_read + unlabelled))


def _locate_splits(src: Path, splits: list[str] | None) -> tuple[dict[str, Path], list[str]]:
    """(where each split of SRC is, the splits to prepare: `splits`, else every one found); a UserError when
    SRC holds none or lacks one of `splits`."""
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
    return located, wanted


def _label_images(
    entries: list[ListedImage], by_stem: dict[str, str], index: dict[str, int]
) -> tuple[list[Item], list[tuple[str, str]]]:
    """(labelled items, (key, reason) of the others): by class folder, else by the flat file's stem."""
    items, unlabelled = [], []
    for image in entries:
        wnid = image.folder if image.folder is not None else by_stem.get(image.stem)
        if wnid is None:
            unlabelled.append((image.key, "no ground-truth label for this image"))
        elif wnid not in index:
            unlabelled.append((image.key, f"class {wnid} is not among the {len(index)} training classes"))
        else:
            items.append(Item(image.key, index[wnid], image.path, image.offset, image.size))
    return items, unlabelled


def check_classes_hold_images(wnids: list[str], entries: list[ListedImage], where: str) -> None:
    """A UserError naming the training classes that hold no image: no file at all, or none that Pillow opens.

    Cheap where it can be: a class with a file named as an image (a suffix Pillow reads) passes unread; only
    a class without one has its files' headers read, until one opens.
    """
    by_class: dict[str | None, list[ListedImage]] = {}
    for e in entries:
        by_class.setdefault(e.folder, []).append(e)
    suffixes, empty = image_suffixes(), []
    for wnid in wnids:
        files = by_class.get(wnid, [])
        if any(os.path.splitext(e.key)[1].lower() in suffixes for e in files):
            continue
        if not any(opens_as_image(read_listed(e)) for e in files):
            empty.append(f"{wnid} ({len(files)} files, none an image)" if files else f"{wnid} (no file)")
    if empty:
        raise UserError(
            f"{len(empty)} training {'class holds' if len(empty) == 1 else 'classes hold'} no image in {where}: "
            f"{', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}; add its images or remove the class "
            "folder (or class tar), then run prep again")


def check_every_class_written(split: SplitSource, classes: list[ClassInfo], skipped: dict[str, str]) -> None:
    """After prep read them: a UserError naming the training classes none of whose files was an image that
    reads (every one skipped, each with its reason)."""
    written = {it.label for it in split.items if it.key not in skipped}
    lost = [c for c in classes if c.index not in written]
    if lost:
        key = next(it.key for it in split.items if it.label == lost[0].index)
        raise UserError(
            f"{len(lost)} training {'class has' if len(lost) == 1 else 'classes have'} no image that reads "
            f"({', '.join(c.wnid for c in lost[:5])}{', ...' if len(lost) > 5 else ''}; e.g. {key}: "
            f"{skipped[key]}); mend or remove it in SRC, then prepare into a new or emptied OUT")


def read_listed(entry: ListedImage) -> bytes:
    """A listed file's bytes (a plain file, or a slice of a tar); none if it cannot be read."""
    try:
        return read_item(Item(entry.key, -1, entry.path, entry.offset, entry.size))
    except OSError:
        return b""


def _class_wnids(
    located: dict[str, Path], listed: dict[str, list[ListedImage]], labelling: Labelling, leave_out: Path | None
) -> tuple[list[str], str]:
    """The sorted class WNIDs: the training split's class folders, else the devkit's, else val's folders."""
    if "train" in located:
        wnids = train_classes(located["train"], leave_out)
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


def _class_names(src: Path, labelling: Labelling, synset_mapping: Path | None) -> dict[str, str]:
    names: dict[str, str] = {}
    for year in sorted(labelling.metas):
        names.update({w: words for w, words, _ in labelling.metas[year].values()})
    mapping = synset_mapping or (src / "LOC_synset_mapping.txt")
    if mapping.is_file():
        names.update(read_synset_mapping(mapping))
    return names
