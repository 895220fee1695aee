"""Resuming a prep: what makes two preps the same set, OUT/.prep.json, and the records of complete shards.

Until the manifest is written, OUT/.prep.json records what is being prepared (the manifest's `prep`
record: source and options, and each split's listing digest), so a prep started again into the same
OUT resumes only the same set and refuses a different source or different options (docs/FORMAT.md).
A complete shard is re-used only if it reads and agrees with itself (`stored_keys`); what it skipped
and converted comes from its sidecars while the prep runs, and from the finished set's manifest and
converted.tsv after (`resumed_shard`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from alexrepro.data import sources
from alexrepro.data.imaging import QUIRKS
from alexrepro.data.manifest import CONVERTED, Manifest, PrepRecord, previous_manifest
from alexrepro.data.options import PrepOptions
from alexrepro.data.shards import IMAGE_SIZE
from alexrepro.data.source_files import printable
from alexrepro.errors import UserError
from alexrepro.process.atomic import atomic_write_json, atomic_write_text, described_write_errors
from alexrepro.process.locking import LOCK_FILE

PREP_STATE = ".prep.json"  # what an unfinished prep in OUT is preparing (removed once the manifest lands)
UNRECORDED = {"resize": "shorter-side"}  # identity keys older preps did not record: what they did
# Beside each shard while a prep runs (removed when it finishes: the manifest, skipped.tsv and converted.tsv
# then hold the same), so that a resumed prep still reports what the complete shards skipped and converted.
SIDECARS = (".skipped.tsv", ".converted.tsv")
RESUME_HINT = "free space on OUT's disk (or fix its permissions), then run the same prep again: it resumes"


@dataclass
class ShardTask:
    split: str
    index: int
    path: Path
    items: list[sources.Item]
    encoding: str
    quality: int
    resize: str = "shorter-side"


@dataclass
class ShardResult:
    split: str
    index: int
    count: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    resumed: bool = False
    converted: list[tuple[str, str]] = field(default_factory=list)  # (key, comma-separated QUIRKS kinds)


class ShardDamaged(Exception):
    """A shard an earlier prep completed that no longer reads, or disagrees with itself; the reason."""


# --------------------------------------------------------------------------------------------- sidecars
def clean_field(text: object) -> str:
    return printable(" ".join(str(text).split()))  # one UTF-8 TSV field: no tabs or newlines


def sidecar(shard: Path, suffix: str) -> Path:
    """`train/00003.h5` -> `train/00003.skipped.tsv` (suffix one of SIDECARS)."""
    return shard.with_suffix(suffix)


def read_rows(path: Path) -> dict[str, str]:
    """{first field: second field} of a two-column TSV file (a header line `path\t...` is skipped)."""
    if not path.is_file():
        return {}
    rows = (line.partition("\t") for line in path.read_text(errors="backslashreplace").splitlines())
    return {key: value for key, _, value in rows if key != "path"}


def write_rows(path: Path, rows: list[tuple[str, str]], header: str | None = None) -> None:
    with described_write_errors(path, RESUME_HINT):
        atomic_write_text(path, (header or "") + "".join(f"{clean_field(k)}\t{clean_field(v)}\n" for k, v in rows))


def count_kinds(kinds: list[str]) -> dict[str, int]:
    """{QUIRKS kind: files} from comma-separated kinds per file, in QUIRKS order."""
    counts = {k: 0 for k in QUIRKS}
    for text in kinds:
        for kind in text.split(","):
            counts[kind] = counts.get(kind, 0) + 1
    return {k: n for k, n in counts.items() if n}


def read_converted(path: Path) -> list[tuple[str, str, str]]:
    """The rows (split, path, comma-separated QUIRKS kinds) of OUT/converted.tsv; none if it is absent."""
    if not path.is_file():
        return []
    rows = [line.split("\t") for line in path.read_text(errors="backslashreplace").splitlines()[1:]]
    return [(r[0], r[1], r[2]) for r in rows if len(r) == 3]


# --------------------------------------------------------------------------------------------- complete shards
def stored_keys(task: ShardTask) -> list[str]:
    """The keys of a shard an earlier run completed; ShardDamaged if it cannot be read or is inconsistent.

    Cheap: attributes, keys and dataset shapes only, never the images. HDF5 itself refuses a file cut
    short (its superblock records the file's end), so a truncated shard fails to open.
    """
    try:
        with h5py.File(task.path, "r") as f:
            count = int(f.attrs["count"])
            encoding = str(f.attrs["encoding"])
            keys = [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in f["keys"][:]]
            lengths = [len(keys), f["labels"].shape[0]]
            lengths.append(f["offsets"].shape[0] - 1 if encoding == "jpeg" else f["images"].shape[0])
    except (OSError, KeyError, ValueError, TypeError, IndexError) as e:
        raise ShardDamaged(f"it cannot be read: {clean_field(e)[:200]}") from None
    if encoding != task.encoding:
        raise ShardDamaged(f"it holds {encoding} images, not {task.encoding}")
    if any(n != count for n in lengths):
        raise ShardDamaged(f"it says {count} images but holds {lengths[0]} keys, {lengths[1]} labels and "
                           f"{lengths[2]} images")
    unknown = set(keys) - {it.key for it in task.items}
    if unknown:
        raise ShardDamaged(f"it holds {len(unknown)} images this shard does not list (first: {min(unknown)})")
    return keys


def resumed_shard(task: ShardTask, earlier: dict[str, dict[str, str]] | None = None) -> ShardResult:
    """The result of a shard an earlier run completed: its count, what it skipped (keys not stored) and
    what it converted, from its sidecars, else from `earlier` (the finished set's records, earlier_records)."""
    stored = set(stored_keys(task))
    earlier = earlier or {}
    reasons = read_rows(sidecar(task.path, SIDECARS[0])) or earlier.get("skipped", {})
    kinds = read_rows(sidecar(task.path, SIDECARS[1])) or earlier.get("converted", {})
    skipped = [
        (it.key, reasons.get(clean_field(it.key), "skipped by an earlier run")) for it in task.items if it.key not in stored
    ]
    converted = [(it.key, kinds[clean_field(it.key)]) for it in task.items
                 if it.key in stored and clean_field(it.key) in kinds]
    return ShardResult(task.split, task.index, len(stored), skipped, resumed=True, converted=converted)


def earlier_records(out: Path, previous: Manifest | None) -> dict[str, dict[str, str]]:
    """What a finished prep of this set recorded (its sidecars are gone): skip reasons and conversions."""
    if previous is None:
        return {}
    skipped = {f.path: f.reason for s in previous.splits.values() for f in s.skipped_files}
    return {"skipped": skipped, "converted": {key: kinds for _, key, kinds in read_converted(out / CONVERTED)}}


# --------------------------------------------------------------------------------------------- OUT checks
def split_digest(split: sources.SplitSource) -> str:
    """A fingerprint of a split's listing (keys, labels, locations), to refuse mixing two sources."""
    h = hashlib.sha256()
    for it in split.items:
        h.update(f"{it.key}\t{it.label}\t{it.offset}\t{it.size}\n".encode())
    for key, _ in split.unlabelled:
        h.update(f"{key}\t-\n".encode())
    return h.hexdigest()


def identity(src: Path, options: PrepOptions, source: sources.Source) -> dict[str, Any]:
    """What makes two preps the same set: source, options, classes (split listings compared apart)."""
    classes = hashlib.sha256("\n".join(c.wnid for c in source.classes).encode()).hexdigest()
    return {
        "source": printable(str(Path(src).resolve())),
        "encoding": options.encoding,
        "quality": options.quality if options.encoding == "jpeg" else None,
        "image_size": IMAGE_SIZE,
        "resize": options.resize,
        "shard_size": options.shard_size,
        "classes": classes,
    }


def read_state(out: Path) -> PrepRecord | None:
    """What the unfinished prep in OUT is preparing (OUT/.prep.json), or None when there is none."""
    path = out / PREP_STATE
    if not path.is_file():
        return None
    try:
        return PrepRecord.from_payload(json.loads(path.read_text()).get("prep", {}))
    except (ValueError, TypeError, AttributeError):  # also invalid JSON or UTF-8
        raise UserError(f"{path} is corrupt; delete {out} and prepare again") from None


def write_state(out: Path, record: PrepRecord) -> None:
    """Record in OUT/.prep.json what this prep is preparing (before its first shard)."""
    with described_write_errors(out / PREP_STATE, RESUME_HINT):
        atomic_write_json(out / PREP_STATE, {"prep": record.to_payload()})


def clear_state(out: Path) -> None:
    """Remove OUT/.prep.json once the manifest and the mean image are written."""
    (out / PREP_STATE).unlink(missing_ok=True)


def check_apart(src: Path, out: Path) -> None:
    """A UserError when SRC is OUT or lies inside it (prep would write among the images it reads). OUT inside
    SRC is allowed: the listing leaves it out (sources.find_sources)."""
    source, target = Path(src).resolve(), Path(out).resolve()
    if source == target or target in source.parents:
        raise UserError(f"SRC {src} is inside OUT {out} (or is it): prep would write its shards among the images "
                        "it reads; choose an OUT outside SRC")


def check_out(out: Path, ident: dict[str, Any], digests: dict[str, str]) -> Manifest | None:
    """Refuse an OUT that holds something else; return its previous manifest when it is this same set."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder (new or empty) as OUT")
    if not out.exists():
        return None
    manifest, state = previous_manifest(out), read_state(out)
    if manifest is None and state is None:
        if any(p.name != LOCK_FILE for p in out.iterdir()):  # a killed prep's lock file is not a set
            raise UserError(f"{out} is not empty and holds no prepared set; choose a new or empty OUT")
        return None
    unrecorded = PrepRecord({}, {})  # a manifest without a prep record matches nothing
    records = [("prepared set", manifest.prep or unrecorded)] if manifest is not None else []
    records += [("unfinished prep", state)] if state is not None else []
    for what, before in records:
        changed = [k for k, v in ident.items() if before.identity.get(k, UNRECORDED.get(k)) != v]
        if changed:
            raise UserError(
                f"{out} holds a {what} with a different {', '.join(changed)}; "
                "choose another OUT or delete this one (nothing was overwritten)"
            )
        for split, digest in before.splits.items():
            if split in digests and digest != digests[split]:
                raise UserError(
                    f"the {split} images in the source differ from those {out} was prepared from; "
                    "choose another OUT or delete this one (nothing was overwritten)"
                )
    return manifest
