"""Info: what a prepared set holds; --verify passes an intact set and fails (exit 1) a corrupted one."""

import json
import shutil

import h5py
import numpy as np
import pytest

from alexrepro.cli import main
from alexrepro.errors import WorkFailed
from alexrepro.info import describe, verify
from alexrepro.prep import PrepOptions, prep
from alexrepro.prepared import read_manifest


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    return e.value.code, capsys.readouterr().out


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
    return out / read_manifest(out)["splits"][split]["shards"][0]["file"]


def test_describe(prepared, synth_summary):
    info = describe(prepared)
    counts = synth_summary["counts"]
    assert info["splits"]["train"]["count"] == counts["train_readable"]
    assert info["splits"]["val"]["count"] == counts["val_files"]
    assert info["skipped"]["count"] == counts["skipped"] and len(info["skipped"]["first"]) == counts["skipped"]
    assert info["classes"]["count"] == synth_summary["classes"] and info["encoding"] == "jpeg"
    assert info["bytes"] > 0 and info["pca"] is None and len(info["mean"]["channel_mean"]) == 3


def test_cli_info_json_and_verify_ok(prepared, capsys):
    code, text = run_cli(["info", str(prepared), "--verify", "--json"], capsys)
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
    with pytest.raises(WorkFailed, match="image 1 does not decode"):
        verify(copy, progress=False)


def test_label_out_of_range_fails(copy):
    with h5py.File(first_shard(copy, "val"), "r+") as f:
        f["labels"][0] = len(read_manifest(copy)["classes"])
    with pytest.raises(WorkFailed, match="labels outside"):
        verify(copy, progress=False)


def test_wrong_label_in_range_fails(copy):
    with h5py.File(first_shard(copy), "r+") as f:
        labels = f["labels"][:]
        f["labels"][0] = (labels[0] + 1) % len(read_manifest(copy)["classes"])
    with pytest.raises(WorkFailed, match="its class folder"):
        verify(copy, progress=False)


def test_broken_offsets_and_counts_fail(copy):
    with h5py.File(first_shard(copy), "r+") as f:
        off = f["offsets"][:]
        off[2] = off[1] - 1
        f["offsets"][:] = off
    manifest = read_manifest(copy)
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
