"""The shard format: writing a shard, its per-image checksums, decoding, and the Shard reader.

A shard holds `labels` (int64, n), `keys` (source path of each image, UTF-8 strings), `crc32`
(uint32, n: zlib.crc32 of each image's stored bytes, the JPEG bytes or the raw array's C-order bytes)
and either
    jpeg: `data` (uint8, all encoded images back to back) + `offsets` (int64, n + 1)
    raw:  `images` (uint8, n×256×256×3, chunked one image per chunk)
with attributes `encoding`, `image_size`, `count`, `format_version`. The flat byte array with
offsets avoids HDF5 variable-length types, which h5py reads slowly.

Versions: 2 added `crc32`. Version 1 shards (no checksums) still read and verify, also beside version 2
shards in one set (a version 1 prep resumed by this one); every version in READABLE_VERSIONS is read.
How the files are opened, and how many stay open, is alexrepro.data.shard_files. See docs/FORMAT.md.
"""

from __future__ import annotations

import contextlib
import io
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from alexrepro.data.shard_files import (
    DESCRIPTORS,
    HANDLES,
    LazyFile,
    contiguous_start,
    open_shard_descriptor,
    open_shard_file,
    pread_into,
)
from alexrepro.errors import UserError
from alexrepro.process.atomic import atomic_path

FORMAT_VERSION = 2  # 2: per-image `crc32` in every shard
READABLE_VERSIONS = (1, 2)  # sets and shards this alexrepro reads (1: no checksums)
CHECKSUMS = "crc32"  # the shard dataset of per-image checksums (format version 2 on)
IMAGE_SIZE = 256  # §2: every image is stored as its central 256×256 patch
ENCODINGS = ("jpeg", "raw")


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


# What h5py raises when a shard's HDF5 structure is damaged (a flipped byte in an object header or a link:
# "KeyError: Unable to synchronously open object", OSError, ...): each is a damaged shard to the user.
HDF5_ERRORS = (KeyError, OSError, ValueError, RuntimeError, TypeError)


def damaged_shard(path: Path, error: BaseException) -> UserError:
    """The one line for a shard whose structure does not read: its path and the check to run."""
    detail = error.args[0] if isinstance(error, KeyError) and error.args else error  # str(KeyError) adds quotes
    return UserError(
        f"shard {path} is damaged ({' '.join(str(detail).split())[:200]}); check the set with alexrepro info "
        f"{path.parent.parent} --verify and run alexrepro prep again to rebuild it"
    )


@contextlib.contextmanager
def reading(path: Path) -> Iterator[None]:
    """Read a shard in the block: an h5py error there is the UserError of `damaged_shard`, never a traceback."""
    try:
        yield
    except HDF5_ERRORS as e:
        raise damaged_shard(Path(path), e) from None


def _close_handle(f: h5py.File) -> None:
    f.close()


class Shard:
    """Random access to one shard; its files are opened lazily in each process.

    At most MAX_OPEN_SHARDS shards hold an h5py handle in one process: opening another closes the least
    recently used one, which reopens on its next access. `read_data` reads a jpeg shard's bytes through
    a plain descriptor instead (at most descriptor_cap() per process, the same rule); both limits are
    in alexrepro.data.shard_files.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle: LazyFile[h5py.File] = LazyFile(HANDLES, lambda: open_shard_file(self.path), _close_handle)
        self._descriptor: LazyFile[int] = LazyFile(DESCRIPTORS, lambda: open_shard_descriptor(self.path), os.close)
        self._offsets: np.ndarray | None = None
        self._data_start: int | None = None
        self._layout_read = False
        self._checksums: np.ndarray | None = None
        self._checksums_read = False
        self.stored_count: int | None = None  # the shard's own `count`, once labels() has read it

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])

    @property
    def file(self) -> h5py.File:
        """This process's h5py handle of the shard (the offsets stay cached when it closes: they do not change)."""
        return self._handle.get()

    def close(self) -> None:
        """Close this process's handle and descriptor of the shard (both reopen on the next read)."""
        self._handle.close()
        self._descriptor.close()

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
        fd = self._descriptor.get()
        view = memoryview(out).cast("B")
        done = 0
        while done < len(view):
            n = pread_into(fd, view[done:], base + start + done)
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
        with open_shard_file(self.path) as f, reading(self.path):
            self.stored_count = int(f.attrs["count"])
            return f["labels"][:]

    def keys(self) -> list[str]:
        """The source path of every image, read with a handle closed right after."""
        with open_shard_file(self.path) as f, reading(self.path):
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
        with reading(self.path):
            if self.encoding == "raw":
                return self.file["images"][i]
            stored = self.encoded(i)
        return decode_jpeg(stored, f"{self.path} #{i}")
