"""manifest.json, typed: what a prepared set holds (splits and their shards, classes, encoding, source).

The manifest is written and read only here: `Manifest.to_payload()` is exactly the JSON prep writes
(same keys, same order, so the same prep gives the same bytes) and `Manifest.from_payload()` reads it
back, filling what older or hand-written manifests leave out. Field by field: docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from alexrepro.data.shards import FORMAT_VERSION, IMAGE_SIZE, READABLE_VERSIONS
from alexrepro.data.stats_file import read_stats
from alexrepro.errors import UserError
from alexrepro.process.atomic import atomic_write_json

FORMAT_NAME = "alexrepro-prepared"
MANIFEST = "manifest.json"
SKIPPED = "skipped.tsv"  # path <TAB> reason of every source file not written (the manifest lists them per split)
CONVERTED = "converted.tsv"  # split, path and kinds of every source image prep converted (alexrepro.data.imaging.QUIRKS)


R = TypeVar("R", bound="_FlatRecord")


class _FlatRecord:
    """A JSON object of plain int and str fields, keys in field order (a class, a shard, a skipped file)."""

    def to_payload(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_payload(cls: type[R], payload: Mapping[str, Any]) -> R:
        """The record in `payload`; a KeyError for a missing field without a default, a ValueError for a bad value."""
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in payload:
                values[f.name] = _PLAIN[str(f.type)](payload[f.name])
            elif f.default is MISSING:
                raise KeyError(f.name)
        return cls(**values)


_PLAIN = {"int": int, "str": str}  # field annotation -> the conversion of its JSON value


@dataclass(frozen=True)
class ClassInfo(_FlatRecord):
    """One class: its index (the label), its WordNet ID and its readable name."""

    index: int
    wnid: str
    name: str = ""


@dataclass(frozen=True)
class ShardEntry(_FlatRecord):
    """One shard of a split: its path relative to OUT and how many images it holds."""

    file: str
    count: int


@dataclass(frozen=True)
class SkippedFile(_FlatRecord):
    """A source file prep did not write: its path relative to SRC and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class SplitEntry:
    """One split: images written, files found and skipped, the source layout, the shards in order, and the
    source images prep converted, counted by kind (alexrepro.data.imaging.QUIRKS; converted.tsv lists them)."""

    count: int
    shards: list[ShardEntry]
    found: int | None = None  # files found in SRC (written + skipped); None where no prep recorded it
    skipped: int = 0
    layout: str = ""  # e.g. "class folders in train/"
    skipped_files: list[SkippedFile] = field(default_factory=list)
    quirks: dict[str, int] = field(default_factory=dict)  # {QUIRKS kind: files}; empty where no prep recorded it

    def to_payload(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "found": self.found,
            "skipped": self.skipped,
            "layout": self.layout,
            "shards": [s.to_payload() for s in self.shards],
            "skipped_files": [s.to_payload() for s in self.skipped_files],
            "quirks": dict(self.quirks),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> SplitEntry:
        found = payload.get("found")
        return cls(
            count=int(payload["count"]),
            shards=[ShardEntry.from_payload(s) for s in payload["shards"]],
            found=None if found is None else int(found),
            skipped=int(payload.get("skipped", 0)),
            layout=str(payload.get("layout", "")),
            skipped_files=[SkippedFile.from_payload(s) for s in payload.get("skipped_files", [])],
            quirks={str(k): int(v) for k, v in payload.get("quirks", {}).items()},
        )


@dataclass(frozen=True)
class PrepRecord:
    """What makes two preps the same set: source and options (`identity`) and each split's listing digest."""

    identity: dict[str, Any]
    splits: dict[str, str]

    def to_payload(self) -> dict[str, Any]:
        return {"identity": dict(self.identity), "splits": dict(self.splits)}

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PrepRecord:
        return cls(dict(payload.get("identity", {})), {str(k): str(v) for k, v in payload.get("splits", {}).items()})


@dataclass(frozen=True)
class Manifest:
    """The contents of manifest.json."""

    encoding: str  # one of shards.ENCODINGS
    splits: dict[str, SplitEntry] = field(default_factory=dict)
    classes: list[ClassInfo] = field(default_factory=list)  # in index order
    source: str | None = None  # SRC, resolved
    quality: int | None = None  # JPEG quality; None for raw
    image_size: int = IMAGE_SIZE
    # prep --resize: "shorter-side" (§2: shorter side to 256, central crop) or "warp" (Caffe's
    # convert_imageset: the whole image to 256×256); manifests written before the option read as §2's.
    resize: str = "shorter-side"
    shard_size: int | None = None  # images per shard (--shard-size)
    skipped: int = 0  # source files not written, all splits together
    notes: list[str] = field(default_factory=list)  # what prep noticed about the source
    prep: PrepRecord | None = None
    format_version: int = FORMAT_VERSION  # of the prep that wrote the manifest (each shard has its own)

    def to_payload(self) -> dict[str, Any]:
        """The JSON object of manifest.json, keys in the order prep has always written them."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "source": self.source,
            "encoding": self.encoding,
            "quality": self.quality,
            "image_size": self.image_size,
            "resize": self.resize,
            "shard_size": self.shard_size,
            "classes": self.class_list(),
            "splits": {name: split.to_payload() for name, split in self.splits.items()},
            "skipped": self.skipped,
            "notes": list(self.notes),
            "prep": None if self.prep is None else self.prep.to_payload(),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> Manifest:
        """The manifest in a JSON object; a ValueError naming what is missing or malformed.

        `format` is not checked here (read_manifest does); fields that older or hand-written
        manifests leave out take their defaults, `skipped` the number of files the splits list.
        """
        try:
            return cls._from_payload(payload)
        except KeyError as e:
            raise ValueError(f"no {e} field") from None
        except (TypeError, AttributeError, ValueError) as e:
            raise ValueError(" ".join(str(e).split())) from None

    @classmethod
    def _from_payload(cls, payload: Mapping[str, Any]) -> Manifest:
        if not isinstance(payload, Mapping):
            raise TypeError(f"a manifest is a JSON object, not {type(payload).__name__}")
        splits = {str(name): SplitEntry.from_payload(s) for name, s in payload.get("splits", {}).items()}
        quality, shard_size, prep = payload.get("quality"), payload.get("shard_size"), payload.get("prep")
        listed = sum(len(s.skipped_files) for s in splits.values())
        return cls(
            encoding=str(payload["encoding"]),
            splits=splits,
            classes=[ClassInfo.from_payload(c) for c in payload.get("classes", [])],
            source=None if payload.get("source") is None else str(payload["source"]),
            quality=None if quality is None else int(quality),
            image_size=int(payload.get("image_size", IMAGE_SIZE)),
            resize=str(payload.get("resize", "shorter-side")),
            shard_size=None if shard_size is None else int(shard_size),
            skipped=int(payload.get("skipped", listed)),
            notes=[str(n) for n in payload.get("notes", [])],
            prep=None if prep is None else PrepRecord.from_payload(prep),
            format_version=int(payload.get("format_version", FORMAT_VERSION)),
        )

    def class_list(self) -> list[dict[str, Any]]:
        """The classes in their JSON form (index, wnid, name), as checkpoints and predictions carry them."""
        return [c.to_payload() for c in self.classes]


def manifest_path(out: str | os.PathLike[str]) -> Path:
    return Path(out) / MANIFEST


def read_manifest(out: str | os.PathLike[str]) -> Manifest:
    """The manifest of a prepared set; a UserError if OUT is not one."""
    path = manifest_path(out)
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"{out} is a file, not a prepared set; give the OUT folder of alexrepro prep SRC OUT")
    if not Path(out).is_dir():
        raise UserError(f"{out} does not exist; prepare a set first with: alexrepro prep SRC {out}")
    if not path.is_file():
        raise UserError(f"{out} is not a prepared set (no {MANIFEST}); prepare one with: alexrepro prep SRC {out}")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}); run alexrepro prep again to rebuild it") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise UserError(f"{path} is not an alexrepro manifest; prepare the set with alexrepro prep")
    if payload.get("format_version") not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise UserError(
            f"{out} has format version {payload.get('format_version')}, this alexrepro reads "
            f"{readable}; read it with the alexrepro that wrote it, or prepare it again with this one"
        )
    try:
        return Manifest.from_payload(payload)
    except ValueError as e:
        raise UserError(f"{path} is corrupt ({e}); run alexrepro prep again to rebuild it") from None


def previous_manifest(out: str | os.PathLike[str]) -> Manifest | None:
    """The manifest an earlier prep left in OUT, or None; a UserError if it cannot be read (delete OUT then)."""
    path = manifest_path(out)
    if not path.is_file():
        return None
    try:
        return Manifest.from_payload(json.loads(path.read_text()))
    except ValueError:  # also invalid JSON or UTF-8
        raise UserError(f"{path} is corrupt; delete {out} and prepare again") from None


def write_manifest(out: str | os.PathLike[str], manifest: Manifest | Mapping[str, Any]) -> None:
    """Write manifest.json atomically; a mapping is read as a payload first (its format fields optional)."""
    if not isinstance(manifest, Manifest):
        manifest = Manifest.from_payload(manifest)
    atomic_write_json(manifest_path(out), manifest.to_payload())


def set_identity(out: str | os.PathLike[str]) -> str:
    """"sha256:<hex>" naming the data a prepared set holds, for a checkpoint to record and a resume to compare.

    In it: what changes every stored image (encoding, JPEG quality, image size, --resize), the classes
    (index and WordNet ID: the labels), each split's image count, the listing of the source each split was
    prepared from (prep's record of every file's key, label, place and size), and the bytes of the mean
    image, which changes with the images' contents. Not in it: where SRC and OUT are (a moved source or set
    is the same data), the shard size (the images keep their order and index), class names and notes. So
    the same prep of the same source gives the same identity, and a prep again with another source,
    quality, --resize or images another. Cheap: the manifest and the mean image, never the shards.
    """
    manifest = read_manifest(out)
    fields = {
        "encoding": manifest.encoding, "quality": manifest.quality, "image_size": manifest.image_size,
        "resize": manifest.resize, "classes": [[c.index, c.wnid] for c in manifest.classes],
        "counts": {name: split.count for name, split in manifest.splits.items()},
        "listings": {} if manifest.prep is None else dict(manifest.prep.splits),
    }
    h = hashlib.sha256(json.dumps(fields, sort_keys=True).encode())
    h.update(read_stats(out).mean.tobytes())
    return "sha256:" + h.hexdigest()
