"""Labels of flat folders in SRC: the devkit (meta.mat + ground truth), Kaggle's CSV, synset names.

A devkit labels image number i of a flat split through ILSVRC<year>_{validation,test}_ground_truth.txt
(an ILSVRC<year>_ID per line) and meta.mat (ILSVRC<year>_ID -> WNID; NOT the sorted-WNID order of the
class indices); Kaggle's LOC_val_solution.csv names the WNID of each ImageId directly.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from alexrepro.errors import UserError

FLAT_NAME = re.compile(r"^ILSVRC(?P<year>\d{4})_(?P<split>val|test)_(?P<num>\d{8})$")
GROUND_TRUTH_NAME = re.compile(r"^ILSVRC(?P<year>\d{4})_(?P<split>validation|test)_ground_truth\.txt$")
DEVKIT_DIRS = ("devkit", "devkit/data", "ILSVRC2012_devkit_t12", "ILSVRC2012_devkit_t12/data")


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
class Labelling:
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


def find_labelling(
    src: Path, devkit: Path | None, val_labels: Path | None, test_labels: Path | None
) -> Labelling:
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
    return Labelling(metas, ground_truth, kaggle if kaggle.is_file() else None, explicit)
