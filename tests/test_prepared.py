"""The prepared-set reader: a bounded number of open shard handles, labels read once, clear errors."""

import errno
import json
import os
import pickle
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from format_v1 import downgrade_set
from loader_data import jpeg_bytes, make_set, structured_image

from alexrepro.data import shard_files, shards
from alexrepro.data.manifest import read_manifest
from alexrepro.data.shard_files import open_shard_count
from alexrepro.data.shards import Shard, decode_jpeg
from alexrepro.data.split import open_split
from alexrepro.errors import UserError
from alexrepro.loaders import make_loader
from alexrepro.recipe import DataConfig

N_TRAIN, PER_SHARD, CAP = 16, 2, 3  # 8 training shards, more than the monkeypatched cap


def open_files_under(folder, pid="self"):
    """How many file descriptors of process `pid` point into `folder` (HDF5 keeps one per open file)."""
    folder = str(Path(folder).resolve())
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        n += target.startswith(folder + os.sep)
    return n


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")


@pytest.fixture(params=["raw", "jpeg"])
def many_shards(request, tmp_path):
    return make_set(tmp_path / request.param, n_train=N_TRAIN, n_val=3, per_shard=PER_SHARD, encoding=request.param)


def expected_image(out, i):
    img = structured_image(i)
    return img if "raw" in Path(out).name else decode_jpeg(jpeg_bytes(img))


@pytest.fixture
def small_cap(monkeypatch):
    monkeypatch.setattr(shard_files, "MAX_OPEN_SHARDS", CAP)
    yield CAP


@needs_proc
def test_random_reads_never_hold_more_than_the_cap_open(many_shards, small_cap):
    ds = open_split(many_shards, "train")
    assert len(ds.shards) == N_TRAIN // PER_SHARD > small_cap
    order = np.random.default_rng(0).permutation(np.tile(np.arange(N_TRAIN), 3))
    try:
        for i in order:
            image, label = ds[int(i)]
            assert label == i and np.array_equal(image, expected_image(many_shards, int(i)))
            assert open_shard_count() <= small_cap
            assert open_files_under(many_shards) <= small_cap
        assert open_files_under(many_shards) == small_cap  # the most recently used stay open
    finally:
        for shard in ds.shards:
            shard.close()
    assert open_shard_count() == 0 and open_files_under(many_shards) == 0


@needs_proc
def test_labels_and_keys_use_short_lived_handles(many_shards):
    ds = open_split(many_shards, "train")
    assert ds.labels.tolist() == list(range(N_TRAIN))
    assert ds.keys() == [f"train/img{i}.JPEG" for i in range(N_TRAIN)]
    assert open_shard_count() == 0 and open_files_under(many_shards) == 0


def test_labels_are_read_once_and_travel_with_the_pickle(many_shards, monkeypatch):
    calls = []
    real = Shard.labels
    monkeypatch.setattr(Shard, "labels", lambda self: calls.append(self.path) or real(self))
    ds = open_split(many_shards, "train")
    copy = pickle.loads(pickle.dumps(ds))  # what a spawned worker gets
    assert len(calls) == len(ds.shards)  # pickling read them, once, here
    assert copy.labels.tolist() == list(range(N_TRAIN)) and ds.labels.tolist() == list(range(N_TRAIN))
    assert len(calls) == len(ds.shards)  # neither the copy nor the original read them again
    assert copy[5][1] == 5 and np.array_equal(copy[5][0], expected_image(many_shards, 5))
    for shard in copy.shards:
        shard.close()


def test_an_evicted_shard_reopens_and_close_forgets_it(tmp_path, small_cap):
    out = make_set(tmp_path / "raw", n_train=N_TRAIN, n_val=3, per_shard=PER_SHARD, encoding="raw")
    shards = open_split(out, "train").shards
    first = shards[0].file
    for s in shards[1:small_cap]:
        assert len(s) == PER_SHARD
    assert len(shards[small_cap]) == PER_SHARD  # evicts shards[0], the least recently used
    assert not first and open_shard_count() == small_cap  # a closed h5py File is falsy
    assert np.array_equal(shards[0].image(1), structured_image(1))  # reopens transparently
    shards[0].close()
    assert open_shard_count() == small_cap - 1
    for s in shards:
        s.close()
    assert open_shard_count() == 0


def test_too_many_open_files_says_ulimit_not_corrupt(many_shards, monkeypatch):
    def emfile(*a, **k):
        raise OSError(errno.EMFILE, "Unable to synchronously open file (unable to open file: errno = 24, "
                      "error message = 'Too many open files')")

    shard = open_split(many_shards, "train").shards[0]  # opening reads every shard's labels once
    monkeypatch.setattr(shard_files.h5py, "File", emfile)
    for read in (lambda: shard.file, shard.labels):
        with pytest.raises(UserError, match="too many open files") as e:
            read()
        assert "ulimit -n" in str(e.value) and "prep again" not in str(e.value)


def test_a_missing_shard_is_still_named_missing(many_shards):
    ds = open_split(many_shards, "train")
    ds.shards[1].path.unlink()
    with pytest.raises(UserError, match=r"00001\.h5 \(missing\).*prep again"):
        ds[PER_SHARD]


def test_each_shard_stores_the_crc32_of_each_images_bytes(tmp_path):
    images = [structured_image(i) for i in range(3)]
    jpegs = [jpeg_bytes(im) for im in images]
    shards.write_shard(tmp_path / "j.h5", "jpeg", jpegs, [0, 1, 2], ["a", "b", "c"])
    shards.write_shard(tmp_path / "r.h5", "raw", np.stack(images), [0, 1, 2], ["a", "b", "c"])
    for name, stored in (("j.h5", jpegs), ("r.h5", [im.tobytes() for im in images])):
        with h5py.File(tmp_path / name, "r") as f:
            assert f["crc32"].dtype == np.uint32 and f.attrs["format_version"] == 2
            assert f["crc32"][:].tolist() == [zlib.crc32(b) for b in stored]
    # zlib's CRC-32 of the standard check string, so the dataset holds the usual crc32 and no other
    assert shards.image_checksums([b"123456789"]).tolist() == [0xCBF43926]


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_a_version_1_set_still_opens_and_the_loader_reads_it(tmp_path, encoding):
    out = make_set(tmp_path / encoding, n_train=8, n_val=3, per_shard=3, encoding=encoding)
    downgrade_set(out)
    assert read_manifest(out).format_version == 1
    ds = open_split(out, "train")
    assert len(ds) == 8 and ds[5][1] == 5 and np.array_equal(ds[5][0], expected_image(out, 5))
    for shard in ds.shards:
        shard.close()
    loader = make_loader(out, "train", DataConfig(workers=0), 4, train=True, device="cpu", kind="torch")
    loader.set_epoch(0)
    batches = list(loader)
    loader.close()
    assert sorted(int(y) for _, labels in batches for y in labels) == list(range(8))  # each image once
    assert all(x.shape[1:] == (3, 224, 224) for x, _ in batches)


def test_a_newer_format_version_is_refused(tmp_path):
    out = make_set(tmp_path / "set", n_train=2, n_val=1)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["format_version"] = 3
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="format version 3, this alexrepro reads 1, 2"):
        open_split(out, "train")


# --------------------------------------------------------------------------------------------- checked when opened
def test_a_label_outside_the_classes_is_refused_when_the_split_is_opened(tmp_path):
    out = make_set(tmp_path / "set", n_train=8, n_val=3, per_shard=4, labels_are_indices=False)  # labels i % 3
    manifest = json.loads((out / "manifest.json").read_text())
    classes = len(manifest["classes"])
    with h5py.File(out / manifest["splits"]["train"]["shards"][1]["file"], "r+") as f:
        f["labels"][2] = classes  # one past the last class
    with pytest.raises(UserError) as e:
        open_split(out, "train")
    msg = str(e.value)
    assert f"1 labels of the train split lie outside the manifest's {classes} classes (first: {classes} at " in msg
    assert "00001.h5 #2" in msg and f"alexrepro info {out} --verify" in msg and "\n" not in msg
    assert len(open_split(out, "val")) == 3  # the other split is fine


@pytest.mark.parametrize("where", ["manifest", "shard"])
def test_counts_that_disagree_with_the_shards_are_refused_when_the_split_is_opened(tmp_path, where):
    out = make_set(tmp_path / "set", n_train=8, n_val=3, per_shard=4, labels_are_indices=False)
    manifest = json.loads((out / "manifest.json").read_text())
    if where == "manifest":  # a manifest that promises more images than the shard holds
        manifest["splits"]["train"]["shards"][0]["count"] += 1
        (out / "manifest.json").write_text(json.dumps(manifest))
    else:  # a shard whose own count disagrees with its labels
        with h5py.File(out / manifest["splits"]["train"]["shards"][0]["file"], "r+") as f:
            f.attrs["count"] = 3
    with pytest.raises(UserError, match=rf"00000\.h5 holds \d images and 4 labels, but the manifest says \d; "
                                        rf"find every problem with alexrepro info {out} --verify"):
        open_split(out, "train")
