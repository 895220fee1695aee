"""Recipes: the shipped files carry the paper's numbers; errors name the key; overrides coerce."""

import pytest

from alexrepro.errors import UserError
from alexrepro.recipe import diff_recipes, recipe_to_toml
from alexrepro.recipe_reader import list_recipes, load_recipe

SHIPPED = {"paper", "one-gpu", "tiny", "no-lrn", "no-overlap-pool", "no-pca", "no-dropout", "tanh"}


def test_shipped_recipes_present_and_load():
    names = {n for n, _ in list_recipes()}
    assert SHIPPED <= names
    for n in names:
        r = load_recipe(n)
        assert r.name == n and r.description


def test_paper_recipe_has_the_papers_numbers():
    r = load_recipe("paper")
    # §5: batch 128, momentum 0.9, weight decay 0.0005, lr 0.01 divided by 10 three times, ~90 epochs
    assert r.optim.batch_size == 128 and r.optim.momentum == 0.9 and r.optim.weight_decay == 0.0005
    assert r.optim.lr == 0.01 and r.optim.name == "paper"
    assert r.schedule.factor == 0.1 and r.schedule.max_reductions == 3 and r.schedule.epochs == 90
    # §3.3 LRN as printed, §3.4 overlapping pooling, §4.2 dropout, §5 init
    m = r.model
    assert (m.lrn_k, m.lrn_size, m.lrn_alpha, m.lrn_beta) == (2.0, 5, 1e-4, 0.75)
    assert m.lrn_alpha_convention == "printed"
    assert (m.pool_size, m.pool_stride) == (3, 2)
    assert m.dropout == 0.5 and m.init == "paper" and m.num_classes == 1000
    assert m.layout == "two-tower" and m.activation == "relu"
    # §3.5: padding 2 gives 224 crops 55×55 maps; §3.2/§3.3: each GPU normalises its own maps
    assert m.arch == "alexnet" and m.conv1_padding == 2 and not m.lrn_across_towers
    # §2 / §4.1: 256 images, 224 crops, mirror, PCA lighting with σ = 0.1 on the [0, 1] scale
    d = r.data
    assert (d.image_size, d.crop_size, d.mean) == (256, 224, "image")
    assert d.mirror and d.lighting and d.lighting_std == 0.1 and d.lighting_scale == "unit"
    assert r.run.precision == "fp32"


@pytest.mark.parametrize(
    "name, field, value",
    [
        ("no-lrn", ("model", "lrn"), False),
        ("no-overlap-pool", ("model", "pool_size"), 2),
        ("no-pca", ("data", "lighting"), False),
        ("no-dropout", ("model", "dropout"), 0.0),
        ("tanh", ("model", "activation"), "tanh"),
        ("one-gpu", ("model", "layout"), "one-tower"),
    ],
)
def test_ablations_change_exactly_one_thing(name, field, value):
    r = load_recipe(name)
    assert getattr(getattr(r, field[0]), field[1]) == value
    # The paper's stride is already 2 (§3.4: s = 2, z = 3), so no-overlap-pool changes z alone.
    assert diff_recipes(load_recipe("paper"), r) == [f"{field[0]}.{field[1]}"]


def test_unknown_key_names_key_and_choices(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[optim]\nlrr = 0.1\n')
    with pytest.raises(UserError, match=r"'lrr'.*did you mean 'lr'.*valid: .*batch_size"):
        load_recipe(p)
    p.write_text('[optimiser]\nlr = 0.1\n')
    with pytest.raises(UserError, match=r"unknown section 'optimiser'.*valid: model, data"):
        load_recipe(p)


def test_wrong_types_are_errors(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('[optim]\nbatch_size = "big"\n')
    with pytest.raises(UserError, match="optim.batch_size must be an integer"):
        load_recipe(p)
    p.write_text('[model]\nactivation = "sigmoid"\n')
    with pytest.raises(UserError, match="one of 'relu', 'tanh'"):
        load_recipe(p)


def test_overrides_coerce_types():
    r = load_recipe("paper", ["optim.lr=1e-2", "optim.batch_size=256", "model.lrn=false",
                              "schedule.milestones=10,20", "model.activation=tanh", "model.width=1"])
    assert r.optim.lr == 0.01 and isinstance(r.optim.lr, float)
    assert r.optim.batch_size == 256 and r.model.lrn is False
    assert r.schedule.milestones == [10, 20] and r.model.activation == "tanh"
    assert isinstance(r.model.width, float)
    with pytest.raises(UserError, match="optim.batch_size must be an integer"):
        load_recipe("paper", ["optim.batch_size=1.5"])
    with pytest.raises(UserError, match="section.key=value"):
        load_recipe("paper", ["optim.lr"])
    with pytest.raises(UserError, match="did you mean 'lr'"):
        load_recipe("paper", ["optim.lrr=3"])


def test_range_checks():
    with pytest.raises(UserError, match="crop_size"):
        load_recipe("paper", ["data.crop_size=300"])


def test_imported_weights_keys_are_checked():
    """The keys alexrepro import writes (conv1_padding, lrn_across_towers, channel-std) take overrides and
    refuse what cannot run."""
    r = load_recipe("paper", ["model.conv1_padding=0", "model.lrn_across_towers=true", "data.mean=channel-std",
                              "model.arch=torchvision-alexnet"])
    assert (r.model.conv1_padding, r.model.lrn_across_towers, r.data.mean) == (0, True, "channel-std")
    assert r.data.mean_rgb == [0.485, 0.456, 0.406] and r.data.std_rgb == [0.229, 0.224, 0.225]  # torchvision's
    with pytest.raises(UserError, match="conv1_padding must be 0 or more"):
        load_recipe("paper", ["model.conv1_padding=-1"])
    with pytest.raises(UserError, match="need 3 values"):
        load_recipe("paper", ["data.mean_rgb=[0.5, 0.5]"])
    with pytest.raises(UserError, match="std_rgb values must be positive"):
        load_recipe("paper", ["data.std_rgb=[0.2, 0.0, 0.2]"])


def test_toml_round_trip(tmp_path):
    r = load_recipe("tiny", ["optim.lr=0.05"])
    p = tmp_path / "resolved.toml"
    p.write_text(recipe_to_toml(r))
    again = load_recipe(p)
    assert diff_recipes(r, again) == []


def test_convention_recipes_name_the_released_codes_readings():
    # docs/FAITHFULNESS.md C2, C3: cuda-convnet divided α = 1e-4 by n (effective 2e-5) and used √λ on 0–255.
    r = load_recipe("cuda-convnet")
    assert r.model.lrn_alpha_convention == "divided-by-n" and r.model.lrn_alpha == 1e-4
    assert r.data.lighting_scale == "cuda-convnet"
    assert set(diff_recipes(load_recipe("paper"), r)) == {"model.lrn_alpha_convention", "data.lighting_scale"}
    # docs/FAITHFULNESS.md C7, T8: Caffe's reference initialisation as the fix for the ln(1000) stall.
    c = load_recipe("caffe-init")
    assert c.model.init == "caffe" and diff_recipes(load_recipe("paper"), c) == ["model.init"]
