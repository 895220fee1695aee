"""alexrepro import, end to end: published weights → a checkpoint that eval, predict and viz take.

Nothing is downloaded: a caffemodel and its mean are written by the test (caffe_writer.py, random weights
of bvlc_alexnet's conv shapes, fc6/fc7 narrowed to 64 and fc8 as wide as the set's classes), and
torchvision's alexnet is built by torchvision with random weights (its classifier narrowed the same way).
The set is "check your data" as the README gives it: the val split alone, prepared from a synth tree.
Each eval is checked image by image against a forward written out here (Caffe's) or torchvision's own.
"""

from __future__ import annotations

import hashlib
import json

import caffe_writer as cw
import numpy as np
import pytest
import torch
import torchvision
from cli_run import run_cli
from PIL import Image
from skimage import data as skdata
from test_import_caffe import caffe_forward

from alexrepro.cli import main
from alexrepro.data.prepared import open_split, read_manifest
from alexrepro.training.checkpoint import read_checkpoint, save_checkpoint

K = 6  # classes of the synth set (top-5 needs at least 5)
FC = 64  # fc6/fc7 width of the test weights (4096 in the published files)
# The published rows (Caffe model zoo's bvlc_alexnet readme; torchvision's AlexNet_Weights.IMAGENET1K_V1),
# accuracy in percent; eval prints error rates, 100 minus these.
CAFFE_TOP1, CAFFE_TOP5 = 57.1, 80.2
TV_TOP1, TV_TOP5 = 56.522, 79.066


def error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The val-only prepared set, the Caffe and torchvision weight files, and a photo.

    The random nets' fc8 is centred on the set's images and scaled (logits of a few units), so that each
    image gets its own ranking of the classes, and eval's probabilities can be compared with the reference's.
    """
    from alexrepro.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("import")
    make_synthetic(root / "src", classes=K, train_per_class=1, val_per_class=2, seed=3, min_size=80, max_size=300,
                   progress=False)
    with pytest.raises(SystemExit) as e:
        main(["prep", str(root / "src"), str(root / "out"), "--split", "val", "--workers", "1", "--json"])
    assert e.value.code in (0, None)
    files = {"root": root, "out": root / "out"}
    weights = cw.random_weights(FC, K, seed=4)
    w8, b8 = weights["fc8"]
    weights["fc8"] = spread(caffe_reference_logits(files, weights), torch.from_numpy(w8), torch.from_numpy(b8))
    weights["fc8"] = tuple(t.numpy() for t in weights["fc8"])
    files["caffe_weights"] = weights
    (root / "bvlc_alexnet.caffemodel").write_bytes(cw.alexnet_caffemodel(weights, v1=True, legacy=True))
    (root / "imagenet_mean.binaryproto").write_bytes(cw.blob(cw.bgr_mean()[None], legacy=True))
    torch.manual_seed(0)
    for name, classes in (("alexnet-k.pth", K), ("alexnet-1000.pth", 1000)):
        tv = narrowed_torchvision(classes)
        with torch.no_grad():
            fc8 = tv.classifier[6]
            fc8.weight[:], fc8.bias[:] = spread(tv(torchvision_input(files)), fc8.weight, fc8.bias)
        torch.save(tv.state_dict(), root / name)
    Image.fromarray(skdata.chelsea()).save(root / "cat.jpg", quality=90)
    return files


def spread(logits: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fc8's (weight, bias) with the mean logit over the images removed and the spread scaled to ~2 units."""
    centred = logits - logits.mean(0)
    scale = 2.0 / float(centred.std())
    return weight * scale, (bias - logits.mean(0)) * scale


def narrowed_torchvision(classes: int) -> torch.nn.Module:
    """torchvision's alexnet (its own module and forward) with fc6/fc7 FC wide, random weights."""
    tv = torchvision.models.alexnet(weights=None, num_classes=classes)
    tv.classifier[1], tv.classifier[4] = torch.nn.Linear(256 * 6 * 6, FC), torch.nn.Linear(FC, FC)
    tv.classifier[6] = torch.nn.Linear(FC, classes)
    return tv.eval()


def torchvision_input(files) -> torch.Tensor:
    """torchvision's normalisation of the stored images' centre 224 crops (offset (256 − 224) / 2 = 16)."""
    split = open_split(files["out"], "val")
    x = torch.stack([torch.from_numpy(split[i][0][16:240, 16:240].copy()).permute(2, 0, 1) for i in range(len(split))])
    return torchvision.transforms.functional.normalize(x.float() / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def eval_json(out, ck, crops, capsys, predictions=None) -> dict:
    args = ["eval", out, "-c", ck, "--crops", crops, "--device", "cpu", "--batch-size", "4", "--json"]
    code, stdout, err = run_cli(args + (["--predictions", predictions] if predictions else []), capsys)
    assert code == 0, err
    return json.loads(stdout)


def check_predictions(predictions, logits: torch.Tensor) -> None:
    """eval's per-image top-5 (classes and probabilities, from --predictions) are the reference logits' softmax."""
    lines = [json.loads(line) for line in predictions.read_text().splitlines()]
    probs = torch.softmax(logits.double(), dim=1)
    want_p, want_i = probs.topk(5, dim=1)
    assert len(lines) == len(logits) and len(set(want_i[:, 0].tolist())) > 1  # not one class for every image
    for line, p, i in zip(lines, want_p.tolist(), want_i.tolist(), strict=True):
        assert [t["index"] for t in line["top5"]] == i
        np.testing.assert_allclose([t["prob"] for t in line["top5"]], p, atol=2e-5)


# --------------------------------------------------------------------------------------------- Caffe
@pytest.fixture(scope="module")
def caffe_ck(files, tmp_path_factory):
    root = files["root"]
    ck = tmp_path_factory.mktemp("ck") / "bvlc.pt"
    with pytest.raises(SystemExit) as e:
        main(["import", "caffe", str(root / "bvlc_alexnet.caffemodel"), "--mean", str(root / "imagenet_mean.binaryproto"),
              "--data", str(files["out"]), "--out", str(ck), "--json"])
    assert e.value.code in (0, None)
    return ck


def test_caffe_import_writes_a_checkpoint_with_its_origin_recipe_classes_and_mean(files, caffe_ck):
    saved = read_checkpoint(caffe_ck)
    raw = (files["root"] / "bvlc_alexnet.caffemodel").read_bytes()
    o = saved.origin
    assert (o.format, o.file, o.sha256, o.net) == ("caffe", "bvlc_alexnet.caffemodel",
                                                   hashlib.sha256(raw).hexdigest(), "AlexNet")
    assert (o.published["top1_acc"], o.published["top5_acc"], o.published["resize"]) == (CAFFE_TOP1, CAFFE_TOP5, "warp")
    m, d = saved.recipe.model, saved.recipe.data
    assert (m.arch, m.conv1_padding, m.lrn_k, m.lrn_across_towers, m.num_classes) == ("alexnet", 0, 1.0, True, K)
    assert (d.image_size, d.crop_size, d.mean, d.lighting) == (256, 227, "image", False)
    assert saved.classes == read_manifest(files["out"]).class_list()
    # the binaryproto's BGR planes as stats.h5's RGB layout
    np.testing.assert_array_equal(saved.stats["mean"].numpy(), cw.bgr_mean()[::-1].transpose(1, 2, 0))


def caffe_reference_logits(files, weights) -> torch.Tensor:
    """Caffe's own test: BGR, minus its mean, the centre 227 crop at (256 − 227) // 2 = 14, its forward."""
    split = open_split(files["out"], "val")
    rgb = np.stack([split[i][0] for i in range(len(split))])
    x = rgb[..., ::-1].transpose(0, 3, 1, 2).astype(np.float32) - cw.bgr_mean()[None]
    with torch.no_grad():
        return caffe_forward(weights, torch.from_numpy(np.ascontiguousarray(x[:, :, 14:241, 14:241])))


def test_eval_scores_the_caffe_net_as_caffe_does_beside_its_published_row(files, caffe_ck, tmp_path, capsys):
    report = eval_json(files["out"], caffe_ck, 1, capsys, predictions=tmp_path / "p.jsonl")
    # every image scored as Caffe scores it: its top-5 classes and their probabilities
    check_predictions(tmp_path / "p.jsonl", caffe_reference_logits(files, files["caffe_weights"]))
    pub = report["published"]
    assert (pub["top1_error_pct"], pub["top5_error_pct"]) == (pytest.approx(100 - CAFFE_TOP1), pytest.approx(100 - CAFFE_TOP5))
    assert (pub["top1_acc_pct"], pub["top5_acc_pct"]) == (CAFFE_TOP1, CAFFE_TOP5)
    assert pub["same_protocol"] and pub["crops"] == 1
    assert pub["top1_diff_pct"] == pytest.approx(report["top1_error_pct"] - (100 - CAFFE_TOP1))
    assert pub["top5_diff_pct"] == pytest.approx(report["top5_error_pct"] - (100 - CAFFE_TOP5))
    # the set was prepared with §2's resize; Caffe's protocol warps: said, with the option that matches it
    assert pub["resize"] == {"published": "warp", "this_set": "shorter-side", "same": False}
    assert any("--resize warp" in note for note in pub["notes"])


def test_ten_crops_are_ours_only(files, caffe_ck, capsys):
    pub = eval_json(files["out"], caffe_ck, 10, capsys)["published"]
    assert not pub["same_protocol"] and pub["top1_diff_pct"] is None and pub["top5_diff_pct"] is None
    assert any("centre crop" in note for note in pub["notes"])
    code, _, err = run_cli(["eval", files["out"], "-c", caffe_ck, "--crops", "10", "--device", "cpu"], capsys)
    assert code == 0 and "bvlc_alexnet.caffemodel beside its published accuracy" in err and "Δ this run" not in err


def test_only_imported_checkpoints_have_a_published_row(files, caffe_ck, tmp_path, capsys):
    saved = read_checkpoint(caffe_ck)
    saved.origin = None  # the same net, as if trained here
    save_checkpoint(tmp_path / "trained.pt", saved)
    assert eval_json(files["out"], tmp_path / "trained.pt", 1, capsys)["published"] is None


def test_predict_and_viz_take_the_imported_checkpoint(files, caffe_ck, tmp_path, capsys):
    code, stdout, err = run_cli(["predict", "--checkpoint", caffe_ck, files["root"] / "cat.jpg", "--crops", "1",
                                 "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    names = {c["name"] for c in read_manifest(files["out"]).class_list()}
    top = json.loads(stdout)["images"][0]["top"]
    assert len(top) == 5 and all(t["name"] in names for t in top) and json.loads(stdout)["mean_from"] == "checkpoint"
    code, _, err = run_cli(["viz", "filters", caffe_ck, "--out", tmp_path / "f.png"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "f.png").size[0] > 0
    code, _, err = run_cli(["viz", "predictions", caffe_ck, files["out"], "--out", tmp_path / "p.png", "--n", "2",
                            "--device", "cpu"], capsys)
    assert code == 0, err


# --------------------------------------------------------------------------------------------- torchvision
def test_torchvision_import_evals_as_torchvisions_forward_beside_its_row(files, tmp_path, capsys):
    root, ck = files["root"], tmp_path / "tv.pt"
    code, stdout, err = run_cli(["import", "torchvision", root / "alexnet-k.pth", "--data", files["out"],
                                 "--out", ck, "--json"], capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["arch"] == "torchvision-alexnet" and summary["input"]["mean"] == "channel-std"
    report = eval_json(files["out"], ck, 1, capsys, predictions=tmp_path / "p.jsonl")
    # torchvision's own forward on its own normalisation of the same stored images (centre 224 of 256)
    tv = narrowed_torchvision(K)
    tv.load_state_dict(torch.load(root / "alexnet-k.pth", weights_only=True))
    with torch.no_grad():
        check_predictions(tmp_path / "p.jsonl", tv(torchvision_input(files)))
    pub = report["published"]
    assert (pub["top1_error_pct"], pub["top5_error_pct"]) == (pytest.approx(100 - TV_TOP1), pytest.approx(100 - TV_TOP5))
    assert pub["resize"]["same"] and pub["notes"] == []  # torchvision's protocol is §2's shorter side


def test_predict_with_1000_imported_classes_prints_imagenet_names(files, tmp_path, capsys):
    from torchvision.models import AlexNet_Weights

    ck = tmp_path / "tv1000.pt"
    code, _, err = run_cli(["import", "torchvision", files["root"] / "alexnet-1000.pth", "--out", ck], capsys)
    assert code == 0 and "1000 classes from torchvision's ImageNet categories" in err
    code, stdout, err = run_cli(["predict", "--checkpoint", ck, files["root"] / "cat.jpg", "--device", "cpu",
                                 "--crops", "1", "--json"], capsys)
    assert code == 0, err
    categories = AlexNet_Weights.IMAGENET1K_V1.meta["categories"]
    for t in json.loads(stdout)["images"][0]["top"]:
        assert t["name"] == categories[t["index"]]  # ImageNet's names, by index
    code, _, err = run_cli(["predict", "--checkpoint", ck, files["root"] / "cat.jpg", "--device", "cpu"], capsys)
    assert code == 0 and any(name in err for name in categories)


# --------------------------------------------------------------------------------------------- wrong input
def test_wrong_files_and_options_are_one_line_errors(files, caffe_ck, tmp_path, capsys):
    root = files["root"]
    junk = tmp_path / "junk.caffemodel"
    junk.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" * 4)
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes((root / "bvlc_alexnet.caffemodel").read_bytes()[:100_000])
    out = ["--out", tmp_path / "x.pt"]
    cases = [
        (["import", "caffe", junk] + out, "not a readable caffemodel"),
        (["import", "caffe", cut] + out, "truncated"),
        (["import", "caffe", root / "alexnet-k.pth"] + out, "not a readable caffemodel"),  # a torch zip file
        (["import", "torchvision", root / "bvlc_alexnet.caffemodel"] + out, "not a PyTorch weights file"),
        (["import", "torchvision", caffe_ck] + out, "not a state dict of tensors"),  # our own checkpoint
        (["import", "caffe", tmp_path / "missing.caffemodel"] + out, "does not exist"),
        (["import", "caffe", root / "bvlc_alexnet.caffemodel"] + out, "not ImageNet's 1000; give --data OUT"),
        (["import", "caffe", root / "bvlc_alexnet.caffemodel", "--mean", junk, "--data", files["out"]] + out,
         "not a readable .binaryproto"),
        (["import", "torchvision", root / "alexnet-1000.pth", "--data", files["out"]] + out,
         f"classifies 1000 classes but {files['out']} has {K}"),
        (["import", "torchvision", root / "alexnet-k.pth", "--data", tmp_path] + out, "not a prepared set"),
        (["import", "torchvision", root / "alexnet-k.pth", "--data", files["out"], "--out", tmp_path],
         "is a folder"),
        (["import", "caffe", root / "bvlc_alexnet.caffemodel", "--data", files["out"]] + out,
         "give --mean imagenet_mean.binaryproto"),  # a val-only set has no mean image
    ]
    for args, expected in cases:
        code, stdout, err = run_cli(args, capsys)
        assert code == 2 and stdout == "", args
        assert expected in error_line(err), (args, err)
    assert not (tmp_path / "x.pt").exists()  # nothing half-written
