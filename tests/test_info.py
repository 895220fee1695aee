"""Info: what a prepared set holds; --verify passes an intact set and fails (exit 1) a corrupted one."""

import json
import re
import shutil
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_run import run_cli
from format_v1 import downgrade_set, downgrade_shard

import alexrepro.data.prep as prep_mod
from alexrepro.data.info import describe, verify
from alexrepro.data.manifest import read_manifest
from alexrepro.data.options import PrepOptions
from alexrepro.data.prep import prep
from alexrepro.data.shards import decode_jpeg
from alexrepro.data.split import open_split
from alexrepro.errors import WorkFailed


@pytest.fixture(scope="module")
def prepared(synth_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("info") / "out"
    prep(synth_src, out, PrepOptions(workers=1, shard_size=8), progress=False)
    return out


@pytest.fixture
def copy(prepared, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(prepared, out)
    return out


def first_shard(out, split="train"):
    return out / read_manifest(out).splits[split].shards[0].file


def test_describe(prepared, synth_summary):
    info = describe(prepared)
    counts = synth_summary["counts"]
    assert info["splits"]["train"]["count"] == counts["train_readable"]
    assert info["splits"]["val"]["count"] == counts["val_files"]
    assert info["skipped"]["count"] == counts["skipped"] and len(info["skipped"]["first"]) == counts["skipped"]
    assert info["classes"]["count"] == synth_summary["classes"] and info["encoding"] == "jpeg"
    assert info["bytes"] > 0 and info["pca"] is None and len(info["mean"]["channel_mean"]) == 3


def test_cli_info_json_and_verify_ok(prepared, capsys):
    code, text, _ = run_cli(["info", str(prepared), "--verify", "--json"], capsys)
    assert code == 0
    data = json.loads(text)
    assert data["verify"]["verified"] and data["verify"]["images"]["train"] == data["splits"]["train"]["count"]
    assert run_cli(["info", str(prepared)], capsys)[0] == 0
    assert run_cli(["info", str(prepared.parent / "nothing")], capsys)[0] == 2


def test_flipped_image_bytes_fail(copy, capsys):
    with h5py.File(first_shard(copy), "r+") as f:
        off = f["offsets"][:]
        f["data"][off[1] : off[1] + 4] = ~f["data"][off[1] : off[1] + 4]  # image 1's JPEG header
    assert run_cli(["info", str(copy), "--verify"], capsys)[0] == 1
    with pytest.raises(WorkFailed, match=r"image 1 \(train/\S+\.JPEG\) does not decode \(not an image\)"):
        verify(copy, progress=False)


def test_label_out_of_range_fails(copy):
    with h5py.File(first_shard(copy, "val"), "r+") as f:
        f["labels"][0] = len(read_manifest(copy).classes)
    with pytest.raises(WorkFailed, match="labels outside"):
        verify(copy, progress=False)


def test_wrong_label_in_range_fails(copy):
    with h5py.File(first_shard(copy), "r+") as f:
        labels = f["labels"][:]
        f["labels"][0] = (labels[0] + 1) % len(read_manifest(copy).classes)
    with pytest.raises(WorkFailed, match="its class folder"):
        verify(copy, progress=False)


def test_broken_offsets_and_counts_fail(copy):
    with h5py.File(first_shard(copy), "r+") as f:
        off = f["offsets"][:]
        off[2] = off[1] - 1
        f["offsets"][:] = off
    manifest = read_manifest(copy).to_payload()
    manifest["splits"]["val"]["shards"][0]["count"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WorkFailed) as e:
        verify(copy, progress=False)
    assert "offsets" in str(e.value) and "manifest says" in str(e.value)


def test_missing_shard_fails(copy):
    first_shard(copy, "val").unlink()
    with pytest.raises(WorkFailed, match="missing"):
        verify(copy, progress=False)


def test_raw_set_verifies(synth_src, tmp_path):
    out = tmp_path / "raw"
    prep(synth_src, out, PrepOptions(workers=1, encoding="raw", splits=["val"]), progress=False)
    assert verify(out, progress=False)["images"]["val"] > 0
    with h5py.File(first_shard(out, "val"), "r+") as f:
        f["labels"][0] = -1
    with pytest.raises(WorkFailed):
        verify(out, progress=False)
    assert np.isfinite(describe(out)["bytes"])


def entropy_coded_byte(jpeg: bytes) -> int:
    """Index of a byte in the middle of a baseline JPEG's entropy-coded data (after SOS, before EOI)."""
    sos = jpeg.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(jpeg[sos + 2 : sos + 4], "big")  # the scan header's length
    i = (start + jpeg.rindex(b"\xff\xd9")) // 2
    while 0xFF in (jpeg[i - 1], jpeg[i], jpeg[i] ^ FLIP):  # stay clear of markers and stuffed bytes
        i += 1
    return i


FLIP = 0x10  # one bit of the byte


def test_a_flipped_byte_inside_a_jpegs_scan_is_a_checksum_mismatch(copy, capsys):
    path = first_shard(copy)
    with h5py.File(path, "r+") as f:
        off = f["offsets"][:]
        before = f["data"][off[2] : off[3]].tobytes()
        at = int(off[2]) + entropy_coded_byte(before)
        f["data"][at] ^= FLIP
        after = f["data"][off[2] : off[3]].tobytes()
        key = f["keys"][2].decode()
    # PIL still decodes it, to a different picture: only the checksum can tell
    damaged = decode_jpeg(np.frombuffer(after, np.uint8))
    assert damaged.shape == (256, 256, 3) and not np.array_equal(damaged, decode_jpeg(np.frombuffer(before, np.uint8)))
    with pytest.raises(WorkFailed) as e:
        verify(copy, progress=False)
    want = (f"{path.as_posix()}: image 2 ({key}) checksum mismatch (stored crc32 {zlib.crc32(before):08x}, "
            f"its bytes give {zlib.crc32(after):08x})")
    assert f"(1 problems): {want}" in str(e.value) and str(e.value).endswith(want)
    code, text, _ = run_cli(["info", str(copy), "--verify", "--json"], capsys)
    report = json.loads(text)["verify"]  # --json still prints the one object, every problem in it
    assert code == 1 and report["verified"] is False and report["problems"] == [want]


def test_a_flipped_byte_in_a_raw_image_is_a_checksum_mismatch(synth_src, tmp_path):
    out = tmp_path / "raw"
    prep(synth_src, out, PrepOptions(workers=1, encoding="raw", splits=["val"], shard_size=8), progress=False)
    intact = verify(out, progress=False)
    assert intact["checksummed"] == intact["images"] and intact["notes"] == []
    path = out / read_manifest(out).splits["val"].shards[1].file
    with h5py.File(path, "r+") as f:
        f["images"][2, 128, 128, 1] ^= 1
        key = f["keys"][2].decode()
    with pytest.raises(WorkFailed, match=rf"\(1 problems\): {re.escape(path.as_posix())}: image 2 \({re.escape(key)}\) "
                                         "checksum mismatch"):
        verify(out, progress=False)


def test_a_version_1_set_verifies_with_one_note(copy, capsys):
    shards = downgrade_set(copy)
    code, text, _ = run_cli(["info", str(copy), "--verify", "--json"], capsys)
    report = json.loads(text)["verify"]
    assert json.loads(text)["format_version"] == 1
    assert code == 0 and report["verified"] and report["checksummed"] == {"train": 0, "val": 0}
    assert len(report["notes"]) == 1
    assert report["notes"][0].startswith(f"{len(shards)} of {len(shards)} shards were written by format version 1")
    assert "new OUT" in report["notes"][0]
    verify(copy, progress=False)
    assert " ".join(capsys.readouterr().err.split()).count("no per-image checksums") == 1  # once a run


def test_cli_verify_json_counts_the_checksummed_images(prepared, capsys):
    code, text, _ = run_cli(["info", str(prepared), "--verify", "--json"], capsys)
    data = json.loads(text)
    assert code == 0 and data["verify"]["notes"] == [] and data["format_version"] == 2
    assert data["verify"]["checksummed"] == {name: s["count"] for name, s in data["splits"].items()}


def test_prep_resumes_a_version_1_partial_set(prepared, synth_src, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real, written = prep_mod.write_shard, []

    def dies_after_two(path, *a, **k):
        if len(written) == 2:
            raise KeyboardInterrupt  # killed while building the third shard
        written.append(Path(path))
        return real(path, *a, **k)

    monkeypatch.setattr(prep_mod, "write_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        prep(synth_src, out, PrepOptions(workers=1, shard_size=8), progress=False)
    monkeypatch.setattr(prep_mod, "write_shard", real)
    for path in written:
        downgrade_shard(path)  # as if a version 1 prep had written them before it was killed
    summary = prep(synth_src, out, PrepOptions(workers=1, shard_size=8), progress=False)
    assert summary["splits"]["train"]["resumed_shards"] == 2 and read_manifest(out).format_version == 2
    report = verify(out, progress=False)
    train_shards = read_manifest(out).splits["train"].shards
    v1_images = sum(e.count for e in train_shards if out / e.file in written)
    assert report["checksummed"]["train"] == report["images"]["train"] - v1_images > 0
    assert report["notes"][0].startswith(f"2 of {len(train_shards) + len(read_manifest(out).splits['val'].shards)}")
    for split in ("train", "val"):  # the mixed set reads the same as one prepared in one go
        ds, ref = open_split(out, split), open_split(prepared, split)
        assert len(ds) == len(ref) and all(np.array_equal(ds[i][0], ref[i][0]) for i in range(len(ds)))
