"""What every registered net and loader backend must do; a new registry entry is tested here by being added.

Nets (alexrepro.nets.NETS), at a reduced width (the full nets are slow on a CPU): forward gives class
scores, backward reaches every parameter, the state dict round-trips, the summary counts every
parameter. Loader backends (alexrepro.loaders.BACKENDS): a training batch is exactly §2/§4.1's
crop − mean + lighting for the one sampler's draws (on a raw set: no decoder differences), a
mid-epoch resume gives what the uninterrupted epoch gave, the ten test views are §4.1's in
TenCrop order, and a recipe with torchvision's normalisation (mean = "channel-std") gets it. test_loaders.py runs the rest of the loaders' behaviour on every backend too.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from loader_data import EIGVAL, EIGVEC, N_TRAIN, N_VAL

from alexrepro.data.prepared import open_split, read_stats
from alexrepro.errors import UserError
from alexrepro.evaluation.variants import TEST_TIME
from alexrepro.loaders import BACKENDS, KINDS, make_loader
from alexrepro.loaders.augment import draw_train_params
from alexrepro.loaders.presets import VIEWS
from alexrepro.nets import NETS, build_net
from alexrepro.nets.summary import meta_model, summarize, summary_totals
from alexrepro.recipe import DataConfig, ModelConfig
from alexrepro.recipe_reader import load_recipe, recipe_from_dict

CPU = torch.device("cpu")
K = 10  # classes of the reduced nets
CROP = 112  # the tiny recipe's crop (§4.1's 224 halved): every net must take it


def backend_params() -> list:
    """One pytest param per registered loader backend; one that cannot run here is skipped, saying why."""
    return [pytest.param(name, marks=pytest.mark.skipif(not backend.available(), reason=backend.missing))
            for name, backend in BACKENDS.items()]


def small(arch: str) -> ModelConfig:
    """The registered net at a quarter of the width and a small head (the tiny recipe's scale)."""
    return ModelConfig(arch=arch, num_classes=K, width=0.25, fc_width=64, init="paper-scaled")


# --------------------------------------------------------------------------------------------- registries
def test_recipes_accept_exactly_the_registered_names():
    for name in NETS:
        assert load_recipe("tiny", [f"model.arch={name}"]).model.arch == name
    for kind in KINDS:
        assert load_recipe("tiny", [f"data.loader={kind}"]).data.loader == kind
    with pytest.raises(UserError, match="model.arch must be one of"):
        load_recipe("tiny", ["model.arch=not-a-net"])
    with pytest.raises(UserError, match="data.loader must be one of"):
        load_recipe("tiny", ["data.loader=not-a-loader"])
    assert set(TEST_TIME) == set(VIEWS)  # every test-time variant has its views, and the reverse


def test_recipes_and_checkpoints_without_arch_mean_the_papers_net():
    from alexrepro.training.checkpoint import Checkpoint, model_from_checkpoint

    assert ModelConfig().arch == "alexnet" and next(iter(NETS)) == "alexnet"
    old = load_recipe("tiny", ["model.num_classes=10", "data.crop_size=64", "data.image_size=72"]).to_dict()
    del old["model"]["arch"]  # as written before the field existed
    del old["run"]["lrn_kernel"], old["run"]["grouped_conv"]  # the run options added since read as their defaults
    assert recipe_from_dict(old).model.arch == "alexnet"
    assert (recipe_from_dict(old).run.lrn_kernel, recipe_from_dict(old).run.grouped_conv) == ("auto", "grouped")
    torch.manual_seed(0)
    net = build_net(recipe_from_dict(old).model, 64)
    payload = {"model": net.state_dict(), "recipe": old, "recipe_name": "tiny", "classes": [],
               "epoch": 1, "step": 1}
    loaded, recipe, _ = model_from_checkpoint(Checkpoint.from_payload(payload))
    assert recipe.model.arch == "alexnet"
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# --------------------------------------------------------------------------------------------- nets
@pytest.mark.parametrize("arch", list(NETS))
def test_net_forward_gives_class_scores(arch):
    torch.manual_seed(0)
    net = build_net(small(arch), CROP).eval()
    x = torch.randn(3, 3, CROP, CROP) * 50
    with torch.no_grad():
        out = net(x)
        again = net(x)
    assert out.shape == (3, K) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(out, again)  # eval mode: no dropout draw


@pytest.mark.parametrize("arch", list(NETS))
def test_net_backward_reaches_every_parameter(arch):
    torch.manual_seed(0)
    net = build_net(small(arch), CROP).train()
    loss = torch.nn.functional.cross_entropy(net(torch.randn(4, 3, CROP, CROP) * 50), torch.arange(4))
    loss.backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("arch", list(NETS))
def test_net_state_dict_round_trips(arch):
    torch.manual_seed(0)
    a = build_net(small(arch), CROP).eval()
    torch.manual_seed(1)
    b = build_net(small(arch), CROP).eval()
    x = torch.randn(2, 3, CROP, CROP) * 50
    with torch.no_grad():
        assert not torch.equal(a(x), b(x))  # different seeds, different nets
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    result = b.load_state_dict(torch.load(buf, weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys
    assert list(a.state_dict()) == list(b.state_dict())
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("arch", list(NETS))
def test_net_summary_counts_every_parameter(arch):
    net = build_net(small(arch), CROP)
    params = sum(p.numel() for p in net.parameters())
    assert summary_totals(summarize(net, CROP))["params"] == params
    assert summary_totals(summarize(meta_model(small(arch), CROP), CROP))["params"] == params  # shapes only


# --------------------------------------------------------------------------------------------- loaders
def load(out, batch_size, epoch=0, start=0, split="train", train=True, kind="torch", **kw):
    """Every (images, labels) batch of one pass, on the `kind` backend."""
    kw.setdefault("data_cfg", DataConfig(workers=0))
    loader = make_loader(out, split, kw.pop("data_cfg"), batch_size, train=train, device=CPU, kind=kind, **kw)
    loader.set_epoch(epoch, start)
    batches = list(loader)
    assert len(batches) == len(loader)
    assert sum(len(y) for _, y in batches) == loader.num_images
    loader.close()
    return batches


def labels_of(batches):
    return [y.tolist() for _, y in batches]


@pytest.mark.parametrize("kind", backend_params())
def test_training_tensor_is_exactly_crop_minus_mean_plus_lighting(raw_set, kind):
    cfg = DataConfig(workers=0)
    (images, labels), _ = load(raw_set, 8, epoch=4, seed=2, data_cfg=cfg, kind=kind)
    ds, stats = open_split(raw_set, "train"), read_stats(raw_set)
    params = draw_train_params(cfg, 2, 4, 0, 8)  # the one sampler: global batch 0 of epoch 4
    for k, i in enumerate(labels.tolist()):
        y, x, c = params.y[k], params.x[k], 224
        img = ds[i][0][y : y + c, x : x + c].astype(np.float64)
        mu = stats.mean[y : y + c, x : x + c].astype(np.float64)
        if params.flip[k]:
            img, mu = img[:, ::-1], mu[:, ::-1]
        shift = EIGVEC @ (params.alpha[k] * EIGVAL / 255.0)  # §4.1, "unit" scale: m = λ/255
        np.testing.assert_allclose(images[k].numpy(), (img - mu + shift).transpose(2, 0, 1), atol=2e-4)
    assert images.dtype == torch.float32 and labels.dtype == torch.int64


@pytest.mark.parametrize("kind", backend_params())
def test_channel_std_is_torchvisions_normalisation_of_the_views(raw_set, kind):
    """mean = "channel-std" (imported torchvision weights): each view is (x / 255 − mean_rgb) / std_rgb,
    written out here, for the centre patch and the ten views and for training crops (the set's mean image
    is not used; lighting, off in this recipe, would be added before the scale)."""
    mean_rgb, std_rgb = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    cfg = DataConfig(workers=0, mean="channel-std", lighting=False)
    ds = open_split(raw_set, "val")
    ((center, labels),) = load(raw_set, N_VAL, split="val", train=False, kind=kind, data_cfg=cfg)
    ((ten, _),) = load(raw_set, N_VAL, split="val", train=False, crops="ten", kind=kind, data_cfg=cfg)
    for k, i in enumerate(labels.tolist()):
        norm = (ds[i][0].astype(np.float64) / 255.0 - mean_rgb) / std_rgb
        want = norm[16 : 16 + 224, 16 : 16 + 224].transpose(2, 0, 1)
        np.testing.assert_allclose(center[k].numpy(), want, atol=1e-5)
        np.testing.assert_allclose(ten[k, 9].numpy(), norm[16 : 16 + 224, 16 : 16 + 224][:, ::-1].transpose(2, 0, 1),
                                   atol=1e-5)  # view 9: the centre of the mirrored image
    (images, labels), *_ = load(raw_set, 8, epoch=1, seed=3, data_cfg=cfg, kind=kind)
    train, params = open_split(raw_set, "train"), draw_train_params(cfg, 3, 1, 0, 8)
    for k, i in enumerate(labels.tolist()):
        y, x = params.y[k], params.x[k]
        patch = train[i][0][y : y + 224, x : x + 224]
        patch = patch[:, ::-1] if params.flip[k] else patch
        want = ((patch.astype(np.float64) / 255.0 - mean_rgb) / std_rgb).transpose(2, 0, 1)
        np.testing.assert_allclose(images[k].numpy(), want, atol=1e-5)


@pytest.mark.parametrize("kind", backend_params())
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(jpeg_set, kind):
    cfg = DataConfig(workers=2, drop_last=False)  # worker processes, persistent across passes
    full = load(jpeg_set, 4, epoch=2, seed=9, data_cfg=cfg, kind=kind)
    tail = load(jpeg_set, 4, epoch=2, start=3, seed=9, data_cfg=cfg, kind=kind)
    assert len(tail) == len(full) - 3
    for (a, ya), (b, yb) in zip(full[3:], tail, strict=True):
        assert torch.equal(ya, yb) and torch.equal(a, b)
    loader = make_loader(jpeg_set, "train", cfg, 4, train=True, device=CPU, kind=kind, seed=9)
    loader.set_epoch(2)
    for k, _ in enumerate(loader):
        if k == 1:
            break
    state = loader.state_dict()
    assert state["epoch"] == 2 and state["batch"] == 2
    loader.close()
    resumed = make_loader(jpeg_set, "train", cfg, 4, train=True, device=CPU, kind=kind, seed=9)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - 2 and resumed.num_images == N_TRAIN - 8
    rest = list(resumed)
    assert [y.tolist() for _, y in rest] == labels_of(full[2:])
    resumed.close()
    other = make_loader(jpeg_set, "train", cfg, 8, train=True, device=CPU, kind=kind, seed=9)
    with pytest.raises(UserError, match="batch_size"):
        other.load_state_dict(state)
    with pytest.raises(UserError, match="cannot resume at batch 9"):
        other.set_epoch(0, 9)
    other.close()


@pytest.mark.parametrize("kind", backend_params())
def test_loader_ten_views_are_the_four_corners_center_and_mirrors_in_tencrop_order(raw_set, kind):
    ((ten, labels),) = load(raw_set, N_VAL, split="val", train=False, crops="ten", kind=kind)
    ((center, _),) = load(raw_set, N_VAL, split="val", train=False, kind=kind)
    ds, mean = open_split(raw_set, "val"), read_stats(raw_set).mean.astype(np.float64)
    assert ten.shape == (N_VAL, 10, 3, 224, 224)
    # §4.1 in TenCrop order: the corners TL, TR, BL, BR and the centre (offset 16 = (256 - 224) / 2) of the
    # image, then the same five of its horizontal reflection.
    corners = [(0, 0), (0, 32), (32, 0), (32, 32), (16, 16)]
    for k, i in enumerate(labels.tolist()):
        image = ds[i][0].astype(np.float64) - mean
        for v in range(10):
            y, x = corners[v % 5]
            source = image[:, ::-1] if v >= 5 else image
            want = source[y : y + 224, x : x + 224]
            np.testing.assert_allclose(ten[k, v].numpy(), want.transpose(2, 0, 1), atol=1e-4)
    assert torch.equal(ten[:, 4], center)  # view 4 is what the centre-patch test scores
