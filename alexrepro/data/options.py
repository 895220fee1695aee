"""What the data commands take besides their folders, with the defaults the command line shows.

`PrepOptions` is what `alexrepro prep` does besides SRC and OUT; the image sizes are synth's. This module
imports nothing, so `alexrepro --help` shows these defaults without loading the stages that use them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

JPEG_QUALITY = 95  # default quality of the stored JPEGs (libjpeg's 4:2:0 chroma subsampling)
SHARD_SIZE = 1024  # images per shard (default of --shard-size)
# Generated image sides, in px, before synth's --min-size/--max-size remap them (the identity for these).
DEFAULT_MIN_SIZE = 100
DEFAULT_MAX_SIZE = 2000


@dataclass
class PrepOptions:
    """What `alexrepro prep` does besides SRC and OUT (the command-line options)."""

    encoding: str = "jpeg"
    quality: int = JPEG_QUALITY
    resize: str = "shorter-side"  # §2's rescale and central crop | "warp": Caffe's (imaging.RESIZE_MODES)
    shard_size: int = SHARD_SIZE
    workers: int = 0  # 0: all cores
    splits: list[str] | None = None  # None: every split found
    devkit: Path | None = None
    val_labels: Path | None = None
    test_labels: Path | None = None
    synset_mapping: Path | None = None
