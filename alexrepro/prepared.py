"""The prepared-set format (DESIGN.md): HDF5 shards, manifest.json, stats.h5, skipped.tsv.

Layout of a prepared set OUT:
    manifest.json          format version, splits (counts, shard files), classes, encoding, source
    <split>/<NNNNN>.h5     shards, written to a temporary name and renamed when complete
    stats.h5               mean image (256×256×3 float32, RGB, 0–255), channel mean, pixel count,
                           and after `alexrepro pca`: eigval (3,), eigvec (3×3, columns), same scale
    skipped.tsv            path <TAB> reason for every source file not written

A shard holds `labels` (int64, n), `keys` (source path of each image, UTF-8 strings) and either
    jpeg: `data` (uint8, all encoded images back to back) + `offsets` (int64, n + 1)
    raw:  `images` (uint8, n×256×256×3, chunked one image per chunk)
with attributes `encoding`, `image_size`, `count`, `format_version`. The flat byte array with
offsets avoids HDF5 variable-length types, which h5py reads slowly.

h5py handles do not survive fork or pickling: readers open files lazily in each process, and
each process keeps at most MAX_OPEN_SHARDS of them open (least recently used closed first), so a
set with more shards than `ulimit -n` still reads. Labels and keys are read with short-lived
handles; a SplitDataset reads its labels once and carries them when pickled to workers.
"""

from __future__ import annotations

import errno
import io
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from alexrepro.atomic import atomic_path, atomic_write_json
from alexrepro.errors import UserError

FORMAT_NAME = "alexrepro-prepared"
FORMAT_VERSION = 1
IMAGE_SIZE = 256  # §2: every image is stored as its central 256×256 patch
MANIFEST = "manifest.json"
STATS = "stats.h5"
SKIPPED = "skipped.tsv"
ENCODINGS = ("jpeg", "raw")
# Shard handles one process keeps open at once (each ~0.5 MB RSS and a descriptor): 256 stays well under
# the common `ulimit -n` of 1024 per worker; ImageNet has ~1,250 shards, so shuffled batches still reopen
# some (about 0.2 ms each). See docs/PERFORMANCE.md for the pread-based reader that would remove this.
MAX_OPEN_SHARDS = 256


# --------------------------------------------------------------------------------------------- shards
def write_shard(
    path: str | os.PathLike[str],
    encoding: str,
    images: list[bytes] | np.ndarray,
    labels: list[int] | np.ndarray,
    keys: list[str],
) -> None:
    """Write one complete shard atomically: `images` are JPEG bytes (jpeg) or n×256×256×3 uint8 (raw)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
    n = len(labels)
    if len(images) != n or len(keys) != n:
        raise ValueError("images, labels and keys must have the same length")
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            if encoding == "jpeg":
                lengths = np.fromiter((len(b) for b in images), dtype=np.int64, count=n)
                offsets = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(lengths, out=offsets[1:])
                data = np.frombuffer(b"".join(images), dtype=np.uint8)
                f.create_dataset("data", data=data)
                f.create_dataset("offsets", data=offsets)
            else:
                arr = np.asarray(images, dtype=np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE, 3)
                chunks = (1, IMAGE_SIZE, IMAGE_SIZE, 3) if n else None
                f.create_dataset("images", data=arr, chunks=chunks)
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
            f.create_dataset("keys", data=np.array(list(keys), dtype=h5py.string_dtype("utf-8")))
            f.attrs["encoding"] = encoding
            f.attrs["image_size"] = IMAGE_SIZE
            f.attrs["count"] = n
            f.attrs["format_version"] = FORMAT_VERSION


def decode_jpeg(data: bytes | np.ndarray, where: str | None = None) -> np.ndarray:
    """Decode stored JPEG bytes to an RGB uint8 H×W×3 array (PIL, or pillow-simd where installed).

    With `where` (e.g. "OUT/train/00000.h5 image 3"), damaged bytes are a UserError naming it;
    without, PIL's own exception propagates (info --verify collects those).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as e:
        if where is None:
            raise
        reason = "not an image" if isinstance(e, UnidentifiedImageError) else " ".join(str(e).split())
        raise UserError(
            f"stored image {where} does not decode ({reason}); find every damaged file with alexrepro info OUT "
            "--verify and rebuild the set with alexrepro prep"
        ) from None


def _too_many_open_files(e: OSError) -> bool:
    """Whether `e` is EMFILE (h5py often leaves errno unset and only names it in the message)."""
    text = str(e)
    return e.errno == errno.EMFILE or "errno = 24" in text or "Too many open files" in text


def _open_limit() -> str:
    try:
        import resource

        return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, OSError, ValueError):
        return "unknown"


def open_shard_file(path: str | os.PathLike[str]) -> h5py.File:
    """Open a shard read-only; a UserError that tells a missing or damaged shard from too many open files."""
    path = Path(path)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        if _too_many_open_files(e):
            raise UserError(
                f"cannot open shard {path}: too many open files in this process (limit {_open_limit()}); "
                "raise `ulimit -n` (or use fewer loader workers) and run again; the shard itself is not at fault"
            ) from None
        out = path.parent.parent
        reason = "missing" if not path.is_file() else " ".join(str(e).split())
        raise UserError(
            f"cannot read shard {path} ({reason}); check the set with "
            f"alexrepro info {out} --verify and run alexrepro prep again to rebuild it"
        ) from None


# Shards with an open handle in this process, least recently used first (reset after a fork: the
# parent's handles are not this process's to track or close).
_open_shards: OrderedDict[int, Shard] = OrderedDict()
_open_pid = os.getpid()


def _open_registry() -> OrderedDict[int, Shard]:
    global _open_pid
    if _open_pid != os.getpid():
        _open_shards.clear()
        _open_pid = os.getpid()
    return _open_shards


def open_shard_count() -> int:
    """How many shard handles this process holds open (at most MAX_OPEN_SHARDS)."""
    return len(_open_registry())


class Shard:
    """Random access to one shard; the HDF5 handle is opened lazily in each process.

    At most MAX_OPEN_SHARDS shards hold a handle in one process: opening another closes the least
    recently used one, which reopens on its next access.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid = -1
        self._offsets: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    @property
    def file(self) -> h5py.File:
        registry = _open_registry()
        pid = os.getpid()
        if self._file is not None and self._pid == pid and id(self) in registry:
            registry.move_to_end(id(self))
            return self._file
        self._file = None  # another process's handle (after a fork): not ours to close
        while registry and len(registry) >= max(1, MAX_OPEN_SHARDS):
            _, oldest = registry.popitem(last=False)
            oldest._release()
        self._file = open_shard_file(self.path)
        self._pid = pid
        registry[id(self)] = self
        return self._file

    def _release(self) -> None:
        """Close this process's handle (the offsets stay cached: they do not change)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def close(self) -> None:
        if self._pid == os.getpid():
            _open_registry().pop(id(self), None)
        self._release()

    @property
    def encoding(self) -> str:
        return str(self.file.attrs["encoding"])

    def __len__(self) -> int:
        return int(self.file.attrs["count"])

    @property
    def offsets(self) -> np.ndarray:
        if self._offsets is None:  # kept when the handle is closed: a shard never changes
            self._offsets = self.file["offsets"][:]
        return self._offsets

    def labels(self) -> np.ndarray:
        """Every label of the shard, read with a handle closed right after (not the cached one)."""
        with open_shard_file(self.path) as f:
            return f["labels"][:]

    def keys(self) -> list[str]:
        """The source path of every image, read with a handle closed right after."""
        with open_shard_file(self.path) as f:
            raw = f["keys"][:]
        return [k.decode("utf-8") if isinstance(k, bytes) else str(k) for k in raw]

    def encoded(self, i: int) -> np.ndarray:
        """The stored JPEG bytes of image i (jpeg shards only), as a uint8 array."""
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.file["data"][lo:hi]

    def encoded_range(self, start: int, stop: int) -> list[np.ndarray]:
        """JPEG bytes of images start..stop-1 with a single HDF5 read."""
        off = self.offsets
        block = self.file["data"][off[start] : off[stop]]
        base = off[start]
        return [block[off[i] - base : off[i + 1] - base] for i in range(start, stop)]

    def image(self, i: int) -> np.ndarray:
        """Image i as uint8 256×256×3 RGB."""
        if self.encoding == "raw":
            return self.file["images"][i]
        return decode_jpeg(self.encoded(i), f"{self.path} #{i}")


# --------------------------------------------------------------------------------------------- manifest
def manifest_path(out: str | os.PathLike[str]) -> Path:
    return Path(out) / MANIFEST


def read_manifest(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a prepared set; a UserError if OUT is not one."""
    path = manifest_path(out)
    if Path(out).exists() and not Path(out).is_dir():
        raise UserError(f"{out} is a file, not a prepared set; give the OUT folder of alexrepro prep SRC OUT")
    if not Path(out).is_dir():
        raise UserError(f"{out} does not exist; prepare a set first with: alexrepro prep SRC {out}")
    if not path.is_file():
        raise UserError(f"{out} is not a prepared set (no {MANIFEST}); prepare one with: alexrepro prep SRC {out}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}); run alexrepro prep again to rebuild it") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise UserError(f"{path} is not an alexrepro manifest; prepare the set with alexrepro prep")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{out} has format version {manifest.get('format_version')}, this alexrepro reads "
            f"{FORMAT_VERSION}; prepare it again with this version"
        )
    return manifest


def write_manifest(out: str | os.PathLike[str], manifest: dict[str, Any]) -> None:
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest}
    atomic_write_json(manifest_path(out), manifest)


# --------------------------------------------------------------------------------------------- stats
@dataclass
class Stats:
    """Colour statistics of the training split, all on the 0–255 scale (RGB)."""

    mean: np.ndarray  # float32 256×256×3: §2's per-pixel mean image
    channel_mean: np.ndarray  # float64 (3,)
    pixel_count: int
    eigval: np.ndarray | None = None  # (3,), descending: §4.1's λ_i of the RGB covariance
    eigvec: np.ndarray | None = None  # 3×3, columns are the eigenvectors p_i
    scale: str = "0-255"  # the pixel scale the numbers are stated on


def write_stats(out: str | os.PathLike[str], stats: Stats) -> None:
    """Write stats.h5 atomically (replacing the whole file)."""
    with atomic_path(Path(out) / STATS) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("mean", data=np.asarray(stats.mean, dtype=np.float32))
            f.create_dataset("channel_mean", data=np.asarray(stats.channel_mean, dtype=np.float64))
            f.attrs["pixel_count"] = int(stats.pixel_count)
            f.attrs["scale"] = stats.scale
            if stats.eigval is not None and stats.eigvec is not None:
                f.create_dataset("eigval", data=np.asarray(stats.eigval, dtype=np.float64))
                f.create_dataset("eigvec", data=np.asarray(stats.eigvec, dtype=np.float64))


def read_stats(out: str | os.PathLike[str], need_pca: bool = False) -> Stats:
    """Read stats.h5; a UserError naming the command to run if it (or the PCA) is missing."""
    path = Path(out) / STATS
    if not path.is_file():
        raise UserError(f"{out} has no {STATS}; run alexrepro prep {out} to completion first")
    try:
        with h5py.File(path, "r") as f:
            stats = Stats(
                mean=f["mean"][:],
                channel_mean=f["channel_mean"][:],
                pixel_count=int(f.attrs["pixel_count"]),
                eigval=f["eigval"][:] if "eigval" in f else None,
                eigvec=f["eigvec"][:] if "eigvec" in f else None,
                scale=str(f.attrs.get("scale", "0-255")),
            )
    except (OSError, KeyError, ValueError) as e:
        raise UserError(
            f"{path} is corrupt ({' '.join(str(e).split())}); delete it and run alexrepro prep SRC {out} again "
            f"(it recomputes the mean), then alexrepro pca {out}"
        ) from None
    if need_pca and stats.eigval is None:
        raise UserError(f"{out} has no PCA colour statistics; run: alexrepro pca {out}")
    return stats


# --------------------------------------------------------------------------------------------- splits
class SplitDataset:
    """One split of a prepared set: `ds[i]` is (uint8 256×256×3 RGB array, int label)."""

    def __init__(self, out: str | os.PathLike[str], split: str) -> None:
        self.out = Path(out)
        self.manifest = read_manifest(out)
        splits = self.manifest.get("splits", {})
        if split not in splits:
            have = ", ".join(splits) or "none"
            raise UserError(f"{out} has no split {split!r} (it has: {have})")
        self.split = split
        self.encoding = str(self.manifest["encoding"])
        entries = splits[split]["shards"]
        self.shards = [Shard(self.out / e["file"]) for e in entries]
        counts = np.array([int(e["count"]) for e in entries], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """(shard number, index within the shard) of global index i."""
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        s = int(np.searchsorted(self.starts, i, side="right") - 1)
        return s, int(i - self.starts[s])

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        s, j = self.locate(int(i))
        return self.shards[s].image(j), int(self.labels[i])

    def encoded(self, i: int) -> np.ndarray:
        s, j = self.locate(int(i))
        return self.shards[s].encoded(j)

    @property
    def labels(self) -> np.ndarray:
        """Every label of the split in order (read once, cached)."""
        if self._labels is None:
            parts = [sh.labels() for sh in self.shards]
            self._labels = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return self._labels

    def keys(self) -> list[str]:
        return [k for sh in self.shards for k in sh.keys()]

    @property
    def classes(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("classes", []))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getstate__(self) -> dict[str, Any]:
        # Workers get the labels read here, once, instead of each opening every shard for them.
        state = dict(self.__dict__)
        state["_labels"] = self.labels
        return state


def open_split(out: str | os.PathLike[str], split: str) -> SplitDataset:
    """Random-access dataset of (uint8 H×W×3 RGB array, int label) for one split of a prepared set."""
    return SplitDataset(out, split)
