"""Sources: every layout is found and labelled by the sorted training WNIDs, never by devkit order."""

import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from alexrepro.data.source_labels import read_meta
from alexrepro.data.sources import find_sources, read_item
from alexrepro.errors import UserError

WNIDS = ["n01440764", "n01443537", "n02085620"]  # sorted: class indices 0, 1, 2
NAMES = {"n01440764": "tench", "n01443537": "goldfish", "n02085620": "Chihuahua"}
# Devkit IDs in a deliberately non-sorted order, as in the real meta.mat: ID 1 is the LAST sorted WNID.
DEVKIT_ID = {"n02085620": 1, "n01440764": 2, "n01443537": 3}


def jpeg_bytes(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_meta(path: Path, year: str = "2012") -> None:
    """A meta.mat shaped like the devkit's: leaves first (num_children 0), then one inner synset."""
    rows = [(DEVKIT_ID[w], w, NAMES[w], 0) for w in WNIDS] + [(4, "n00001740", "entity", 3)]
    rows.sort()
    dtype = [(f"ILSVRC{year}_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    table = np.empty((len(rows), 1), dtype=dtype)
    for i, row in enumerate(rows):
        table[i, 0] = row
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"synsets": table})


def make_train(src: Path, per_class: int = 2) -> None:
    for c, w in enumerate(WNIDS):
        for i in range(per_class):
            write(src / "train" / w / f"{w}_{i}.JPEG", jpeg_bytes(10 * c + i))


def flat_val(src: Path, folder: str = "val", year: str = "2012", kind: str = "val") -> list[str]:
    """Six flat images; returns the true WNID of image number 1..6."""
    truth = [WNIDS[k % 3] for k in (2, 0, 1, 1, 2, 0)]
    for i in range(1, 7):
        write(src / folder / f"ILSVRC{year}_{kind}_{i:08d}.JPEG", jpeg_bytes(100 + i))
    return truth


def labels_by_key(split) -> dict[str, int]:
    return {it.key: it.label for it in split.items}


def test_class_folders_sorted_wnids(tmp_path):
    make_train(tmp_path)
    for c, w in enumerate(WNIDS):
        write(tmp_path / "val" / w / f"v{c}.JPEG", jpeg_bytes(50 + c))
    s = find_sources(tmp_path)
    assert [c.wnid for c in s.classes] == sorted(WNIDS) and [c.index for c in s.classes] == [0, 1, 2]
    train = labels_by_key(s.splits["train"])
    assert train["train/n01440764/n01440764_1.JPEG"] == 0 and train["train/n02085620/n02085620_0.JPEG"] == 2
    assert labels_by_key(s.splits["val"]) == {f"val/{w}/v{c}.JPEG": c for c, w in enumerate(WNIDS)}
    keys = [it.key for it in s.splits["train"].items]
    assert keys == sorted(keys) and len(keys) == 6
    assert read_item(s.splits["train"].items[0]) == jpeg_bytes(0)


def test_flat_val_through_devkit_not_sorted_order(tmp_path):
    make_train(tmp_path)
    truth = flat_val(tmp_path)
    write_meta(tmp_path / "devkit" / "data" / "meta.mat")
    gt = "".join(f"{DEVKIT_ID[w]}\n" for w in truth)
    write(tmp_path / "devkit" / "data" / "ILSVRC2012_validation_ground_truth.txt", gt.encode())
    s = find_sources(tmp_path)
    got = labels_by_key(s.splits["val"])
    # the label is the WNID's place in sorted order, not its devkit ID
    assert got == {f"val/ILSVRC2012_val_{i:08d}.JPEG": sorted(WNIDS).index(w) for i, w in enumerate(truth, 1)}
    assert any(DEVKIT_ID[w] - 1 != sorted(WNIDS).index(w) for w in truth)
    assert {c.wnid: c.name for c in s.classes} == NAMES  # names from meta.mat
    assert len(s.classes) == 3  # the inner synset is not a class


def test_read_meta_maps_ids(tmp_path):
    write_meta(tmp_path / "meta.mat", year="2010")
    year, table = read_meta(tmp_path / "meta.mat")
    assert year == "2010" and table[1] == ("n02085620", "Chihuahua", True) and table[4][2] is False


def test_kaggle_solution_and_synset_mapping(tmp_path):
    make_train(tmp_path)
    truth = flat_val(tmp_path)
    rows = "".join(f"ILSVRC2012_val_{i:08d},{w} 1 2 30 40 {w} 3 4 10 20\n" for i, w in enumerate(truth, 1))
    write(tmp_path / "LOC_val_solution.csv", ("ImageId,PredictionString\n" + rows).encode())
    write(tmp_path / "LOC_synset_mapping.txt", "".join(f"{w} {NAMES[w]}, x\n" for w in WNIDS).encode())
    s = find_sources(tmp_path)
    got = labels_by_key(s.splits["val"])
    assert got == {f"val/ILSVRC2012_val_{i:08d}.JPEG": sorted(WNIDS).index(w) for i, w in enumerate(truth, 1)}
    assert s.classes[0].name == "tench, x"


def test_ilsvrc2010_test_ground_truth(tmp_path):
    make_train(tmp_path)
    truth = flat_val(tmp_path, folder="test", year="2010", kind="test")
    devkit = tmp_path / "ILSVRC2010_devkit-1.0" / "data"
    write_meta(devkit / "meta.mat", year="2010")
    write(devkit / "ILSVRC2010_test_ground_truth.txt", "".join(f"{DEVKIT_ID[w]}\n" for w in truth).encode())
    s = find_sources(tmp_path)
    got = labels_by_key(s.splits["test"])
    assert got == {f"test/ILSVRC2010_test_{i:08d}.JPEG": sorted(WNIDS).index(w) for i, w in enumerate(truth, 1)}


def test_explicit_devkit_and_labels_files(tmp_path):
    src, elsewhere = tmp_path / "src", tmp_path / "kit"
    make_train(src)
    truth = flat_val(src)
    write_meta(elsewhere / "meta.mat")
    gt = write(elsewhere / "gt.txt", "".join(f"{DEVKIT_ID[w]}\n" for w in truth).encode())
    s = find_sources(src, splits=["val"], devkit=elsewhere, val_labels=gt)
    assert list(s.splits) == ["val"]
    assert [it.label for it in s.splits["val"].items] == [sorted(WNIDS).index(w) for w in truth]
    with pytest.raises(UserError, match="does not exist"):
        find_sources(src, val_labels=tmp_path / "nope.txt")


def test_tar_files_read_in_place(tmp_path):
    """ILSVRC2012_img_train.tar holds one tar per class; ILSVRC2012_img_val.tar is flat."""
    originals = {}
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, w in enumerate(WNIDS):
            inner_buf = io.BytesIO()
            with tarfile.open(fileobj=inner_buf, mode="w") as inner:
                for i in range(2):
                    data = jpeg_bytes(10 * c + i)
                    originals[f"ILSVRC2012_img_train.tar/{w}.tar/{w}_{i}.JPEG"] = data
                    info = tarfile.TarInfo(f"{w}_{i}.JPEG")
                    info.size = len(data)
                    inner.addfile(info, io.BytesIO(data))
            info = tarfile.TarInfo(f"{w}.tar")
            info.size = len(inner_buf.getvalue())
            outer.addfile(info, io.BytesIO(inner_buf.getvalue()))
    truth = [WNIDS[k] for k in (1, 2, 0)]
    with tarfile.open(tmp_path / "ILSVRC2012_img_val.tar", "w") as val:
        for i in range(1, 4):
            data = jpeg_bytes(200 + i)
            originals[f"ILSVRC2012_img_val.tar/ILSVRC2012_val_{i:08d}.JPEG"] = data
            info = tarfile.TarInfo(f"ILSVRC2012_val_{i:08d}.JPEG")
            info.size = len(data)
            val.addfile(info, io.BytesIO(data))
    rows = "".join(f"ILSVRC2012_val_{i:08d},{w} 1 2 3 4\n" for i, w in enumerate(truth, 1))
    write(tmp_path / "LOC_val_solution.csv", ("ImageId,PredictionString\n" + rows).encode())
    s = find_sources(tmp_path)
    assert [c.wnid for c in s.classes] == WNIDS
    train = labels_by_key(s.splits["train"])
    assert train["ILSVRC2012_img_train.tar/n01443537.tar/n01443537_1.JPEG"] == 1 and len(train) == 6
    assert [it.label for it in s.splits["val"].items] == [1, 2, 0]
    for split in s.splits.values():
        for it in split.items:
            assert read_item(it) == originals[it.key]


def test_val_class_not_in_training_is_reported(tmp_path):
    make_train(tmp_path)
    write(tmp_path / "val" / "n09999999" / "x.JPEG", jpeg_bytes(7))
    write(tmp_path / "val" / WNIDS[0] / "y.JPEG", jpeg_bytes(8))
    val = find_sources(tmp_path).splits["val"]
    assert val.found == 2 and len(val.items) == 1
    assert val.unlabelled == [("val/n09999999/x.JPEG", "class n09999999 is not among the 3 training classes")]


def test_unlabelled_flat_split(tmp_path):
    make_train(tmp_path)
    flat_val(tmp_path, folder="test", kind="test")
    s = find_sources(tmp_path)  # the 2012 test set has no public labels: left out, with a note
    assert list(s.splits) == ["train"] and any("test not prepared" in n for n in s.notes)
    with pytest.raises(UserError, match="--test-labels"):
        find_sources(tmp_path, splits=["test"])


def test_refusals(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        find_sources(tmp_path / "missing")
    with pytest.raises(UserError, match="no recognisable"):
        find_sources(tmp_path)
    make_train(tmp_path)
    with pytest.raises(UserError, match="no val split"):
        find_sources(tmp_path, splits=["val"])
    with pytest.raises(UserError, match="unknown split"):
        find_sources(tmp_path, splits=["holdout"])


# --------------------------------------------------------------------------------------------- sources as found
def test_symlinked_class_folders_and_files_are_followed(tmp_path):
    store = tmp_path / "store"  # where the images really are, e.g. another disk
    make_train(store)
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train" / WNIDS[0]).symlink_to(store / "train" / WNIDS[0], target_is_directory=True)
    (src / "train" / WNIDS[1]).symlink_to(store / "train" / WNIDS[1], target_is_directory=True)
    (src / "train" / WNIDS[2]).mkdir()  # a real folder holding a symlinked file and a real one
    write(src / "train" / WNIDS[2] / "real.JPEG", jpeg_bytes(99))
    (src / "train" / WNIDS[2] / "linked.JPEG").symlink_to(store / "train" / WNIDS[2] / f"{WNIDS[2]}_0.JPEG")
    s = find_sources(src)
    assert [c.wnid for c in s.classes] == WNIDS
    train = labels_by_key(s.splits["train"])
    assert len(train) == 2 + 2 + 2 and train[f"train/{WNIDS[1]}/{WNIDS[1]}_1.JPEG"] == 1
    assert train[f"train/{WNIDS[2]}/linked.JPEG"] == 2 and s.splits["train"].unlabelled == []
    by_key = {it.key: it for it in s.splits["train"].items}
    assert read_item(by_key[f"train/{WNIDS[2]}/linked.JPEG"]) == jpeg_bytes(20)  # make_train: class 2, image 0
    assert read_item(by_key[f"train/{WNIDS[0]}/{WNIDS[0]}_1.JPEG"]) == jpeg_bytes(1)


def test_symlink_loops_are_reported_and_never_classes(tmp_path):
    make_train(tmp_path)
    train = tmp_path / "train"
    (train / "n00000001").symlink_to(train, target_is_directory=True)  # the split itself
    (train / "n00000002").symlink_to(tmp_path, target_is_directory=True)  # the folder above it
    (train / "n00000003").symlink_to(train / "n00000004")  # a loop of two links
    (train / "n00000004").symlink_to(train / "n00000003")
    (train / "n00000005").symlink_to(tmp_path / "nowhere")  # leads nowhere
    (train / WNIDS[0] / "self.JPEG").symlink_to(train / WNIDS[0] / "self.JPEG")  # a file that loops
    s = find_sources(tmp_path)
    assert [c.wnid for c in s.classes] == WNIDS
    reasons = dict(s.splits["train"].unlabelled)
    assert set(reasons) == {f"train/n0000000{i}/" for i in range(1, 6)}
    assert "(a loop): not read" in reasons["train/n00000001/"] and "(a loop)" in reasons["train/n00000002/"]
    assert reasons["train/n00000003/"].startswith("a symbolic link that loops")
    assert reasons["train/n00000005/"].startswith("a broken symbolic link")
    items = labels_by_key(s.splits["train"])
    assert f"train/{WNIDS[0]}/self.JPEG" in items and len(items) == 7  # listed; reading it fails (prep skips it)
    with pytest.raises(OSError):
        read_item(next(it for it in s.splits["train"].items if it.key.endswith("self.JPEG")))


@pytest.mark.skipif(sys.platform != "linux", reason="file names of any bytes need a Linux file system")
def test_names_that_are_not_utf8_get_an_escaped_key(tmp_path):
    make_train(tmp_path)
    folder = os.fsencode(tmp_path / "train")
    os.mkdir(folder + b"/n0314\xff")  # a class folder whose name is not UTF-8
    Path(os.fsdecode(folder + b"/n0314\xff/a.JPEG")).write_bytes(jpeg_bytes(7))
    Path(os.fsdecode(folder + b"/" + WNIDS[0].encode() + b"/caf\xe9.JPEG")).write_bytes(jpeg_bytes(8))
    s = find_sources(tmp_path)
    assert [c.wnid for c in s.classes] == [*WNIDS, "n0314\\xff"]  # sorted; the key is the name, escaped
    by_key = {it.key: it for it in s.splits["train"].items}
    assert by_key["train/n0314\\xff/a.JPEG"].label == 3 and read_item(by_key["train/n0314\\xff/a.JPEG"]) == jpeg_bytes(7)
    assert read_item(by_key[f"train/{WNIDS[0]}/caf\\xe9.JPEG"]) == jpeg_bytes(8)
    for key in by_key:
        key.encode("utf-8")  # every key is valid UTF-8


def tar_member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **attrs) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, len(data) if kind == tarfile.REGTYPE else 0
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def class_tar(wnid: str, members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as inner:
        for name, data in members:
            tar_member(inner, name, data)
        tar_member(inner, "link.JPEG", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
    return buf.getvalue()


def test_tar_members_outside_the_class_structure_are_reported_never_classes(tmp_path):
    with tarfile.open(tmp_path / "ILSVRC2012_img_train.tar", "w") as outer:
        for c, w in enumerate(WNIDS):
            tar_member(outer, f"{w}.tar", class_tar(w, [(f"{w}_0.JPEG", jpeg_bytes(c)), ("../up.JPEG", jpeg_bytes(9))]))
        for name in ("../x.JPEG", "/abs/dir/x.JPEG", "stray.JPEG", "a/b/deep.JPEG", "sub/n09999999.tar", "../n0.tar"):
            tar_member(outer, name, jpeg_bytes(5))
        tar_member(outer, "n08888888/link.JPEG", kind=tarfile.SYMTYPE, linkname="/etc/passwd")
        tar_member(outer, "n07777777/hard.JPEG", kind=tarfile.LNKTYPE, linkname="stray.JPEG")
        tar_member(outer, "null", kind=tarfile.CHRTYPE, devmajor=1, devminor=3)
        tar_member(outer, "fifo.JPEG", kind=tarfile.FIFOTYPE)
    s = find_sources(tmp_path)
    assert [c.wnid for c in s.classes] == WNIDS  # no "..", "dir", "b", "sub", "n08888888" or "n07777777"
    train = s.splits["train"]
    assert sorted(labels_by_key(train).values()) == [0, 1, 2]
    reasons = {k.removeprefix("ILSVRC2012_img_train.tar/"): r for k, r in train.unlabelled}
    for name in ("../x.JPEG", "/abs/dir/x.JPEG", "../n0.tar", *(f"{w}.tar/../up.JPEG" for w in WNIDS)):
        assert reasons.pop(name).startswith("outside the archive"), name
    assert reasons.pop("stray.JPEG").startswith("not inside a class folder or class tar")
    assert reasons.pop("a/b/deep.JPEG").startswith("deeper than <class>/<image>")
    assert reasons.pop("sub/n09999999.tar").startswith("a class tar inside a folder")
    assert reasons.pop("n08888888/link.JPEG").startswith("a symbolic link in the tar")
    assert reasons.pop("n07777777/hard.JPEG").startswith("a hard link in the tar")
    assert reasons.pop("null").startswith("a device in the tar") and reasons.pop("fifo.JPEG").startswith("a FIFO")
    for w in WNIDS:
        assert reasons.pop(f"{w}.tar/link.JPEG").startswith("a symbolic link in a class tar")
    assert reasons == {} and train.found == 3 + len(train.unlabelled)


def test_stray_images_beside_the_class_folders_are_reported_and_the_split_kept(tmp_path):
    make_train(tmp_path)
    write(tmp_path / "train" / "stray.JPEG", jpeg_bytes(3))
    s = find_sources(tmp_path)  # before: one stray image made the whole train split unlabelled
    assert "train" in s.splits and len(s.splits["train"].items) == 6
    assert s.splits["train"].unlabelled == [("train/stray.JPEG", "not inside a class folder or class tar: not read")]
