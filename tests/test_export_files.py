"""alexrepro export safetensors|onnx|check: real files of a trained net, a Caffe import and a torchvision import.

Each export is read back (safetensors by alexrepro.load, eval and predict; ONNX by onnxruntime) and gives the
checkpoint's top-5 on the same photographs; ONNX's logits are within 1e-4 of torch's. ONNX's LRN is checked
against §3.3's formula written out here, per tower and in both readings of α.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from net_files import ok_json, run_cli
from safetensors import safe_open
from safetensors.torch import save_file

import alexrepro
from alexrepro.cli import main
from alexrepro.errors import UserError
from alexrepro.export.onnx_file import OnnxLRN, export_onnx, onnx_bytes
from alexrepro.nets.alexnet import build_model
from alexrepro.recipe_reader import load_recipe
from alexrepro.training.checkpoint import Checkpoint, read_checkpoint, save_checkpoint

KINDS = ("trained", "caffe", "torchvision")
ATOL = 1e-4  # ONNX's logits against torch's


def one_error_line(args, capsys, code: int = 2) -> str:
    got, stdout, err = run_cli(args, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def exported(net_files, tmp_path_factory):
    """Each checkpoint exported by the CLI: .safetensors, .onnx, and .onnx with the mean in the graph."""
    root = tmp_path_factory.mktemp("exported")
    files = {}
    for kind in KINDS:
        ck = net_files.checkpoint(kind)
        for suffix, args in (("safetensors", ["safetensors"]), ("onnx", ["onnx"]), ("mean.onnx", ["onnx", "--mean-in-graph"])):
            out = root / f"{kind}.{suffix}"
            with pytest.raises(SystemExit) as e:
                main(["export", *args, str(ck), "--out", str(out), "--json"])
            assert e.value.code in (0, None)
            files[kind, suffix] = out
    return files


def predict_tops(ck: Path, photos: list[Path], crops: int, capsys) -> list[list[int]]:
    r = ok_json(["predict", "-c", ck, *photos, "--crops", crops, "--device", "cpu"], capsys)
    return [[t["index"] for t in item["top"]] for item in r["images"]]


def onnx_logits(path: Path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


# --------------------------------------------------------------------------------------------- safetensors
@pytest.mark.parametrize("kind", KINDS)
def test_safetensors_loads_and_predicts_as_its_checkpoint(net_files, exported, kind, capsys):
    ck, st = net_files.checkpoint(kind), exported[kind, "safetensors"]
    head = st.read_bytes()[:9]
    assert head[8:9] == b"{"  # safetensors: a length and a JSON header, then raw tensor bytes
    saved = read_checkpoint(ck)
    with safe_open(str(st), framework="pt") as f:
        meta = f.metadata()
        assert meta["format"] == "alexrepro-weights" and json.loads(meta["classes"]) == saved.classes
        assert json.loads(meta["recipe"]) == saved.recipe.to_dict()
        assert (json.loads(meta["origin"])["format"] if "origin" in meta else None) == (
            None if kind == "trained" else kind)
        for key, value in saved.model.items():
            assert torch.equal(f.get_tensor(key), value), key
        assert torch.equal(f.get_tensor("stats.mean").float(), torch.as_tensor(saved.stats["mean"]).float()) if (
            saved.stats) else "stats.mean" not in f.keys()
    photos = net_files.photos[:2]
    assert predict_tops(st, photos, 1, capsys) == predict_tops(ck, photos, 1, capsys)
    a, b = alexrepro.load(st, device="cpu"), alexrepro.load(ck, device="cpu")
    assert a.predict(photos, crops=1) == b.predict(photos, crops=1) and a.classes == b.classes


def test_eval_reads_a_weight_file_as_its_checkpoint(net_files, exported, capsys):
    args = ["eval", net_files.set, "--crops", "1", "--device", "cpu", "--loader", "torch", "--batch-size", "6"]
    for kind in ("trained", "caffe"):
        from_ck = ok_json([*args, "-c", net_files.checkpoint(kind)], capsys)
        from_st = ok_json([*args, "-c", exported[kind, "safetensors"]], capsys)
        for key in ("top1_error_pct", "top5_error_pct", "images", "classes"):
            assert from_st[key] == from_ck[key], key
        assert (from_st.get("published") is None) == (kind == "trained")  # the origin travels in the metadata


def test_wrong_weight_files_are_one_line_errors(net_files, exported, tmp_path, capsys):
    other = tmp_path / "resnet18.safetensors"  # a safetensors file of another net, no alexrepro metadata
    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18(weights=None).state_dict().items()}, str(other))
    assert "not an alexrepro weight file" in one_error_line(["predict", "-c", other, net_files.photos[0]], capsys)
    assert "not an alexrepro weight file" in one_error_line(["eval", net_files.set, "-c", other], capsys)
    good = exported["trained", "safetensors"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good[: len(good) // 2])
    assert "not a readable safetensors file" in one_error_line(["export", "onnx", cut, "--out", tmp_path / "x.onnx"],
                                                               capsys)
    damaged = tmp_path / "damaged.safetensors"
    flipped = bytearray(good)
    flipped[-5] ^= 0x10  # one bit of the last tensor's bytes
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match="damaged: its contents do not match the checksum"):
        alexrepro.load(damaged)
    torch.save({"state_dict": {}}, tmp_path / "theirs.pt")
    assert "not an alexrepro checkpoint" in one_error_line(
        ["export", "safetensors", tmp_path / "theirs.pt", "--out", tmp_path / "x.safetensors"], capsys)
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "x.onnx").exists()


# --------------------------------------------------------------------------------------------- ONNX
@pytest.mark.parametrize("kind", KINDS)
def test_onnx_gives_torchs_logits_and_predicts_top5(net_files, exported, kind, capsys):
    clf = alexrepro.load(net_files.checkpoint(kind), device="cpu")
    photos = net_files.photos[:2]
    views = torch.cat([clf.preprocess(p, crops=10) for p in photos])  # 20 inputs: the batch is dynamic
    with torch.no_grad():
        want = clf.net(views)
    got = onnx_logits(exported[kind, "onnx"], views)
    assert got.shape == want.shape and (got - want).abs().max() <= ATOL
    probs = torch.softmax(got, 1).view(len(photos), 10, -1).mean(1)  # §4.1: the ten patches' softmax averaged
    assert probs.topk(5).indices.tolist() == predict_tops(net_files.checkpoint(kind), photos, 10, capsys)
    # the mean inside the graph: the centre patches' pixels in, the same logits out
    from alexrepro.loaders.presets import EvalPreset

    stored = [alexrepro.export.classifier.stored_image(p) for p in photos]
    pixels = torch.from_numpy(EvalPreset.for_data(clf.recipe.data).cut_all(stored)).permute(0, 3, 1, 2).float()
    centre = onnx_logits(exported[kind, "mean.onnx"], pixels)
    with torch.no_grad():
        assert (centre - clf.net(clf.inputs(stored))).abs().max() <= ATOL
    assert torch.softmax(centre, 1).topk(5).indices.tolist() == predict_tops(net_files.checkpoint(kind), photos, 1, capsys)


def test_onnx_metadata_states_the_preprocessing(net_files, exported):
    model = onnx.load(str(exported["torchvision", "onnx"]))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    pre = meta["preprocess"]
    assert (pre["input"], pre["image_size"], pre["crop_size"], pre["crop_offset"], pre["mean"]) == (
        "image", 256, 224, 16, "channel-std")
    np.testing.assert_allclose(pre["channel_mean"], [0.485 * 255, 0.456 * 255, 0.406 * 255], rtol=1e-6)
    np.testing.assert_allclose(pre["scale"], [1 / (0.229 * 255), 1 / (0.224 * 255), 1 / (0.225 * 255)], rtol=1e-6)
    assert meta["alexrepro"]["origin"]["format"] == "torchvision" and len(meta["alexrepro"]["classes"]) == 6
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # a named, dynamic batch
    caffe = {p.key: json.loads(p.value) for p in onnx.load(str(exported["caffe", "mean.onnx"])).metadata_props}
    assert caffe["preprocess"]["input"] == "pixels" and caffe["preprocess"]["mean_in_graph"] is True
    assert caffe["preprocess"]["crop_size"] == 227 and caffe["alexrepro"]["recipe"]["model"]["lrn_across_towers"]


def lrn_formula(a: np.ndarray, n: int, alpha: float, beta: float, k: float, towers: int) -> np.ndarray:
    """§3.3: b_i = a_i / (k + α Σ_{j=max(0,i−n/2)}^{min(N−1,i+n/2)} a_j²)^β, j over the tower's own maps."""
    out = np.empty_like(a)
    per = a.shape[1] // towers
    for t in range(towers):
        for i in range(per):
            lo, hi = max(0, i - n // 2), min(per - 1, i + n // 2)
            s = (a[:, t * per + lo:t * per + hi + 1] ** 2).sum(1)
            out[:, t * per + i] = a[:, t * per + i] / (k + alpha * s) ** beta
    return out


@pytest.mark.parametrize("convention, towers", [("printed", 2), ("divided-by-n", 2), ("printed", 1),
                                                ("divided-by-n", 1)])
def test_onnx_lrn_is_the_papers_formula_per_tower(tmp_path, convention, towers):
    a = np.random.default_rng(0).normal(0, 40, (2, 12, 3, 3)).astype(np.float32)  # α·Σa² of order 1
    lrn = OnnxLRN(5, 1e-4, 0.75, 2.0, convention, towers)
    path = tmp_path / "lrn.onnx"
    path.write_bytes(onnx_bytes(lrn, torch.from_numpy(a)))
    nodes = [n for n in onnx.load(str(path)).graph.node if n.op_type == "LRN"]
    assert len(nodes) == towers
    got = onnx_logits(path, torch.from_numpy(a)).numpy()
    alpha = 1e-4 if convention == "printed" else 1e-4 / 5  # the factor of Σ a² in each reading of §3.3
    want = lrn_formula(a.astype(np.float64), 5, alpha, 0.75, 2.0, towers)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    other = lrn_formula(a.astype(np.float64), 5, 1e-4 / 5 if convention == "printed" else 1e-4, 0.75, 2.0, towers)
    assert np.abs(other - want).max() > 1e-2  # the two readings are far apart on these activations


@pytest.mark.parametrize("convention, across", [("printed", False), ("divided-by-n", False), ("divided-by-n", True)])
def test_onnx_paper_net_in_both_lrn_readings(tmp_path, convention, across):
    """§3's two-tower net (reduced width), LRN per tower or across them, with activations large enough that
    the reading of α changes the logits: ONNX stays within 1e-4 of torch."""
    recipe = load_recipe("tiny", ["model.num_classes=6", "data.image_size=72", "data.crop_size=64",
                                  "model.fc_width=32", f"model.lrn_alpha_convention={convention}",
                                  f"model.lrn_across_towers={str(across).lower()}"])
    torch.manual_seed(0)
    net = build_model(recipe.model, 64)
    with torch.no_grad():
        net.conv1.weight.mul_(8.0)  # conv1's outputs in the tens: §3.3's denominator far from k
    ck = tmp_path / "paper.pt"
    save_checkpoint(ck, Checkpoint(model=net.state_dict(), recipe=recipe,
                                   classes=[{"index": i, "name": f"c{i}"} for i in range(6)],
                                   stats={"mean": np.full((256, 256, 3), 120.0, np.float32)}))
    summary = export_onnx(ck, tmp_path / "paper.onnx")
    assert len(summary["lrn"]) == (2 if across else 4)  # LRN after conv1 and conv2, one per tower
    x = torch.from_numpy(np.random.default_rng(1).normal(0, 60, (3, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        want = net.eval()(x)
        other = build_model(recipe.model, 64)
        other.load_state_dict(net.state_dict())
        other.norm1.convention = other.norm2.convention = ("divided-by-n" if convention == "printed" else "printed")
        assert (other.eval()(x) - want).abs().max() > 100 * ATOL  # the convention matters for this net
    assert (onnx_logits(tmp_path / "paper.onnx", x) - want).abs().max() <= ATOL


def test_export_check_compares_files_with_their_checkpoint(net_files, exported, tmp_path, capsys):
    photos = net_files.photos[:2]
    for file in (exported["trained", "onnx"], exported["trained", "safetensors"], exported["trained", "mean.onnx"]):
        r = ok_json(["export", "check", file, "-c", net_files.trained, *photos], capsys)
        assert r["agree"] and r["max_abs_diff"] <= ATOL and all(i["same_top"] for i in r["images"])
        assert [i["image"] for i in r["images"]] == [str(p) for p in photos]
    r = ok_json(["export", "check", exported["trained", "onnx"], "-c", net_files.trained, photos[0], "--crops", "10"],
                capsys)
    assert r["crops"] == 10 and r["agree"]
    # an ONNX file of another net of the same shape disagrees with this checkpoint: exit 1, one line
    retrained = read_checkpoint(net_files.trained)
    retrained.model["fc8.bias"] = retrained.model["fc8.bias"] + torch.arange(6.0)
    save_checkpoint(tmp_path / "retrained.pt", retrained)
    assert "disagrees" in one_error_line(["export", "check", exported["trained", "onnx"], "-c",
                                          tmp_path / "retrained.pt", "--json"], capsys, code=1)
    assert "exported from another net" in one_error_line(
        ["export", "check", exported["caffe", "onnx"], "-c", net_files.torchvision], capsys)
    assert "takes centre patches only" in one_error_line(
        ["export", "check", exported["trained", "mean.onnx"], "-c", net_files.trained, "--crops", "10"], capsys)


def test_wrong_onnx_files_are_one_line_errors(net_files, exported, tmp_path, capsys):
    good = exported["trained", "onnx"].read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good[: len(good) * 2 // 3])
    assert "is not a readable ONNX model" in one_error_line(["export", "check", cut, "-c", net_files.trained], capsys)
    plain = tmp_path / "plain.onnx"
    model = onnx.load_from_string(good)
    del model.metadata_props[:]
    onnx.save(model, str(plain))
    assert "not one alexrepro exported" in one_error_line(["export", "check", plain, "-c", net_files.trained], capsys)
    bad_out = tmp_path / "folder.onnx"
    bad_out.mkdir()
    assert "is a folder" in one_error_line(["export", "onnx", net_files.trained, "--out", bad_out], capsys)


def test_onnx_export_keeps_no_file_that_onnxruntime_disagrees_with(net_files, tmp_path, monkeypatch, capsys):
    import alexrepro.export.check as check

    monkeypatch.setattr(check, "TOLERANCE", -1.0)  # no difference is small enough: as if the graph were wrong
    out = tmp_path / "net.onnx"
    line = one_error_line(["export", "onnx", net_files.trained, "--out", out], capsys, code=1)
    assert "onnxruntime's logits differ from torch's" in line and "the file was not written" in line
    assert not any(tmp_path.iterdir())
