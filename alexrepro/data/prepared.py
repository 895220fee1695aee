"""The prepared-set format for code outside alexrepro, in one import: every public name of the modules that
define it (docs/FORMAT.md, "Reading it from Python"). The package itself imports each name from its module.

Layout of a prepared set OUT (docs/FORMAT.md describes each file for people and other tools):
    manifest.json          format version, splits (counts, shard files), classes, encoding, source
    <split>/<NNNNN>.h5     shards, written to a temporary name and renamed when complete
    stats.h5               mean image (256×256×3 float32, RGB, 0–255), channel mean, pixel count,
                           and after `alexrepro pca`: eigval (3,), eigvec (3×3, columns), same scale
    skipped.tsv            path <TAB> reason for every source file not written
    converted.tsv          split <TAB> path <TAB> kinds, for every source image with a quirk prep converted

Where each part is defined:
    alexrepro.data.shards       the shard format: write_shard, checksums, decode_jpeg, the Shard reader
    alexrepro.data.shard_files  opening shards: h5py handles and plain descriptors, their per-process
                                limits (MAX_OPEN_SHARDS, MAX_OPEN_FDS: set them there), pread
    alexrepro.data.manifest     manifest.json as a typed Manifest
    alexrepro.data.stats_file   stats.h5: Stats, read_stats, write_stats
    alexrepro.data.split        SplitDataset and open_split (also alexrepro.open_split)
"""

from __future__ import annotations

from alexrepro.data.manifest import (
    CONVERTED,
    FORMAT_NAME,
    MANIFEST,
    SKIPPED,
    ClassInfo,
    Manifest,
    PrepRecord,
    ShardEntry,
    SkippedFile,
    SplitEntry,
    manifest_path,
    read_manifest,
    write_manifest,
)
from alexrepro.data.shard_files import (
    contiguous_start,
    descriptor_cap,
    open_descriptor_count,
    open_shard_count,
    open_shard_descriptor,
    open_shard_file,
)
from alexrepro.data.shards import (
    CHECKSUMS,
    ENCODINGS,
    FORMAT_VERSION,
    IMAGE_SIZE,
    READABLE_VERSIONS,
    Shard,
    decode_jpeg,
    image_checksums,
    stored_checksums,
    write_shard,
)
from alexrepro.data.split import SplitDataset, open_split
from alexrepro.data.stats_file import STATS, Stats, read_stats, write_stats

__all__ = [
    "CHECKSUMS",
    "CONVERTED",
    "ENCODINGS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "IMAGE_SIZE",
    "MANIFEST",
    "READABLE_VERSIONS",
    "SKIPPED",
    "STATS",
    "ClassInfo",
    "Manifest",
    "PrepRecord",
    "Shard",
    "ShardEntry",
    "SkippedFile",
    "SplitDataset",
    "SplitEntry",
    "Stats",
    "contiguous_start",
    "decode_jpeg",
    "descriptor_cap",
    "image_checksums",
    "manifest_path",
    "open_descriptor_count",
    "open_shard_count",
    "open_shard_descriptor",
    "open_shard_file",
    "open_split",
    "read_manifest",
    "read_stats",
    "stored_checksums",
    "write_manifest",
    "write_shard",
    "write_stats",
]
