"""torchvision's alexnet import: its own forward reproduced, its preprocessing matched on a real photo, wrong files.

The weights are a randomly initialised torchvision.models.alexnet() saved here; nothing is downloaded.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
import torchvision.transforms as T
from PIL import Image

from alexrepro.data.imaging import prepare_image
from alexrepro.errors import UserError
from alexrepro.imports.torchvision import import_torchvision, torchvision_data_config
from alexrepro.loaders.augment import center_offset, channel_std_mean_and_scale, mean_image_for
from alexrepro.loaders.colour import MeanImage, make_colour, saved_mean
from alexrepro.loaders.presets import EvalPreset
from alexrepro.nets import build_net
from alexrepro.nets.torchvision_alexnet import build_torchvision_alexnet
from alexrepro.recipe import DataConfig, ModelConfig

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # torchvision's ImageNet normalisation
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """(path, model) of a random torchvision alexnet, its state dict saved as torchvision caches it."""
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    path = tmp_path_factory.mktemp("tv") / "alexnet-random.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_imported_net_gives_torchvisions_logits(tv_file):
    path, tv = tv_file
    imported = import_torchvision(path)
    assert imported.model.arch == "torchvision-alexnet" and imported.model.num_classes == 1000
    d = imported.data
    assert (d.image_size, d.crop_size, d.mean, d.mean_rgb, d.std_rgb) == (256, 224, "channel-std", MEAN, STD)
    ours = imported.build()
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x), rtol=1e-5, atol=1e-5)
        # forward_features is fc7 after its ReLU: torchvision's classifier up to (and with) its second ReLU
        fc7 = tv.classifier[:6](torch.flatten(tv.avgpool(tv.features(x)), 1))
        torch.testing.assert_close(ours.forward_features(x), fc7, rtol=1e-5, atol=1e-5)


def test_legacy_serialisation_as_torchvisions_own_file(tv_file, tmp_path):
    """torchvision's alexnet-owt-7be5be79.pth predates torch.save's zip format: the legacy pickle reads too."""
    path, _ = tv_file
    legacy = tmp_path / "legacy.pth"
    torch.save(torch.load(path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    assert legacy.read_bytes()[:1] == b"\x80"
    a, b = import_torchvision(path).state_dict, import_torchvision(legacy).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_dropout_sits_where_torchvisions_does(tv_file):
    """In training mode, the same seed drops the same units: dropout on fc6's and fc7's inputs, as torchvision."""
    path, tv = tv_file
    ours = import_torchvision(path).build().train()
    tv.train()
    x = torch.randn(2, 3, 224, 224)
    try:
        torch.manual_seed(5)
        want = tv(x)
        torch.manual_seed(5)
        got = ours(x)
    finally:
        tv.eval()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_architecture_is_the_one_weird_trick_net():
    net = build_net(ModelConfig(arch="torchvision-alexnet"), 224)
    convs = [getattr(net, f"conv{i}") for i in range(1, 6)]
    assert [c.out_channels for c in convs] == [64, 192, 384, 256, 256]
    assert all(c.groups == 1 for c in convs)
    assert sum(p.numel() for p in net.parameters()) == 61_100_840  # torchvision's documented num_params
    # the adaptive pool: any crop from 63 up gives fc6 its 256·6·6 inputs
    assert build_torchvision_alexnet(ModelConfig(arch="torchvision-alexnet"), 96)(torch.zeros(1, 3, 96, 96)).shape == (1, 1000)
    with pytest.raises(UserError, match="too small"):
        build_torchvision_alexnet(ModelConfig(), 62)


# -------------------------------------------------------------------------------------------- preprocessing
def test_channel_std_normalisation_is_torchvisions_formula():
    x = torch.randint(0, 256, (2, 5, 4, 3), dtype=torch.uint8)
    want = torchvision_normalize(x)
    m, s = channel_std_mean_and_scale(MEAN, STD)  # the loaders' form: subtract on 0–255, then scale
    torch.testing.assert_close((x.float() - torch.from_numpy(m)) * torch.from_numpy(s), want, rtol=1e-5, atol=1e-5)


def test_the_preset_applies_channel_std_as_torchvision_normalizes():
    """The loaders' float step (finish_batch through the preset's colour) with mean = "channel-std": the
    centre crop, then (x / 255 − mean) / std, whatever the set's mean image (it is not used)."""
    data = DataConfig(mean="channel-std", image_size=256, crop_size=224)
    images = [np.random.default_rng(k).integers(0, 256, (256, 256, 3), dtype=np.uint8) for k in range(2)]
    set_mean = MeanImage(np.full((256, 256, 3), 99.0, np.float32), np.full(3, 99.0), "stats.h5")
    got = EvalPreset.for_data(data)(images, make_colour(set_mean, data, CPU), CPU)
    o = center_offset(256, 224)
    want = torch.stack([torchvision_normalize(torch.from_numpy(im[o:o + 224, o:o + 224])).permute(2, 0, 1)
                        for im in images])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert mean_image_for(set_mean.mean, set_mean.channel_mean, data)[0, 0].tolist() == pytest.approx(
        [255 * m for m in MEAN])
    # predict and the figures need no mean image for such a recipe: its constants are in the recipe
    assert saved_mean(None, None, data).source.startswith("recipe")


def torchvision_normalize(x: torch.Tensor) -> torch.Tensor:
    """ToTensor then Normalize(MEAN, STD), channels last: (x / 255 − mean) / std."""
    return (x.float() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)


def photo_png(name: str) -> tuple[bytes, Image.Image]:
    im = Image.fromarray(getattr(skimage.data, name)())
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue(), im


def our_input(png: bytes, encoding: str) -> torch.Tensor:
    """Our path: prep's resize (and its quality-95 JPEG as stored), then the eval preset of the imported
    recipe (the centre 224 crop, channel-std in the loaders' float step) → 3×224×224."""
    stored = prepare_image(png, encoding=encoding)
    pixels = stored if encoding == "raw" else np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"))
    data = torchvision_data_config()
    colour = make_colour(saved_mean(None, None, data), data, CPU)
    return EvalPreset.for_data(data)([pixels], colour, CPU)[0]


TORCHVISION_EVAL = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])


@pytest.mark.parametrize("name", ["astronaut", "chelsea"])
def test_our_prepared_input_matches_torchvisions_transforms(name):
    """Bounds in normalised units, where one level of 255 is 1 / (255 · 0.226) ≈ 0.017:

    - JPEG at quality 95 with 4:2:0 chroma subsampling (what prep stores) moves pixels by about 2 levels
      on average (1.6–1.9 measured on these photos) and by up to ~40 at sharp colour edges: mean |Δ| ≤ 0.05
      (about 3 levels; measured 0.035), 99th percentile ≤ 0.35 (about 20 levels; measured 0.14–0.23).
    - JPEG errors average out over the image: each channel's mean Δ stays within 0.005 (measured ≤ 0.001),
      where a wrong mean or std constant would shift a channel by 0.1 or more.
    - Without the JPEG step the square astronaut (512 → 256) is exactly torchvision's; chelsea (451×300)
      differs slightly because torchvision truncates its resized width to 384 px (451·256/300 = 384.85),
      moving its crop about 0.3 px from ours: mean |Δ| ≤ 0.02 (measured 0.014).
    """
    png, im = photo_png(name)
    ref = TORCHVISION_EVAL(im)
    exact = our_input(png, "raw")
    if name == "astronaut":
        torch.testing.assert_close(exact, ref, rtol=0, atol=1e-5)
    else:
        assert (exact - ref).abs().mean() <= 0.02
    diff = our_input(png, "jpeg") - ref
    assert diff.abs().mean() <= 0.05
    assert diff.abs().flatten().quantile(0.99) <= 0.35
    assert diff.mean(dim=(1, 2)).abs().max() <= 0.005


# ---------------------------------------------------------------------------------------------- wrong files
def one_line_error(path) -> str:
    with pytest.raises(UserError) as e:
        import_torchvision(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_wrong_files_are_one_line_errors(tmp_path, tv_file):
    path, _ = tv_file
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01 not a zip or a pickle" * 10)
    assert "not a PyTorch weights file" in one_line_error(junk)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: 1 << 20])
    assert "not a PyTorch weights file" in one_line_error(cut)
    resnet = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet)
    assert "no features.0.weight" in one_line_error(resnet)
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    assert "not a state dict" in one_line_error(tensor)
    state = torch.load(path, weights_only=True)
    narrow = tmp_path / "narrow.pth"
    torch.save({**state, "features.3.weight": torch.zeros(128, 64, 5, 5)}, narrow)
    assert "features.3.weight has shape (128, 64, 5, 5)" in one_line_error(narrow)
    extra = tmp_path / "extra.pth"
    torch.save({**state, "features.1.weight": torch.zeros(1)}, extra)
    assert "unexpected key features.1.weight" in one_line_error(extra)
    assert "does not exist" in one_line_error(tmp_path / "missing.pth")
