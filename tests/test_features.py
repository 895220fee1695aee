"""alexrepro features: every image's vector and label in one HDF5 file, which viz neighbors searches."""

from __future__ import annotations

import json

import h5py
import numpy as np
import torch
from net_files import ok_json, run_cli

import alexrepro
from alexrepro.data.prepared import open_split
from alexrepro.training.checkpoint import read_checkpoint, save_checkpoint


def one_error_line(args, capsys) -> str:
    code, _, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def features(net_files, ck, out, *extra, capsys, split="val", layer="fc7") -> dict:
    return ok_json(["features", net_files.set, "-c", ck, "--layer", layer, "--split", split, "--out", out,
                    "--device", "cpu", "--loader", "torch", "--batch-size", "5", *extra], capsys)


def test_every_images_vector_and_label(net_files, tmp_path, capsys):
    out = tmp_path / "fc7-val.h5"
    r = features(net_files, net_files.trained, out, capsys=capsys)
    split = open_split(net_files.set, "val")
    n = len(split)
    assert (r["images"], r["dim"], r["layer"], r["split"], r["out"]) == (n, 32, "fc7", "val", str(out))
    clf = alexrepro.load(net_files.trained, device="cpu")
    want = clf.stored_features([split[i][0] for i in range(n)], "fc7").numpy()  # one batch of all; the file: 5s
    with h5py.File(out, "r") as f:
        assert f["features"].dtype == np.float32 and f["features"].shape == (n, 32)
        np.testing.assert_allclose(f["features"][:], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(f["labels"][:], split.labels)
        np.testing.assert_array_equal(f["indices"][:], np.arange(n))
        assert [k.decode() for k in f["keys"][:]] == split.keys()
        attrs = dict(f.attrs)
    assert (attrs["format"], attrs["layer"], attrs["split"], attrs["crops"]) == ("alexrepro-features", "fc7", "val",
                                                                                "center")
    assert json.loads(attrs["classes"]) == split.classes
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # written under a temporary name, then renamed


def test_other_layers_and_a_weight_file_give_the_same_vectors(net_files, tmp_path, capsys):
    st = tmp_path / "net.safetensors"
    ok_json(["export", "safetensors", net_files.trained, "--out", st], capsys)
    a = features(net_files, net_files.trained, tmp_path / "a.h5", capsys=capsys, layer="conv5")
    b = features(net_files, st, tmp_path / "b.h5", capsys=capsys, layer="conv5")
    clf = alexrepro.load(net_files.trained, device="cpu")
    assert a["dim"] == b["dim"] == clf.features(net_files.photos[0], layer="conv5").shape[1]
    with h5py.File(tmp_path / "a.h5", "r") as fa, h5py.File(tmp_path / "b.h5", "r") as fb:
        np.testing.assert_array_equal(fa["features"][:], fb["features"][:])
        assert fa.attrs["net"] == fb.attrs["net"]  # the same net, whichever file it came from


def test_unknown_layer_is_one_line_and_writes_nothing(net_files, tmp_path, capsys):
    line = one_error_line(["features", net_files.set, "-c", net_files.trained, "--layer", "fc9", "--out",
                           tmp_path / "f.h5", "--device", "cpu"], capsys)
    assert "unknown layer 'fc9'; use one of conv1, conv2, conv3, conv4, conv5, fc6, fc7, fc8" in line
    assert not any(tmp_path.iterdir())


def test_viz_neighbors_searches_a_feature_file(net_files, tmp_path, capsys):
    feats = tmp_path / "fc7-train.h5"
    features(net_files, net_files.trained, feats, capsys=capsys, split="train")
    args = ["viz", "neighbors", net_files.trained, net_files.set, "--index", feats, "--split", "train",
            "--queries", "3", "--k", "2", "--device", "cpu", "--out", tmp_path / "nn.png"]
    r = ok_json(args, capsys)
    assert r["index"] == str(feats) and r["index_split"] == "train" and r["layer"] == "fc7"
    for q in r["queries"]:  # a training image is its own nearest neighbour, at distance 0
        assert q["neighbors"][0]["index"] == q["index"] and q["neighbors"][0]["distance"] < 1e-3
    changed = read_checkpoint(net_files.trained)  # the same net with other fc6 weights
    changed.model["fc6.weight"] = changed.model["fc6.weight"] * 1.5
    save_checkpoint(tmp_path / "changed.pt", changed)
    other = tmp_path / "changed.h5"
    features(net_files, tmp_path / "changed.pt", other, capsys=capsys, split="train")
    assert "holds the vectors of another net" in one_error_line([*args[:5], other, *args[6:]], capsys)
    with h5py.File(tmp_path / "not-features.h5", "w") as f:
        f["x"] = np.zeros(3)
    assert "not a feature file" in one_error_line([*args[:5], tmp_path / "not-features.h5", *args[6:]], capsys)
    assert "holds the train split, not val" in one_error_line([*args, "--index-split", "val"], capsys)


def test_features_of_images_in_python_match_the_file(net_files, tmp_path, capsys):
    """load(...).features of the stored images and the command's rows are the same vectors (fc8: the logits)."""
    out = tmp_path / "fc8.h5"
    features(net_files, net_files.trained, out, capsys=capsys, layer="fc8")
    split = open_split(net_files.set, "val")
    clf = alexrepro.load(net_files.trained, device="cpu")
    with torch.no_grad():
        logits = clf(clf.inputs([split[0][0], split[1][0]]))
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["features"][:2], logits.numpy(), rtol=1e-5, atol=1e-6)
