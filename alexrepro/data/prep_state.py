"""Resuming a prep: what makes two preps the same set, OUT/.prep.json, and refusing to mix two sets.

Until the manifest is written, OUT/.prep.json records what is being prepared (the manifest's `prep`
record: source and options, and each split's listing digest), so a prep started again into the same
OUT resumes only the same set and refuses a different source or different options (docs/FORMAT.md).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexrepro.atomic import atomic_write_json
from alexrepro.data import sources
from alexrepro.data.manifest import Manifest, PrepRecord, previous_manifest
from alexrepro.data.shards import IMAGE_SIZE
from alexrepro.errors import UserError

if TYPE_CHECKING:
    from alexrepro.data.prep import PrepOptions

PREP_STATE = ".prep.json"  # what an unfinished prep in OUT is preparing (removed once the manifest lands)
UNRECORDED = {"resize": "shorter-side"}  # identity keys older preps did not record: what they did


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
        "source": str(Path(src).resolve()),
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
    atomic_write_json(out / PREP_STATE, {"prep": record.to_payload()})


def clear_state(out: Path) -> None:
    """Remove OUT/.prep.json once the manifest and the mean image are written."""
    (out / PREP_STATE).unlink(missing_ok=True)


def check_out(out: Path, ident: dict[str, Any], digests: dict[str, str]) -> Manifest | None:
    """Refuse an OUT that holds something else; return its previous manifest when it is this same set."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; give a folder (new or empty) as OUT")
    if not out.exists():
        return None
    manifest, state = previous_manifest(out), read_state(out)
    if manifest is None and state is None:
        if any(out.iterdir()):
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
