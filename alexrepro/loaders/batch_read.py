"""Read the stored images of a whole batch with a few reads per shard (no h5py call per image).

JPEG shards: the batch's images in a shard, sorted, are read with one os.pread per run of images
that lie back to back in the file, through the shard's plain descriptor (Shard.read_data): no HDF5
handle, so a shuffled batch over many shards reopens nothing. Where `data` is not one contiguous
block (chunked or compressed by another writer), or with pread=False, the byte ranges are OR-ed
into one hyperslab selection and read with a single H5Dread. Raw shards: one slice read per run of
adjacent images. Every image's bytes are checked against the crc32 stored beside them. Used by the DALI
source and by the PyTorch workers alike.
"""

from __future__ import annotations

import h5py
import numpy as np

from alexrepro.data.shards import Shard, decode_jpeg, reading
from alexrepro.data.split import SplitDataset
from alexrepro.errors import UserError


def read_batch(split: SplitDataset, indices: np.ndarray, pread: bool = True, check: bool = True) -> list[np.ndarray]:
    """The stored form of each image in `indices` (JPEG bytes as uint8, or uint8 256×256×3), in order.

    pread=False reads JPEG bytes through h5py handles even where pread could (the benchmark's baseline).
    check=True compares each image's bytes with the crc32 prep stored (format version 2; about 8 µs
    for a 40 kB JPEG, 5 GB/s on the development CPU), so a damaged image stops training with its
    name instead of being learnt from: a JPEG can decode without error from damaged bytes.
    """
    indices = np.asarray(indices, dtype=np.int64)
    out: list[np.ndarray | None] = [None] * len(indices)
    if len(indices) == 0:
        return []
    if indices.min() < 0 or indices.max() >= len(split):
        raise IndexError(f"indices out of range for {len(split)} images")
    shard_of = np.searchsorted(split.starts, indices, side="right") - 1
    for s in np.unique(shard_of):
        where = np.flatnonzero(shard_of == s)
        local = indices[where] - split.starts[s]
        order = np.argsort(local, kind="stable")
        shard = split.shards[int(s)]
        with reading(shard.path):  # a shard whose HDF5 structure is damaged: one line, never h5py's KeyError
            if split.encoding == "raw":
                items = _read_raw(shard, local[order])
            else:
                items = _read_encoded(shard, local[order], pread)
            for k, i, item in zip(where[order], local[order], items, strict=True):
                if check:
                    shard.check(int(i), item)
                out[int(k)] = item
    return out  # type: ignore[return-value]


def decoded(split: SplitDataset, index: int, stored: np.ndarray) -> np.ndarray:
    """A stored image as RGB uint8 H×W×3 (raw: as it is); a JPEG that does not decode is a UserError naming
    the image, in the same words whichever backend found it."""
    if split.encoding == "raw":
        return stored
    return decode_jpeg(stored, f"{split.out}/{split.split} #{index}")


def first_damage(split: SplitDataset, indices: np.ndarray) -> UserError | None:
    """The error of the first damaged image among `indices` (its crc32, then its decoding), or None.

    What a backend that decodes elsewhere (DALI) calls when it fails, to name the image as the PyTorch
    backend would have.
    """
    for i in np.asarray(indices, dtype=np.int64).tolist():
        try:
            decoded(split, i, read_batch(split, np.array([i]))[0])
        except UserError as e:
            return e
    return None


def _read_raw(shard: Shard, local_sorted: np.ndarray) -> list[np.ndarray]:
    """One slice read per run of adjacent images. h5py's point selection (`images[[3, 9, 40]]`) over the shard's
    per-image chunks took 0.78 s for 32 images where 32 slice reads took 4 ms (development CPU, h5py 3)."""
    uniq, inverse = np.unique(local_sorted, return_inverse=True)
    dset = shard.file["images"]
    first = np.flatnonzero(np.concatenate([[True], np.diff(uniq) != 1]))  # where a run of adjacent images starts
    last = np.concatenate([first[1:], [len(uniq)]])
    images = [im for a, b in zip(first.tolist(), last.tolist(), strict=True)
              for im in dset[int(uniq[a]) : int(uniq[b - 1]) + 1]]
    return [images[j] for j in inverse]


def _read_encoded(shard: Shard, local_sorted: np.ndarray, pread: bool) -> list[np.ndarray]:
    off = shard.offsets
    uniq, inverse = np.unique(local_sorted, return_inverse=True)
    lo, hi = off[uniq], off[uniq + 1]
    lengths = hi - lo
    total = int(lengths.sum())
    buf = np.empty(total, dtype=np.uint8)  # the images back to back, in file order
    if total and pread and shard.data_start is not None:
        _pread_runs(shard, lo, hi, buf)
    elif total:
        _read_hyperslabs(shard, lo, lengths, buf)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    pieces = [buf[starts[j] : starts[j + 1]] for j in range(len(uniq))]
    return [pieces[j] for j in inverse]


def _pread_runs(shard: Shard, lo: np.ndarray, hi: np.ndarray, buf: np.ndarray) -> None:
    """One pread per run of images stored back to back (a run lands back to back in `buf` too)."""
    first = np.flatnonzero(np.concatenate([[True], lo[1:] != hi[:-1]]))  # where a run starts
    last = np.concatenate([first[1:], [len(lo)]]) - 1
    at = 0
    for a, b in zip(first.tolist(), last.tolist(), strict=True):
        n = int(hi[b] - lo[a])
        shard.read_data(int(lo[a]), buf[at : at + n])
        at += n


def _read_hyperslabs(shard: Shard, lo: np.ndarray, lengths: np.ndarray, buf: np.ndarray) -> None:
    """All the byte ranges OR-ed into one HDF5 selection, read with a single H5Dread."""
    dset = shard.file["data"]
    space = dset.id.get_space()
    space.select_none()
    for a, n in zip(lo.tolist(), lengths.tolist(), strict=True):  # selection building, no IO
        if n:
            space.select_hyperslab((a,), (n,), op=h5py.h5s.SELECT_OR)
    dset.id.read(h5py.h5s.create_simple((len(buf),)), space, buf)  # file order = sorted order
