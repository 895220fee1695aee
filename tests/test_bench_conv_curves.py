"""`alexrepro bench conv` (grouped convolutions) and `bench curves` (loss curves of recipe variants).

On the CPU they run at tiny sizes: the tests check the FLOP counts against the formula written out, that
every ratio comes from the report's own figures, and that the comparisons see a difference that is there.
"""

import pytest
import torch

from alexrepro.bench.conv import bench_conv, conv_shapes, split_copy
from alexrepro.bench.curves import bench_curves, compare
from alexrepro.cli import main

TINY = ("model.width=0.125", "model.fc_width=32", "model.num_classes=4")


def test_conv_shapes_are_the_papers_layers():
    shapes, batch = conv_shapes("paper", ())
    # §3.5: 224×224×3 → 96 kernels 11×11 stride 4; 256 of 5×5×48; 384 of 3×3×256; 384 of 3×3×192; 256 of 3×3×192
    got = [(s.name, s.c_in, s.side, s.c_out, s.kernel, s.groups, s.out_side()) for s in shapes]
    assert got == [("conv1", 3, 224, 96, 11, 1, 55), ("conv2", 96, 27, 256, 5, 2, 27), ("conv3", 256, 13, 384, 3, 1, 13),
                   ("conv4", 384, 13, 384, 3, 2, 13), ("conv5", 384, 13, 256, 3, 2, 13)]
    assert batch == 128
    conv2 = shapes[1]  # forward multiply-adds 27² · 256 · 48 · 5², ×2 FLOP, ×3 for forward + both gradients
    assert conv2.gflop(128, 48) == pytest.approx(2 * 128 * 27**2 * 256 * 48 * 25 * 3 / 1e9)
    assert shapes[0].gflop(1, 3) == pytest.approx(2 * 55**2 * 96 * 3 * 121 * 2 / 1e9)  # no input gradient for conv1


def test_two_convs_compute_the_grouped_layer():
    torch.manual_seed(0)
    grouped = torch.nn.Conv2d(8, 6, 3, padding=1, groups=2).double()
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    split = split_copy(grouped)  # the net's run.grouped_conv = "split" with the grouped layer's weights
    assert split.form == "split" and torch.equal(split.weight, grouped.weight) and split.weight is not grouped.weight
    assert torch.allclose(split(x), grouped(x), atol=1e-12)


def test_bench_conv_reports_every_layer_and_consistent_ratios(capsys):
    r = bench_conv("tiny", TINY[:1], batch_size=2, steps=1, rounds=1)
    assert list(r["settings"]) == ["nchw", "channels_last"] and r["training_setting"] == "channels_last"
    for setting in r["settings"].values():
        layers = setting["layers"]
        assert list(layers) == ["conv1", "conv2", "conv3", "conv4", "conv5"]
        for name in ("conv2", "conv4", "conv5"):
            v = layers[name]
            assert set(v) >= {"net", "same_flops", "full", "two_convs"}
            assert v["net"]["gflop"] == v["same_flops"]["gflop"] == pytest.approx(v["full"]["gflop"] / 2, rel=1e-5)
            for k in ("net", "same_flops", "full", "two_convs"):
                assert v[k]["ms_per_gflop"] == pytest.approx(1e3 * v[k]["seconds"] / v[k]["gflop"], rel=2e-2)
            assert v["grouped_vs_ungrouped_per_flop"] == pytest.approx(
                v["net"]["ms_per_gflop"] / v["same_flops"]["ms_per_gflop"], rel=2e-3)
        assert set(layers["conv1"]) == {"net"}
        total = sum(layers[n]["net"]["seconds"] for n in ("conv2", "conv4", "conv5"))
        same = sum(layers[n]["same_flops"]["seconds"] for n in ("conv2", "conv4", "conv5"))
        assert setting["grouped_vs_ungrouped_per_flop"] == pytest.approx(total / same, rel=2e-3)
    assert r["grouped_vs_ungrouped_per_flop"] == r["settings"]["channels_last"]["grouped_vs_ungrouped_per_flop"]
    assert r["switch_suggested"] == (r["grouped_vs_ungrouped_per_flop"] > 1.3 and r["two_convs_vs_grouped_time"] < 1)
    for agree in r["two_convs_agreement"].values():  # the same function, in float32: rounding apart at most
        assert max(agree["output"], agree["input_grad"], agree["weight_grad"]) < 1e-5


def test_curves_compare_finds_a_difference_and_its_step():
    a = [2.0] * 20
    b = a[:]
    b[13] = 2.1  # 5% at step 14; 0.5% over its window of ten
    c = compare(a, b)
    assert c["max_rel_diff_step"] == pytest.approx(0.05) and c["at_step"] == 14
    assert c["max_rel_diff_window"] == pytest.approx(0.005) and c["within_tolerance"]
    assert not c["within_tolerance_every_step"]
    assert compare(a, a)["max_rel_diff_step"] == 0.0


def test_bench_curves_same_seed_same_curve_and_a_changed_recipe_differs(capsys):
    variants = ("optim.lr=0.01", "optim.lr=0.01,run.log_every=7", "optim.lr=0.02")
    r = bench_curves("tiny", TINY, variants, steps=4, batches=2, batch_size=4)
    same, other = r["against_reference"][variants[1]], r["against_reference"][variants[2]]
    assert same["max_rel_diff_step"] == 0.0 and same["within_tolerance"]  # nothing that changes the maths
    assert r["losses"][variants[0]][0] == r["losses"][variants[2]][0]  # the first step runs before any update
    assert other["max_rel_diff_step"] > 0 and len(r["losses"][variants[2]]) == 4
    with pytest.raises(SystemExit) as e:
        main(["bench", "curves", "--recipe", "tiny", "--variant", "optim.lr=0.01", "--json"])
    assert e.value.code == 2 and "two --variant" in capsys.readouterr().err

