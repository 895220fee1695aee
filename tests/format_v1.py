"""Turn a prepared set into what format version 1 wrote: shards without `crc32`, version 1 everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import h5py


def downgrade_shard(path: Path) -> None:
    """Make one shard a version 1 shard: no per-image checksums, format_version 1."""
    with h5py.File(path, "r+") as f:
        del f["crc32"]
        f.attrs["format_version"] = 1


def downgrade_manifest(out: Path) -> None:
    path = Path(out) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 1
    path.write_text(json.dumps(manifest))


def downgrade_set(out: Path) -> list[Path]:
    """Make the whole set at `out` a version 1 set; returns its shards."""
    shards = sorted(Path(out).glob("*/*.h5"))
    for path in shards:
        downgrade_shard(path)
    downgrade_manifest(out)
    return shards
