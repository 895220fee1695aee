"""The pread path for jpeg shards: the same bytes as h5py, safe across fork, bounded descriptors, clear errors."""

import multiprocessing
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
from loader_data import jpeg_bytes, make_set, structured_image
from test_prepared import needs_proc, open_files_under

from alexrepro.data import shard_files, shards
from alexrepro.data.options import PrepOptions
from alexrepro.data.prep import prep
from alexrepro.data.shard_files import contiguous_start, open_descriptor_count, open_shard_count
from alexrepro.data.split import open_split
from alexrepro.errors import UserError
from alexrepro.loaders.batch_read import read_batch

N, PER_SHARD = 60, 4  # 15 training shards


@pytest.fixture
def splits():
    """open_split for the test; every shard it opened is closed afterwards (handles and descriptors)."""
    opened = []

    def open_(out, split="train"):
        opened.append(open_split(out, split))
        return opened[-1]

    yield open_
    for ds in opened:
        for shard in ds.shards:
            shard.close()


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    return make_set(tmp_path_factory.mktemp("pread") / "jpeg", n_train=N, n_val=3, per_shard=PER_SHARD)


def h5py_bytes(ds, i):
    """Image i's stored bytes read straight with h5py (the reference)."""
    s, j = ds.locate(int(i))
    with h5py.File(ds.shards[s].path, "r") as f:
        off = f["offsets"][:]
        return f["data"][off[j] : off[j + 1]].tobytes()


def test_batches_are_the_stored_bytes_for_random_index_sets(many_shards, splits):
    ds = splits(many_shards)
    fds, handles = open_descriptor_count(), open_shard_count()  # other tests' shards may still be open
    originals = [jpeg_bytes(structured_image(i)) for i in range(N)]  # what make_set stored
    rng = np.random.default_rng(0)
    index_sets = [rng.choice(N, size=k, replace=True) for k in (1, 7, 32, 64, 128)]
    index_sets += [np.arange(N), np.arange(N)[::-1], np.array([5, 4, 6, 5, 5, 20, 21, 22, 59])]
    for idx in index_sets:
        got = read_batch(ds, idx)
        assert [g.tobytes() for g in got] == [originals[i] for i in idx]
        assert [g.tobytes() for g in got] == [h5py_bytes(ds, i) for i in idx]
        assert all(g.dtype == np.uint8 and g.ndim == 1 for g in got)
    assert all(sh.data_start is not None for sh in ds.shards)  # every shard went through pread ...
    assert open_descriptor_count() - fds == len(ds.shards) and open_shard_count() == handles  # ... no h5py


def test_the_data_start_is_where_the_bytes_lie_in_the_file(tmp_path):
    jpegs = [jpeg_bytes(structured_image(i)) for i in range(3)]
    shards.write_shard(tmp_path / "s.h5", "jpeg", jpegs, [0, 1, 2], ["a", "b", "c"])
    with h5py.File(tmp_path / "s.h5", "r") as f:
        start = contiguous_start(f["data"])
    with open(tmp_path / "s.h5", "rb") as raw:
        raw.seek(start)
        assert raw.read(sum(map(len, jpegs))) == b"".join(jpegs)


def test_a_real_prep_with_small_shards_reads_by_pread(synth_src, tmp_path, splits):
    out = tmp_path / "out"
    prep(synth_src, out, PrepOptions(workers=1, shard_size=5), progress=False)
    ds = splits(out)
    assert len(ds.shards) >= 4 and all(sh.data_start is not None for sh in ds.shards)
    idx = np.random.default_rng(1).permutation(len(ds))
    assert [g.tobytes() for g in read_batch(ds, idx)] == [h5py_bytes(ds, i) for i in idx]


def _child_reads(out, batches, queue):
    try:
        ds = open_split(out, "train")
        got = [[g.tobytes() for g in read_batch(ds, idx)] for idx in batches]
        fds = open_files_under(out) if Path("/proc/self/fd").is_dir() else None
        queue.put((got, open_descriptor_count(), fds))
    except BaseException as e:  # report anything to the parent instead of dying silently
        queue.put(repr(e))


@needs_proc
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_forked_child_opens_its_own_descriptors_and_the_parent_keeps_reading(many_shards, splits):
    ds = splits(many_shards)
    rng = np.random.default_rng(2)
    batches = [rng.choice(N, size=40) for _ in range(3)]
    fds = open_descriptor_count()  # other tests' shards may still be open
    first = [g.tobytes() for g in read_batch(ds, np.arange(N))]  # the parent opens all 15
    assert open_descriptor_count() - fds == 15 and open_files_under(many_shards) == 15

    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child_reads, args=(many_shards, batches, queue))
    child.start()
    result = queue.get(timeout=60)
    child.join(timeout=60)
    assert not isinstance(result, str), result
    got, child_count, child_fds = result
    assert got == [[h5py_bytes(ds, i) for i in idx] for idx in batches]
    # The child read through 15 descriptors of its own and left the 15 it inherited alone (not used,
    # not closed): 30 under the set in the child.
    assert child_count == 15 and child_fds == 30
    assert child.exitcode == 0

    # The parent's descriptors are untouched: it reads on without reopening anything.
    assert [g.tobytes() for g in read_batch(ds, np.arange(N))] == first
    for idx in batches:
        assert [g.tobytes() for g in read_batch(ds, idx)] == [h5py_bytes(ds, i) for i in idx]
    assert open_descriptor_count() - fds == 15 and open_files_under(many_shards) == 15


@needs_proc
def test_a_cap_of_two_descriptors_reads_across_five_shards(tmp_path, splits, monkeypatch):
    out = make_set(tmp_path / "five", n_train=20, n_val=3, per_shard=4)
    monkeypatch.setattr(shard_files, "MAX_OPEN_FDS", 2)
    ds = splits(out)
    assert len(ds.shards) == 5
    originals = [jpeg_bytes(structured_image(i)) for i in range(20)]
    rng = np.random.default_rng(3)
    for _ in range(6):
        idx = rng.permutation(20)  # every batch touches all five shards
        assert [g.tobytes() for g in read_batch(ds, idx)] == [originals[i] for i in idx]
        assert open_descriptor_count() <= 2 and open_files_under(out) <= 2
    for shard in ds.shards:
        shard.close()
    assert open_descriptor_count() == 0 and open_files_under(out) == 0


def test_the_descriptor_cap_comes_from_the_raised_open_file_limit(monkeypatch):
    resource = pytest.importorskip("resource")
    calls = []
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 8192))
    monkeypatch.setattr(resource, "setrlimit", lambda which, limits: calls.append(limits))
    monkeypatch.setattr(shard_files, "_fd_cap", None)
    assert shard_files.descriptor_cap() == 8192 // 4 and calls == [(8192, 8192)]

    def refuse(which, limits):
        raise ValueError("not allowed")

    monkeypatch.setattr(resource, "setrlimit", refuse)  # the soft limit stays
    monkeypatch.setattr(shard_files, "_fd_cap", None)
    assert shard_files.descriptor_cap() == 1024 // 4
    monkeypatch.setattr(shard_files, "MAX_OPEN_FDS", 3)
    assert shard_files.descriptor_cap() == 3


def test_a_shard_truncated_after_opening_is_a_user_error_not_a_short_image(tmp_path, splits):
    out = make_set(tmp_path / "cut", n_train=12, n_val=3, per_shard=4)
    ds = splits(out)
    read_batch(ds, np.arange(12))  # layout cached and descriptors open
    shard = ds.shards[1]
    os.truncate(shard.path, shard.data_start + int(shard.offsets[2]))  # images 0 and 1 of shard 1 stay whole
    assert read_batch(ds, [4, 5])[1].tobytes() == jpeg_bytes(structured_image(5))
    with pytest.raises(UserError, match=r"00001\.h5 ends early.*alexrepro info .*cut --verify.*prep again"):
        read_batch(ds, [0, 6])


def test_a_truncated_or_missing_shard_before_opening_keeps_the_clear_errors(tmp_path, splits):
    out = make_set(tmp_path / "bad", n_train=12, n_val=3, per_shard=4)
    path = out / "train" / "00001.h5"
    os.truncate(path, path.stat().st_size // 2)
    with pytest.raises(UserError, match=r"cannot read shard .*00001\.h5 \(.*truncated.*--verify.*prep again"):
        read_batch(splits(out), [0, 5])
    path.unlink()
    with pytest.raises(UserError, match=r"00001\.h5 \(missing\).*prep again"):
        read_batch(splits(out), [5])


def rewrite_data(path, **create):
    """Rewrite a shard's `data` dataset with other storage options (as another HDF5 writer might)."""
    with h5py.File(path, "r+") as f:
        data = f["data"][:]
        del f["data"]
        f.create_dataset("data", data=data, **create)


@needs_proc
@pytest.mark.parametrize("create", [{"chunks": (1000,), "compression": "gzip"}, {"chunks": (1000,)}])
def test_a_chunked_data_set_falls_back_to_h5py(tmp_path, splits, create):
    out = make_set(tmp_path / "chunked", n_train=12, n_val=3, per_shard=4)
    rewrite_data(out / "train" / "00000.h5", **create)
    ds = splits(out)
    fds, handles = open_descriptor_count(), open_shard_count()  # other tests' shards may still be open
    idx = np.array([3, 0, 2, 2])  # shard 0 only
    assert [g.tobytes() for g in read_batch(ds, idx)] == [jpeg_bytes(structured_image(i)) for i in idx]
    assert ds.shards[0].data_start is None and open_descriptor_count() == fds and open_shard_count() == handles + 1
    idx = np.array([11, 3, 7, 1])  # the other shards still go through pread
    assert [g.tobytes() for g in read_batch(ds, idx)] == [jpeg_bytes(structured_image(i)) for i in idx]
    assert open_descriptor_count() == fds + 2 and open_files_under(out) == 3  # 2 descriptors, 1 h5py handle


def test_an_empty_data_set_has_no_start(tmp_path):
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f.create_dataset("data", data=np.zeros(0, dtype=np.uint8))
        f.create_dataset("full", data=np.arange(5, dtype=np.uint8))
    with h5py.File(tmp_path / "e.h5", "r") as f:
        assert contiguous_start(f["data"]) is None and contiguous_start(f["full"]) is not None


def test_pread_false_reads_the_same_bytes_through_h5py(many_shards, splits):
    ds = splits(many_shards)
    fds, handles = open_descriptor_count(), open_shard_count()  # other tests' shards may still be open
    idx = np.random.default_rng(4).choice(N, size=50)
    assert [g.tobytes() for g in read_batch(ds, idx, pread=False)] == [h5py_bytes(ds, i) for i in idx]
    assert open_descriptor_count() == fds and open_shard_count() == handles + len(np.unique(idx // PER_SHARD))


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_damaged_bytes_stop_the_loaders_with_the_images_name(tmp_path, splits, encoding, capsys):
    # A JPEG whose entropy-coded data lost a bit still decodes (to another picture): only the crc32 that
    # prep stored can tell. Every batch read checks it, in both loaders' shared read path.
    from test_info import FLIP, entropy_coded_byte

    from alexrepro.cli import main
    from alexrepro.loaders import make_loader
    from alexrepro.recipe import DataConfig

    out = make_set(tmp_path / "set", n_train=12, n_val=3, per_shard=4, encoding=encoding)
    ds = splits(out)
    path, i = ds.shards[1].path, 2  # global image 6
    with h5py.File(path, "r+") as f:
        key = f["keys"][i].decode()
        if encoding == "jpeg":
            off = f["offsets"][:]
            at = int(off[i]) + entropy_coded_byte(f["data"][off[i] : off[i + 1]].tobytes())
            f["data"][at] ^= FLIP
        else:
            f["images"][i, 100, 100, 0] ^= FLIP
    ds = splits(out)
    assert len(read_batch(ds, np.array([0, 5, 7]))) == 3  # the images around it read
    with pytest.raises(UserError, match=rf"#{i} \({key}\) is damaged.*info {out} --verify"):
        read_batch(ds, np.array([0, 6, 7]))
    assert len(read_batch(ds, np.array([6]), check=False)[0]) > 0  # the check is what refuses it
    loader = make_loader(out, "train", DataConfig(workers=1), 12, train=True, device="cpu", kind="torch")
    try:
        with pytest.raises(UserError, match="is damaged") as e:
            next(iter(loader))
        assert "\n" not in str(e.value)  # one line, not the worker's traceback
    finally:
        loader.close()
    with pytest.raises(SystemExit) as code:  # and the check the message points to finds it too
        main(["info", str(out), "--verify"])
    assert code.value.code == 1 and key in capsys.readouterr().err


def test_raw_batches_read_each_image_in_order_with_repeats(raw_set):
    # Runs of adjacent images are read as slices; any order, repeats and shard boundaries give each image.
    ds = open_split(raw_set, "train")
    idx = np.array([5, 6, 7, 5, 19, 3, 4, 8, 0, 7, 15, 16])  # runs within and across the shards of 8
    got = read_batch(ds, idx)
    assert len(got) == len(idx)
    for i, image in zip(idx, got, strict=True):
        s, j = ds.locate(int(i))
        assert np.array_equal(image, ds.shards[s].file["images"][j]) and np.array_equal(image, structured_image(int(i)))
