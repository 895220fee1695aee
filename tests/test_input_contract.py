"""The input path's contract: tensors land on the device asked for (torch's "meta" device stands in for a GPU:
mixing it with the CPU is an error, as with CUDA), float32 whatever the inputs' type, contiguous unless
channels_last is asked for, images and means of any shape resized as PIL resizes them."""

import numpy as np
import pytest
import torch
from loader_data import EIGVAL, EIGVEC
from PIL import Image

from alexrepro.data.stats_file import Stats
from alexrepro.loaders.augment import (
    Colour,
    center_views,
    finish_batch,
    mean_image_for,
    resize_image,
    resize_mean,
    to_device,
    view_params,
)
from alexrepro.loaders.colour import make_colour, mean_colour
from alexrepro.loaders.presets import EvalPreset
from alexrepro.recipe import DataConfig

META = torch.device("meta")
RNG = np.random.default_rng(11)


def test_finish_batch_and_the_colour_land_on_the_device_asked_for():
    assert to_device(META, np.arange(3))[0].device == META
    colour = mean_colour(RNG.uniform(0, 255, (8, 8, 3)), META, scale=np.ones(3))
    assert colour.mean.device == META and colour.scale.device == META
    crops = torch.zeros((2, 4, 4, 3), dtype=torch.uint8)  # on the CPU, as a loader's worker gives them
    out = finish_batch(crops, view_params(center_views(8, 4), 2), colour, META)
    assert out.device == META and out.shape == (2, 3, 4, 4) and out.dtype == torch.float32
    preset = EvalPreset(8, 4, "ten")
    images = [RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(2)]
    assert preset(images, colour, META).device == META
    assert preset.finish(torch.from_numpy(preset.cut_all(images)), colour, META).device == META
    stats = Stats(mean=RNG.uniform(0, 255, (256, 256, 3)).astype(np.float32), channel_mean=np.zeros(3),
                  pixel_count=1, eigval=EIGVAL, eigvec=EIGVEC)
    assert make_colour(stats, DataConfig(), META).mean.device == META


def test_the_colour_is_float32_whatever_the_inputs_type():
    mean64 = RNG.uniform(0, 255, (8, 8, 3))  # float64
    colour = mean_colour(mean64, torch.device("cpu"), scale=np.array([0.5, 0.25, 2.0]))  # float64 scale
    assert colour.mean.dtype == torch.float32 and colour.scale.dtype == torch.float32
    np.testing.assert_array_equal(colour.mean.numpy(), mean64.astype(np.float32))
    out = finish_batch(torch.full((1, 8, 8, 3), 200, dtype=torch.uint8), view_params(center_views(8, 8), 1), colour,
                       torch.device("cpu"))
    assert out.dtype == torch.float32
    chan = mean_image_for(np.zeros((256, 256, 3), np.float32), np.array([120.25, 110.5, 100.125]),
                          DataConfig(mean="channel"))
    assert chan.dtype == np.float32 and chan.shape == (256, 256, 3)


def test_a_channel_std_recipe_with_lighting_keeps_torchvisions_scale():
    data = DataConfig(mean="channel-std", mean_rgb=[0.485, 0.456, 0.406], std_rgb=[0.229, 0.224, 0.225])
    stats = Stats(mean=np.zeros((256, 256, 3), np.float32), channel_mean=np.zeros(3), pixel_count=1,
                  eigval=EIGVAL, eigvec=EIGVEC)
    colour = make_colour(stats, data, torch.device("cpu"), lighting=True)
    want = 1.0 / (np.array([0.229, 0.224, 0.225]) * 255.0)
    np.testing.assert_allclose(colour.scale.numpy(), want.astype(np.float32), rtol=1e-7)
    assert colour.eigvec is not None and colour.magnitudes is not None


def test_finish_batch_is_contiguous_unless_asked_and_says_when_views_and_crops_differ():
    colour = mean_colour(np.zeros((8, 8, 3), np.float32), torch.device("cpu"))
    crops = torch.zeros((2, 4, 4, 3), dtype=torch.uint8)
    params = view_params(center_views(8, 4), 2)
    assert finish_batch(crops, params, colour, torch.device("cpu")).is_contiguous()
    assert finish_batch(crops, params, colour, torch.device("cpu"), channels_last=True).is_contiguous(
        memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="^3 views for 2 crops$"):
        finish_batch(crops, view_params(center_views(8, 4), 3), colour, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"^mean image must be 256×256×3, got \(8, 8, 3\)$"):
        mean_image_for(np.zeros((8, 8, 3), np.float32), np.zeros(3), DataConfig())


def test_lighting_needs_both_the_basis_and_its_magnitudes():
    mean = np.zeros((8, 8, 3), np.float32)
    crops = torch.full((2, 4, 4, 3), 100, dtype=torch.uint8)
    params = view_params(center_views(8, 4), 2)
    params.alpha[:] = [[0.1, -0.2, 0.05], [0.3, 0.0, -0.1]]
    plain = finish_batch(crops, params, mean_colour(mean, torch.device("cpu")), torch.device("cpu"))
    torch.testing.assert_close(plain, torch.full((2, 3, 4, 4), 100.0), rtol=0, atol=0)
    half = Colour(torch.from_numpy(mean), EIGVEC, None)  # a basis without magnitudes: no lighting
    torch.testing.assert_close(finish_batch(crops, params, half, torch.device("cpu")), plain, rtol=0, atol=0)


@pytest.mark.parametrize("shape, size", [((40, 56), 40), ((56, 40), 40), ((40, 40), 32), ((3, 5), 3), ((5, 3), 3)])
def test_any_image_and_mean_shape_is_resized_as_pil_resizes_it(shape, size):
    image = RNG.integers(0, 256, (*shape, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    np.testing.assert_array_equal(resize_image(image, size), want)
    mean = RNG.uniform(0, 255, (*shape, 3)).astype(np.float32)
    want_mean = np.stack([np.asarray(Image.fromarray(mean[..., k], mode="F").resize((size, size), Image.BILINEAR))
                          for k in range(3)], axis=-1)
    np.testing.assert_array_equal(resize_mean(mean, size), want_mean)


def test_the_preset_for_a_recipe_is_the_centre_patch_unless_asked():
    data = DataConfig(image_size=8, crop_size=4)
    assert EvalPreset.for_data(data) == EvalPreset(8, 4, "center")
    assert EvalPreset.for_data(data).views == [(2, 2, False)]  # torchvision's centre: round((8 − 4) / 2)
    assert EvalPreset.for_data(data, "ten").view_axis == (10,)
