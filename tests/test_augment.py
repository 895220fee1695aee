"""§4.1 augmentation maths: ten crops as torchvision's TenCrop, the one sampler, lighting, mean subtraction."""

import numpy as np
import pytest
import torch
from loader_data import EIGVAL, EIGVEC, structured_image
from PIL import Image
from torchvision.transforms import CenterCrop, TenCrop

from alexrepro.errors import UserError
from alexrepro.loaders.augment import (
    Colour,
    CropParams,
    center_offset,
    crop_flip,
    draw_train_params,
    finish_batch,
    lighting_shift,
    mean_image_for,
    resize_image,
    resize_mean,
    ten_crop_views,
    view_params,
)
from alexrepro.recipe import DataConfig


@pytest.mark.parametrize("size, crop", [(256, 224), (129, 112), (30, 7)])
def test_ten_crop_views_equal_torchvision_tencrop(size, crop):
    image = structured_image(3, size) if size == 256 else np.asarray(
        Image.fromarray(structured_image(3)).resize((size, size)))
    expected = [np.asarray(p) for p in TenCrop(crop)(Image.fromarray(image))]
    views = ten_crop_views(size, crop)
    assert len(views) == 10
    for (y, x, flip), want in zip(views, expected, strict=True):
        np.testing.assert_array_equal(crop_flip(image, y, x, crop, flip), want)
    # the centre view is torchvision's CenterCrop (its rounding included)
    c = center_offset(size, crop)
    np.testing.assert_array_equal(crop_flip(image, c, c, crop, False), np.asarray(CenterCrop(crop)(Image.fromarray(image))))


def test_view_params_repeat_the_ten_views_per_image():
    p = view_params(ten_crop_views(256, 224), 3)
    assert len(p) == 30
    assert [(int(p.y[k]), int(p.x[k]), bool(p.flip[k])) for k in range(10, 20)] == ten_crop_views(256, 224)
    assert not p.alpha.any()


def test_sampler_is_a_pure_function_of_seed_epoch_batch():
    d = DataConfig()
    a = draw_train_params(d, 7, 3, 11, 64)
    b = draw_train_params(d, 7, 3, 11, 64)
    for u, v in zip((a.y, a.x, a.flip, a.alpha), (b.y, b.x, b.flip, b.alpha), strict=True):
        np.testing.assert_array_equal(u, v)
    for other in (draw_train_params(d, 7, 3, 12, 64), draw_train_params(d, 7, 4, 11, 64),
                  draw_train_params(d, 8, 3, 11, 64)):
        assert not np.array_equal(a.alpha, other.alpha) and not np.array_equal(a.y, other.y)


def test_sampler_covers_every_crop_position_flip_half_alpha_sigma():
    d = DataConfig()  # §4.1: 256 images, 224 crops, α ~ N(0, 0.1)
    p = draw_train_params(d, 0, 0, 0, 20000)
    span = 256 - 224 + 1  # (S - c + 1) positions per axis
    for offs in (p.y, p.x):
        assert offs.min() == 0 and offs.max() == 256 - 224
        assert set(np.unique(offs)) == set(range(span))
        counts = np.bincount(offs, minlength=span)
        assert counts.min() > 0.7 * 20000 / span  # uniform, roughly
    assert 0.48 < p.flip.mean() < 0.52
    assert abs(p.alpha.std() - 0.1) < 0.003 and abs(p.alpha.mean()) < 0.003


def test_switches_zero_their_draws_and_keep_the_crops():
    on = draw_train_params(DataConfig(), 1, 2, 3, 100)
    off = draw_train_params(DataConfig(mirror=False, lighting=False), 1, 2, 3, 100)
    assert not off.flip.any() and not off.alpha.any()
    np.testing.assert_array_equal(on.y, off.y)
    np.testing.assert_array_equal(on.x, off.x)


def test_lighting_shift_is_the_papers_formula():
    rng = np.random.default_rng(0)
    alpha = rng.normal(0, 0.1, (5, 3))
    m = EIGVAL / 255.0
    got = lighting_shift(alpha, EIGVEC, m)
    for i in range(5):
        # §4.1: [p1 p2 p3][α1 m1, α2 m2, α3 m3]ᵀ
        p1, p2, p3 = EIGVEC[:, 0], EIGVEC[:, 1], EIGVEC[:, 2]
        want = p1 * alpha[i, 0] * m[0] + p2 * alpha[i, 1] * m[1] + p3 * alpha[i, 2] * m[2]
        np.testing.assert_allclose(got[i], want, rtol=1e-12, atol=1e-12)


def _colour(mean, lighting=True):
    return Colour(torch.as_tensor(mean), EIGVEC if lighting else None, EIGVAL / 255.0 if lighting else None)


def test_finish_batch_subtracts_the_mean_at_the_same_view_and_adds_lighting():
    rng = np.random.default_rng(1)
    S, c, n = 12, 5, 4
    mean = rng.uniform(0, 255, (S, S, 3)).astype(np.float32)
    images = rng.integers(0, 256, (n, S, S, 3), dtype=np.uint8)
    params = CropParams(np.array([0, 7, 3, 7]), np.array([0, 7, 5, 2]), np.array([False, True, True, False]),
                        rng.normal(0, 0.1, (n, 3)))
    crops = np.stack([crop_flip(images[i], params.y[i], params.x[i], c, params.flip[i]) for i in range(n)])
    out = finish_batch(torch.from_numpy(crops), params, _colour(mean), torch.device("cpu")).numpy()
    assert out.shape == (n, 3, c, c) and out.dtype == np.float32
    for i in range(n):
        y, x = params.y[i], params.x[i]
        img, mu = images[i, y : y + c, x : x + c].astype(np.float64), mean[y : y + c, x : x + c].astype(np.float64)
        if params.flip[i]:
            img, mu = img[:, ::-1], mu[:, ::-1]
        shift = EIGVEC @ (params.alpha[i] * EIGVAL / 255.0)  # §4.1, on the 0–255 scale
        want = (img - mu + shift).transpose(2, 0, 1)
        np.testing.assert_allclose(out[i], want, atol=2e-4)
    no_light = finish_batch(torch.from_numpy(crops), params, _colour(mean, lighting=False), torch.device("cpu"))
    diff = (out - no_light.numpy()).mean(axis=(2, 3))
    np.testing.assert_allclose(diff, lighting_shift(params.alpha, EIGVEC, EIGVAL / 255.0), atol=1e-4)


def test_finish_batch_channels_last_and_ten_crop_shapes():
    rng = np.random.default_rng(2)
    crops = torch.from_numpy(rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8))
    p = CropParams(np.zeros(3, np.int64), np.zeros(3, np.int64), np.zeros(3, bool), np.zeros((3, 3)))
    mean = np.zeros((10, 10, 3), np.float32)
    a = finish_batch(crops, p, _colour(mean, False), torch.device("cpu"), channels_last=False)
    b = finish_batch(crops, p, _colour(mean, False), torch.device("cpu"), channels_last=True)
    assert a.is_contiguous() and b.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(a, b) and torch.equal(a, crops.permute(0, 3, 1, 2).float())
    ten = torch.from_numpy(rng.integers(0, 256, (2, 10, 4, 4, 3), dtype=np.uint8))
    out = finish_batch(ten, view_params(ten_crop_views(10, 4), 2), _colour(mean, False), torch.device("cpu"))
    assert out.shape == (2, 10, 3, 4, 4)
    assert torch.equal(out[1, 3], ten[1, 3].permute(2, 0, 1).float())


def test_resize_is_antialiased_for_images_and_mean():
    checker = ((np.indices((256, 256)).sum(axis=0) % 2) * 255).astype(np.uint8)
    small = resize_image(np.repeat(checker[..., None], 3, axis=2), 128)
    assert small.shape == (128, 128, 3)
    assert np.abs(small.astype(float) - 127.5).max() < 3  # aliasing would give 0s and 255s
    small_mean = resize_mean(np.repeat(checker[..., None], 3, axis=2).astype(np.float32), 128)
    np.testing.assert_allclose(small_mean, small, atol=1.0)  # the same filter for both


def test_mean_image_modes():
    rng = np.random.default_rng(3)
    mean = rng.uniform(0, 255, (256, 256, 3)).astype(np.float32)
    cm = np.array([120.0, 110.0, 100.0])
    np.testing.assert_array_equal(mean_image_for(mean, cm, DataConfig()), mean)
    chan = mean_image_for(mean, cm, DataConfig(mean="channel", image_size=128, crop_size=112))
    assert chan.shape == (128, 128, 3) and np.all(chan == cm.astype(np.float32))
    assert mean_image_for(mean, cm, DataConfig(image_size=128, crop_size=112)).shape == (128, 128, 3)


@pytest.mark.parametrize("variant", ["center", "ten"])
def test_eval_preset_is_torchvisions_resize_then_crops_minus_the_mean(variant):
    """The test-time preset = torchvision's Resize((S, S)) then CenterCrop / TenCrop, minus the mean cut alike."""
    from torchvision.transforms import Resize

    from alexrepro.loaders.colour import mean_colour
    from alexrepro.loaders.presets import EvalPreset

    images = [structured_image(i) for i in (1, 2)]
    preset = EvalPreset(128, 112, variant)
    crop = CenterCrop(112) if variant == "center" else TenCrop(112)
    resized = [Resize((128, 128))(Image.fromarray(im)) for im in images]
    want = [np.asarray(crop(r)) if variant == "center" else np.stack([np.asarray(p) for p in crop(r)])
            for r in resized]
    np.testing.assert_array_equal(preset.cut_all(images), np.stack(want))
    mean = np.random.default_rng(0).uniform(0, 255, (128, 128, 3)).astype(np.float32)
    mean_patches = crop(Image.fromarray(mean[..., 0], mode="F"))  # one channel is enough to place the views
    out = preset(images, mean_colour(mean, torch.device("cpu")), torch.device("cpu"))
    assert out.shape == ((2, 3, 112, 112) if variant == "center" else (2, 10, 3, 112, 112))
    first = out[0, 0] if variant == "center" else out[0, :, 0]
    mean0 = np.asarray(mean_patches) if variant == "center" else np.stack([np.asarray(p) for p in mean_patches])
    np.testing.assert_allclose(first.numpy(), np.stack(want)[0][..., 0] - mean0, atol=1e-4)
    with pytest.raises(UserError, match="crops must be one of center, ten"):
        EvalPreset(128, 112, "five")


def test_the_mean_is_resized_per_channel_with_pils_bilinear_filter_in_float32():
    rng = np.random.default_rng(5)
    mean = rng.uniform(0, 255, (256, 256, 3))  # float64: a checkpoint's mean may come in any float type
    by_hand = np.stack([np.asarray(Image.fromarray(mean[..., k].astype(np.float32), mode="F")
                                   .resize((72, 72), Image.BILINEAR)) for k in range(3)], -1)
    got = resize_mean(mean, 72)
    assert got.dtype == np.float32 and got.shape == (72, 72, 3)
    np.testing.assert_array_equal(got, by_hand)
    same = resize_mean(mean, 256)
    assert same.dtype == np.float32 and np.array_equal(same, mean.astype(np.float32))


def test_torchvisions_normalisation_constants_are_float32_on_the_0_255_scale():
    from alexrepro.loaders.augment import channel_std_mean_and_scale

    m, s = channel_std_mean_and_scale([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert m.dtype == np.float32 and s.dtype == np.float32
    np.testing.assert_allclose(m, np.array([0.485, 0.456, 0.406]) * 255, rtol=1e-6)
    np.testing.assert_allclose(s, 1 / (np.array([0.229, 0.224, 0.225]) * 255), rtol=1e-6)


def test_a_presets_patches_have_its_crop_shape_and_float_output_its_memory_format():
    from alexrepro.loaders.colour import mean_colour
    from alexrepro.loaders.presets import EvalPreset

    image = structured_image(1)
    colour = mean_colour(np.zeros((128, 128, 3), np.float32), torch.device("cpu"))
    for variant, shape in (("center", (112, 112, 3)), ("ten", (10, 112, 112, 3))):
        preset = EvalPreset(128, 112, variant)
        assert preset.crop_shape == shape and preset.cut(image).shape == shape
        patches = preset.cut_all([image, image])
        assert patches.dtype == np.uint8 and patches.shape == (2, *shape)
        t = torch.from_numpy(patches)
        assert preset.finish(t, colour, torch.device("cpu")).is_contiguous()
        last = preset.finish(t, colour, torch.device("cpu"), channels_last=True)
        assert last.stride()[-3] == 1 and not last.is_contiguous()  # channels innermost: NHWC memory
