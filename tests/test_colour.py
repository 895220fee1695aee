"""The colour set-up of an input (§2's mean image, torchvision's constants, §4.1's lighting basis): where each
comes from, checked against values written out here."""

import numpy as np
import pytest
import torch

from alexrepro.data.prepared import Stats, write_stats
from alexrepro.errors import UserError
from alexrepro.loaders.colour import MeanImage, make_colour, saved_mean
from alexrepro.recipe import DataConfig

RNG = np.random.default_rng(7)
MEAN = RNG.uniform(0, 255, (256, 256, 3)).astype(np.float32)
TORCHVISION = DataConfig(mean="channel-std", mean_rgb=[0.485, 0.456, 0.406], std_rgb=[0.229, 0.224, 0.225])


def test_a_channel_std_recipe_takes_its_constants_from_the_recipe():
    got = saved_mean({"mean": torch.from_numpy(MEAN)}, None, TORCHVISION)  # the checkpoint's mean is not used
    m = (np.array([0.485, 0.456, 0.406]) * 255).astype(np.float32)
    assert got.source == "recipe (channel-std)"
    assert got.mean.shape == (256, 256, 3) and got.mean.dtype == np.float32 and np.all(got.mean == m)
    assert got.channel_mean.dtype == np.float64 and np.array_equal(got.channel_mean, m.astype(np.float64))


def test_the_checkpoints_mean_image_and_channel_mean_come_back_as_saved():
    cm = np.array([101.5, 99.25, 98.0])
    got = saved_mean({"mean": torch.from_numpy(MEAN).half(), "channel_mean": torch.from_numpy(cm)}, None,
                     DataConfig())  # a recipe with the §2 mean image: the checkpoint's is used
    assert got.source == "checkpoint" and got.mean.dtype == np.float32 and got.mean.shape == (256, 256, 3)
    np.testing.assert_array_equal(got.mean, MEAN.astype(np.float16).astype(np.float32))
    assert got.channel_mean.dtype == np.float64 and np.array_equal(got.channel_mean, cm)
    # without a stored channel mean: the mean image's average per channel, written out
    plain = saved_mean({"mean": torch.from_numpy(MEAN)}, None)
    expected = [float(MEAN[..., c].astype(np.float64).mean()) for c in range(3)]
    np.testing.assert_allclose(plain.channel_mean, expected, rtol=2e-5)  # a float32 average


def test_a_per_channel_mean_is_spread_over_the_whole_image():
    got = saved_mean({"mean": torch.tensor([120.0, 110.0, 100.0])}, None)
    assert got.mean.shape == (256, 256, 3) and got.mean.dtype == np.float32
    assert np.all(got.mean == np.array([120.0, 110.0, 100.0], np.float32))
    assert got.channel_mean.dtype == np.float64 and got.channel_mean.tolist() == [120.0, 110.0, 100.0]


def test_without_a_saved_mean_the_prepared_sets_statistics_are_read(tmp_path):
    with pytest.raises(UserError, match="^the checkpoint carries no mean image; give the prepared set it was "
                                        "trained on with --data OUT$"):
        saved_mean({}, None)
    cm = np.array([120.0, 110.0, 100.0])
    write_stats(tmp_path, Stats(mean=MEAN.astype(np.float64), channel_mean=cm, pixel_count=1))
    got = saved_mean(None, tmp_path)
    assert got == MeanImage(got.mean, got.channel_mean, str(tmp_path / "stats.h5"))
    assert got.mean.dtype == np.float32 and np.array_equal(got.mean, MEAN)
    assert got.channel_mean.dtype == np.float64 and np.array_equal(got.channel_mean, cm)


def test_make_colour_gives_torchvisions_scale_and_the_lighting_basis():
    stats = MeanImage(MEAN, MEAN.reshape(-1, 3).mean(0).astype(np.float64), "checkpoint")
    tv = make_colour(saved_mean(None, None, TORCHVISION), TORCHVISION, torch.device("cpu"))
    assert tv.scale.dtype == torch.float32 and tv.eigvec is None
    torch.testing.assert_close(tv.scale, torch.tensor([1 / (0.229 * 255), 1 / (0.224 * 255), 1 / (0.225 * 255)]))
    plain = make_colour(stats, DataConfig(), torch.device("cpu"))
    assert plain.scale is None and plain.eigvec is None and plain.magnitudes is None
    assert torch.equal(plain.mean, torch.from_numpy(MEAN))
