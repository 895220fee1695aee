"""alexrepro.load: what `alexrepro predict` gives, image for image; its inputs, features, the hub entry, README.

The nets are real files (tests/net_files.py): a checkpoint trained by `alexrepro train`, a Caffe import and a
torchvision import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from net_files import run_cli
from PIL import Image
from skimage import data as skdata

import alexrepro
from alexrepro.errors import UserError

KINDS = ("trained", "caffe", "torchvision")
REPO = Path(__file__).resolve().parents[1]


def predict_cli(ck: Path, photos: list[Path], crops: int, capsys) -> list[list[dict]]:
    code, stdout, err = run_cli(["predict", "-c", ck, *photos, "--crops", crops, "--device", "cpu", "--json"], capsys)
    assert code == 0, err
    return [item["top"] for item in json.loads(stdout)["images"]]


def rounded(tops: list[list[dict]]) -> list[list[dict]]:
    """load's answers as predict prints them (probabilities to 6 digits)."""
    return [[{**t, "prob": round(t["prob"], 6)} for t in top] for top in tops]


@pytest.fixture(scope="module")
def nets(net_files):
    return {kind: alexrepro.load(net_files.checkpoint(kind), device="cpu") for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_load_gives_predicts_top5_image_for_image(net_files, nets, kind, capsys):
    clf = nets[kind]
    assert isinstance(clf.net, torch.nn.Module) and not clf.net.training
    for crops in (10, 1):
        # the imports are full-width conv nets: their ten patches on one photo, centre patches on all three
        photos = net_files.photos if crops == 1 or kind == "trained" else net_files.photos[:1]
        want = predict_cli(net_files.checkpoint(kind), photos, crops, capsys)
        got = clf.predict(photos, topk=5, crops=crops)
        assert rounded(got) == want
        assert len({tuple(t["prob"] for t in top) for top in got}) == len(got)  # each image its own answer
    names = {c["index"]: c["name"] for c in clf.classes}
    assert len(clf.classes) == 6 and all(t["name"] == names[t["index"]] for t in got[0])
    assert clf.predict(net_files.photos[0]) == clf.predict([net_files.photos[0]])  # one image or a list


def test_preprocess_takes_paths_pil_images_and_arrays_alike(nets, tmp_path):
    clf = nets["trained"]
    photo = skdata.chelsea()  # 451×300: the §2 resize and centre crop both matter
    Image.fromarray(photo).save(tmp_path / "cat.png")
    from_file = clf.preprocess(tmp_path / "cat.png", crops=10)
    assert from_file.shape == (10, 3, 64, 64)
    torch.testing.assert_close(clf.preprocess(Image.fromarray(photo), crops=10), from_file, rtol=0, atol=0)
    torch.testing.assert_close(clf.preprocess(photo), from_file[4], rtol=0, atol=0)  # view 4: the centre patch
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    torch.testing.assert_close(clf.preprocess(grey), clf.preprocess(tmp_path / "grey.png"), rtol=0, atol=0)
    with pytest.raises(UserError, match="uint8"):
        clf.preprocess(photo.astype(np.float32))
    with pytest.raises(UserError, match="does not exist"):
        clf.preprocess(tmp_path / "missing.jpg")


def test_torchvision_import_preprocesses_as_torchvisions_own_transforms(nets):
    """The astronaut is square (512²): prep's §2 resize is torchvision's Resize(256), so the input is exact."""
    photo = Image.fromarray(skdata.astronaut())
    want = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                      T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(photo)
    torch.testing.assert_close(nets["torchvision"].preprocess(photo), want, rtol=0, atol=1e-5)


def test_features_are_each_layers_activation_after_its_relu(nets, net_files):
    clf = nets["trained"]
    photos = net_files.photos
    x = torch.stack([clf.preprocess(p) for p in photos])
    net = clf.net
    with torch.no_grad():
        fc7 = clf.features(photos, layer="fc7")
        assert fc7.shape == (3, 32) and (fc7 >= 0).all()
        torch.testing.assert_close(fc7, net.forward_features(x), rtol=0, atol=0)
        conv1 = F.relu(F.conv2d(x, net.conv1.weight, net.conv1.bias, stride=4, padding=2))  # before LRN and pool
        torch.testing.assert_close(clf.features(photos, layer="conv1"), conv1.flatten(1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(clf.features(photos, layer="fc8"), net(x), rtol=1e-5, atol=1e-5)  # the logits
    tv = nets["torchvision"]
    assert tv.features(photos[0]).shape == (1, 64)
    with pytest.raises(UserError, match=r"unknown layer 'pool9'; use one of conv1, .*fc8$"):
        clf.features(photos, layer="pool9")


def test_hub_entry_returns_the_classifier(net_files, nets):
    hub = torch.hub.load(str(REPO), "alexnet", source="local", checkpoint=str(net_files.trained), device="cpu")
    assert isinstance(hub, torch.nn.Module) and not hub.net.training
    clf = nets["trained"]
    assert hub.predict(net_files.photos) == clf.predict(net_files.photos)
    x = hub.preprocess(net_files.photos[0])[None]
    with torch.no_grad():
        torch.testing.assert_close(hub(x), clf.net(x), rtol=0, atol=0)  # calling it gives the logits


def test_readme_example_runs(net_files, capsys):
    """The README's five lines, with its file names pointed at the test's files."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Use a trained net", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)[1]
    assert len(code.strip().splitlines()) == 5
    for name, path in (("runs/paper/checkpoints/best.pt", net_files.trained), ("photo.jpg", net_files.photos[0]),
                       ("a.jpg", net_files.photos[1]), ("b.jpg", net_files.photos[2])):
        assert name in code
        code = code.replace(name, str(path))
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)  # noqa: S102 - the documented example itself
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and all(re.fullmatch(r"0\.\d{3} pattern \d, stripes", line) for line in printed)
    assert tuple(env["fc7"].shape) == (2, 32)


def test_files_that_are_not_nets_are_one_line_errors(net_files, tmp_path, capsys):
    foreign = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, foreign)
    with pytest.raises(UserError, match="not an alexrepro checkpoint"):
        alexrepro.load(foreign)
    onnx_name = tmp_path / "net.onnx"
    onnx_name.write_bytes(b"\x08\x07")
    with pytest.raises(UserError, match="ONNX model: it runs in onnxruntime"):
        alexrepro.load(onnx_name)
    for args in (["predict", "-c", foreign, net_files.photos[0]], ["features", net_files.set, "-c", foreign,
                                                                    "--out", tmp_path / "f.h5"]):
        code, _, err = run_cli(args, capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and "not an alexrepro checkpoint" in lines[0], err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_on_cuda_predicts_as_on_the_cpu(net_files, nets):
    gpu = alexrepro.load(net_files.caffe, device="cuda")
    assert gpu.device.type == "cuda" and gpu.preprocess(net_files.photos[0]).device.type == "cuda"
    cpu = nets["caffe"].predict(net_files.photos, crops=1)
    got = gpu.predict(net_files.photos, crops=1)
    assert [[t["index"] for t in top] for top in got] == [[t["index"] for t in top] for top in cpu]
    for a, b in zip(got, cpu, strict=True):
        np.testing.assert_allclose([t["prob"] for t in a], [t["prob"] for t in b], atol=1e-4)
    torch.testing.assert_close(gpu.features(net_files.photos).cpu(), nets["caffe"].features(net_files.photos),
                               rtol=1e-3, atol=1e-3)
