"""The prepared-set format (DESIGN.md): HDF5 shards, manifest.json, stats.h5, skipped.tsv.

Layout of a prepared set OUT:
    manifest.json          format version, splits (counts, shard files), classes, encoding, source
    <split>/<NNNNN>.h5     shards, written to a temporary name and renamed when complete
    stats.h5               mean image (256×256×3 float32, RGB, 0–255), channel mean, pixel count,
                           and after `alexrepro pca`: eigval (3,), eigvec (3×3, columns), same scale
    skipped.tsv            path <TAB> reason for every source file not written
    converted.tsv          split <TAB> path <TAB> kinds, for every source image with a quirk prep converted

A shard holds `labels` (int64, n), `keys` (source path of each image, UTF-8 strings), `crc32`
(uint32, n: zlib.crc32 of each image's stored bytes, the JPEG bytes or the raw array's C-order bytes)
and either
    jpeg: `data` (uint8, all encoded images back to back) + `offsets` (int64, n + 1)
    raw:  `images` (uint8, n×256×256×3, chunked one image per chunk)
with attributes `encoding`, `image_size`, `count`, `format_version`. The flat byte array with
offsets avoids HDF5 variable-length types, which h5py reads slowly.

Versions: 2 added `crc32`. Version 1 shards (no checksums) still read and verify, also beside version 2
shards in one set (a version 1 prep resumed by this one); every version in READABLE_VERSIONS is read.
The manifest's `format_version` is that of the prep that wrote it; each shard's is its own.

h5py handles do not survive fork or pickling: readers open files lazily in each process, and
each process keeps at most MAX_OPEN_SHARDS of them open (least recently used closed first), so a
set with more shards than `ulimit -n` still reads. Labels and keys are read with short-lived
handles; a SplitDataset reads its labels once and carries them when pickled to workers.

Batches of JPEG bytes (the loaders' hot path) skip HDF5 altogether: a jpeg shard's `data` is one
contiguous dataset, so its byte offset in the file plus `offsets` locate every image, and
`Shard.read_data` reads them with os.pread on a plain descriptor. A descriptor costs no HDF5 state,
so a process keeps far more of them (MAX_OPEN_FDS, from RLIMIT_NOFILE) than h5py handles and
ImageNet's ~1,250 shards stay open instead of reopening in every shuffled batch.
"""

from __future__ import annotations

import errno
import io
import json
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from alexrepro.atomic import atomic_path, atomic_write_json
from alexrepro.errors import UserError

FORMAT_NAME = "alexrepro-prepared"
FORMAT_VERSION = 2  # 2: per-image `crc32` in every shard
READABLE_VERSIONS = (1, 2)  # sets and shards this alexrepro reads (1: no checksums)
CHECKSUMS = "crc32"  # the shard dataset of per-image checksums (format version 2 on)
IMAGE_SIZE = 256  # §2: every image is stored as its central 256×256 patch
MANIFEST = "manifest.json"
STATS = "stats.h5"
SKIPPED = "skipped.tsv"
CONVERTED = "converted.tsv"  # split, path and kinds of every source image prep converted (alexrepro.imaging.QUIRKS)
ENCODINGS = ("jpeg", "raw")
# Shard handles one process keeps open at once (each ~0.5 MB RSS and a descriptor): 256 stays well under
# the common `ulimit -n` of 1024 per worker; ImageNet has ~1,250 shards, so shuffled batches still reopen
# some (about 0.2 ms each). Batch reads of jpeg shards use plain descriptors instead (below).
MAX_OPEN_SHARDS = 256
# Plain descriptors (the pread path) one process keeps open at once. None: a quarter of the soft
# RLIMIT_NOFILE once raised to the hard limit, at most 65,536. A quarter, because a forked loader
# worker inherits its parent's descriptors beside its own, and h5py handles, pipes and sockets need
# the rest; with Linux's usual hard limit (≥ 524,288) that is 65,536, far above ImageNet's shard count.
MAX_OPEN_FDS: int | None = None


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
                checksums = image_checksums(images)
            else:
                arr = np.asarray(images, dtype=np.uint8).reshape(n, IMAGE_SIZE, IMAGE_SIZE, 3)
                chunks = (1, IMAGE_SIZE, IMAGE_SIZE, 3) if n else None
                f.create_dataset("images", data=arr, chunks=chunks)
                checksums = image_checksums(arr)
            f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
            f.create_dataset("keys", data=np.array(list(keys), dtype=h5py.string_dtype("utf-8")))
            f.create_dataset(CHECKSUMS, data=checksums)
            f.attrs["encoding"] = encoding
            f.attrs["image_size"] = IMAGE_SIZE
            f.attrs["count"] = n
            f.attrs["format_version"] = FORMAT_VERSION


def image_checksums(images: list[bytes] | np.ndarray) -> np.ndarray:
    """zlib.crc32 of each image's stored bytes (JPEG bytes, or one raw 256×256×3 array each), uint32 (n,)."""
    return np.fromiter((zlib.crc32(_contiguous(im)) for im in images), dtype=np.uint32, count=len(images))


def _contiguous(image: bytes | np.ndarray) -> bytes | np.ndarray:
    # zlib hashes any C-contiguous buffer without a copy; a strided view is copied in C order first.
    return np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image


def stored_checksums(f: h5py.File) -> np.ndarray | None:
    """The `crc32` dataset of an open shard, or None for a version 1 shard written without one."""
    return f[CHECKSUMS][:] if CHECKSUMS in f else None


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
        raise _unreadable(path, e) from None


def open_shard_descriptor(path: str | os.PathLike[str]) -> int:
    """Open a shard as a plain read-only descriptor (for os.pread); the same UserErrors as open_shard_file."""
    path = Path(path)
    try:
        return os.open(path, os.O_RDONLY)  # not inherited by exec'd programs (PEP 446); forks do inherit it
    except OSError as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: OSError) -> UserError:
    if _too_many_open_files(e):
        return UserError(
            f"cannot open shard {path}: too many open files in this process (limit {_open_limit()}); "
            "raise `ulimit -n` (or use fewer loader workers) and run again; the shard itself is not at fault"
        )
    out = path.parent.parent
    reason = "missing" if not path.is_file() else " ".join(str(e).split())
    return UserError(
        f"cannot read shard {path} ({reason}); check the set with "
        f"alexrepro info {out} --verify and run alexrepro prep again to rebuild it"
    )


def contiguous_start(dset: h5py.Dataset) -> int | None:
    """Where a uint8 dataset's bytes lie as they are in its file, or None if pread cannot read them.

    Only a contiguous dataset (no chunks, hence no compression or other filters) stored inside the
    file is its own bytes at one offset; an empty dataset has no storage and no offset.
    """
    if not hasattr(os, "pread") or dset.dtype != np.uint8 or dset.external:
        return None
    if dset.chunks is not None or dset.compression is not None:
        return None
    return dset.id.get_offset()


def descriptor_cap() -> int:
    """How many plain shard descriptors one process keeps open: MAX_OPEN_FDS, or derived from the limit."""
    global _fd_cap
    if MAX_OPEN_FDS is not None:
        return max(1, MAX_OPEN_FDS)
    if _fd_cap is None:  # once: forked workers inherit the raised limit and this value
        _fd_cap = max(1, min(_raise_open_limit() // 4, _FD_CAP_MAX))
    return _fd_cap


_FD_CAP_MAX = 65_536
_fd_cap: int | None = None


def _raise_open_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit where allowed; return the soft limit then in force."""
    try:
        import resource
    except ImportError:  # not POSIX: no pread either, so no plain descriptors are opened
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 4 * _FD_CAP_MAX
    target = 4 * _FD_CAP_MAX if hard == resource.RLIM_INFINITY else hard  # some kernels refuse an unlimited soft
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # not allowed here: keep the limit we have
    return soft


def _pread_into(fd: int, view: memoryview, pos: int) -> int:
    """Read up to len(view) bytes at file position `pos` into `view`; how many were read (0 at the end)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [view], pos)  # straight into the caller's buffer
    data = os.pread(fd, len(view), pos)
    view[: len(data)] = data
    return len(data)


# Shards with an open h5py handle, and shards with an open plain descriptor, in this process, least
# recently used first. Both are forgotten after a fork: the parent's handles and descriptors are not
# this process's to use or close, so a child reopens its own.
_open_shards: OrderedDict[int, Shard] = OrderedDict()
_open_fds: OrderedDict[int, Shard] = OrderedDict()
_open_pid = os.getpid()


def _forget_after_fork() -> None:
    global _open_pid
    if _open_pid != os.getpid():
        _open_shards.clear()
        _open_fds.clear()
        _open_pid = os.getpid()


def _open_registry() -> OrderedDict[int, Shard]:
    _forget_after_fork()
    return _open_shards


def _fd_registry() -> OrderedDict[int, Shard]:
    _forget_after_fork()
    return _open_fds


def _make_room(registry: OrderedDict[int, Shard], cap: int, close: Callable[[Shard], None]) -> None:
    """Close the least recently used entries of `registry` until one more fits under `cap`."""
    while registry and len(registry) >= max(1, cap):
        _, oldest = registry.popitem(last=False)
        close(oldest)


def open_shard_count() -> int:
    """How many shard handles this process holds open (at most MAX_OPEN_SHARDS)."""
    return len(_open_registry())


def open_descriptor_count() -> int:
    """How many plain shard descriptors this process holds open (at most descriptor_cap())."""
    return len(_fd_registry())


class Shard:
    """Random access to one shard; the HDF5 handle is opened lazily in each process.

    At most MAX_OPEN_SHARDS shards hold a handle in one process: opening another closes the least
    recently used one, which reopens on its next access. `read_data` reads a jpeg shard's bytes through
    a plain descriptor instead (at most descriptor_cap() per process, the same LRU rule).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid = -1
        self._offsets: np.ndarray | None = None
        self._data_start: int | None = None
        self._layout_read = False
        self._checksums: np.ndarray | None = None
        self._checksums_read = False
        self._fd: int | None = None
        self._fd_pid = -1
        self.stored_count: int | None = None  # the shard's own `count`, once labels() has read it

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
        _make_room(registry, MAX_OPEN_SHARDS, Shard._release)
        self._file = open_shard_file(self.path)
        self._pid = pid
        registry[id(self)] = self
        return self._file

    def _release(self) -> None:
        """Close this process's handle (the offsets stay cached: they do not change)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def _descriptor(self) -> int:
        """This process's plain descriptor of the shard, opened on first use (the LRU rule of `file`)."""
        registry = _fd_registry()
        pid = os.getpid()
        if self._fd is not None and self._fd_pid == pid and id(self) in registry:
            registry.move_to_end(id(self))
            return self._fd
        self._fd = None  # the parent's descriptor (after a fork): not ours to use or close
        _make_room(registry, descriptor_cap(), Shard._close_descriptor)
        self._fd = open_shard_descriptor(self.path)
        self._fd_pid = pid
        registry[id(self)] = self
        return self._fd

    def _close_descriptor(self) -> None:
        if self._fd is not None and self._fd_pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def close(self) -> None:
        """Close this process's handle and descriptor of the shard (both reopen on the next read)."""
        if self._pid == os.getpid():
            _open_registry().pop(id(self), None)
        if self._fd_pid == os.getpid():
            _fd_registry().pop(id(self), None)
        self._release()
        self._close_descriptor()

    @property
    def encoding(self) -> str:
        return str(self.file.attrs["encoding"])

    def __len__(self) -> int:
        return int(self.file.attrs["count"])

    @property
    def offsets(self) -> np.ndarray:
        """Where each image's bytes start in `data` (n + 1 entries; jpeg shards only)."""
        if self._offsets is None:
            self._read_layout()
        return self._offsets  # type: ignore[return-value]

    @property
    def data_start(self) -> int | None:
        """Byte offset of `data` in the file, or None where pread cannot read it (then read via `file`)."""
        if not self._layout_read:
            self._read_layout()
        return self._data_start

    def _read_layout(self) -> None:
        # Once per process and shard, with a short-lived handle so that the pread path holds no HDF5
        # state; kept when handles close and across a fork (a shard never changes once written).
        with open_shard_file(self.path) as f:
            self._offsets = f["offsets"][:]
            self._data_start = contiguous_start(f["data"])
            self._checksums = stored_checksums(f)
            self._checksums_read = True
        self._layout_read = True

    @property
    def checksums(self) -> np.ndarray | None:
        """Each image's stored crc32 (format version 2), or None for a version 1 shard; read once."""
        if not self._checksums_read:
            with open_shard_file(self.path) as f:
                self._checksums = stored_checksums(f)
            self._checksums_read = True
        return self._checksums

    def check(self, i: int, stored: np.ndarray) -> None:
        """A UserError naming image i if `stored` (its bytes as read) does not match its crc32."""
        sums = self.checksums
        if sums is not None and zlib.crc32(stored) != int(sums[i]):
            key = self.keys()[i]
            raise UserError(
                f"stored image {self.path} #{i} ({key}) is damaged: its bytes do not match the crc32 prep "
                f"wrote; find every damaged image with alexrepro info {self.path.parent.parent} --verify and "
                "rebuild the set with alexrepro prep"
            )

    def read_data(self, start: int, out: np.ndarray) -> None:
        """Fill `out` (contiguous uint8) with the bytes of `data` from byte `start` on, by os.pread.

        For jpeg shards whose data_start is not None. Bytes missing at the end of the file (it shrank
        after it was opened) are a UserError, never a silently short image.
        """
        base = self.data_start
        if base is None:
            raise ValueError(f"{self.path}: `data` is not one contiguous block in the file; read it with h5py")
        fd = self._descriptor()
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            n = _pread_into(fd, view[done:], base + start + done)
            if n == 0:
                raise UserError(
                    f"shard {self.path} ends early: {done} of {len(view)} bytes at byte {base + start} could be "
                    f"read (the file was truncated after it was opened); check the set with alexrepro info "
                    f"{self.path.parent.parent} --verify and run alexrepro prep again to rebuild it"
                )
            done += n

    def labels(self) -> np.ndarray:
        """Every label of the shard, read with a handle closed right after (not the cached one).

        Also reads the shard's `count` attribute into `stored_count`, for the checks of SplitDataset.
        """
        with open_shard_file(self.path) as f:
            try:
                self.stored_count = int(f.attrs["count"])
                return f["labels"][:]
            except (KeyError, OSError, ValueError) as e:
                raise UserError(
                    f"shard {self.path} is damaged ({' '.join(str(e).split())}); check the set with alexrepro info "
                    f"{self.path.parent.parent} --verify and run alexrepro prep again to rebuild it"
                ) from None

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
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise UserError(f"{path} is not an alexrepro manifest; prepare the set with alexrepro prep")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise UserError(
            f"{out} has format version {manifest.get('format_version')}, this alexrepro reads "
            f"{readable}; read it with the alexrepro that wrote it, or prepare it again with this one"
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
        raise UserError(f"{out} has no {STATS} (the mean image); finish preparing it first: alexrepro prep SRC {out}")
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
        self._labels = self._checked_labels(counts)

    def _checked_labels(self, counts: np.ndarray) -> np.ndarray:
        """Every label, read once, after checking each shard's count against the manifest and every label
        against the classes: a set that disagrees with itself is refused here, in one line, rather than
        failing (or silently mislabelling) deep inside training. Reads no image."""
        hint = f"find every problem with alexrepro info {self.out} --verify and rebuild the set with alexrepro prep"
        parts = []
        for shard, expected in zip(self.shards, counts, strict=True):
            labels = shard.labels()
            count = shard.stored_count
            if count != expected or len(labels) != count:
                raise UserError(f"shard {shard.path} holds {count} images and {len(labels)} labels, but the "
                                f"manifest says {int(expected)}; {hint}")
            parts.append(labels)
        labels = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
        if len(bad):
            s, j = self.locate(int(bad[0]))
            raise UserError(f"{len(bad)} labels of the {self.split} split lie outside the manifest's "
                            f"{self.num_classes} classes (first: {int(labels[bad[0]])} at {self.shards[s].path} "
                            f"#{j}); {hint}")
        return labels

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
