"""The net of §3: parameter counts, feature-map sizes, initialisation (§5), the two-GPU split, the summary."""

import dataclasses
import json
import math

import pytest
import torch

from alexrepro.cli import main
from alexrepro.errors import UserError
from alexrepro.nets.alexnet import AlexNet, build_model, conv_channels, init_weights, model_parallel
from alexrepro.nets.lrn import LocalResponseNorm
from alexrepro.nets.summary import forward_macs, meta_model, summarize, summary_totals
from alexrepro.recipe_reader import load_recipe

CPU2 = (torch.device("cpu"), torch.device("cpu"))


def conv_params(out_c, in_c, k, groups=1):
    return out_c * (in_c // groups) * k * k + out_c


def fc_params(n_in, n_out):
    return n_in * n_out + n_out


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def small_cfg(**changes):
    """The tiny recipe's net with narrow FC layers: fast on a CPU."""
    return dataclasses.replace(load_recipe("tiny").model, **{"fc_width": 64, **changes})


@pytest.fixture(scope="module")
def paper_net():
    torch.manual_seed(0)
    return build_model(load_recipe("paper").model, 224)


# ------------------------------------------------------------------------------------------ counts and shapes
def test_paper_net_has_exactly_60965224_parameters(paper_net):
    # §3.5 by hand: conv2, conv4, conv5 see only their own tower's half of the input maps.
    by_hand = (
        conv_params(96, 3, 11)
        + conv_params(256, 96, 5, groups=2)
        + conv_params(384, 256, 3)
        + conv_params(384, 384, 3, groups=2)
        + conv_params(256, 384, 3, groups=2)
        + fc_params(256 * 6 * 6, 4096)
        + fc_params(4096, 4096)
        + fc_params(4096, 1000)
    )
    assert by_hand == 60_965_224  # PAPER.md
    assert n_params(paper_net) == 60_965_224


def test_one_gpu_net_count_from_the_layer_formula():
    # The one-GPU net: half the kernels in conv1-conv4, conv5 keeps 256, no groups, FC unchanged.
    by_hand = (
        conv_params(48, 3, 11)
        + conv_params(128, 48, 5)
        + conv_params(192, 128, 3)
        + conv_params(192, 192, 3)
        + conv_params(256, 192, 3)
        + fc_params(256 * 6 * 6, 4096)
        + fc_params(4096, 4096)
        + fc_params(4096, 1000)
    )
    model = meta_model(load_recipe("one-gpu").model, 224)
    assert n_params(model) == by_hand
    assert all(getattr(model, f"conv{i}").groups == 1 for i in range(1, 6))
    assert isinstance(model.norm1, LocalResponseNorm) and model.norm1.groups == 1


def test_two_tower_layout_groups_conv2_conv4_conv5_and_lrn(paper_net):
    groups = {f"conv{i}": getattr(paper_net, f"conv{i}").groups for i in range(1, 6)}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    assert paper_net.norm1.groups == 2 and paper_net.norm2.groups == 2
    # Each tower of conv2 sees only its own half of conv1's maps.
    x = torch.randn(1, 96, 8, 8)
    y = paper_net.conv2(x)
    x2 = x.clone()
    x2[:, 48:] = torch.randn(1, 48, 8, 8)
    y2 = paper_net.conv2(x2)
    torch.testing.assert_close(y[:, :128], y2[:, :128])
    assert not torch.allclose(y[:, 128:], y2[:, 128:])


def _shapes(model, crop, batch=1):
    seen = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, tuple(o.shape)))
        for n, m in model.named_children()
    ]
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, crop, crop))
    for h in hooks:
        h.remove()
    return seen, out


def test_feature_maps_are_the_papers(paper_net):
    seen, out = _shapes(paper_net, 224)
    # PAPER.md: 224 → 55 → 27 → 13 → 13 → 13 → 6 (with the pools between).
    assert seen["conv1"] == (1, 96, 55, 55)
    assert seen["pool1"] == (1, 96, 27, 27)
    assert seen["conv2"] == (1, 256, 27, 27)
    assert seen["pool2"] == (1, 256, 13, 13)
    assert seen["conv3"] == (1, 384, 13, 13)
    assert seen["conv4"] == (1, 384, 13, 13)
    assert seen["conv5"] == (1, 256, 13, 13)
    assert seen["pool5"] == (1, 256, 6, 6)
    assert seen["fc6"] == seen["fc7"] == (1, 4096)
    assert out.shape == (1, 1000)


def test_tiny_recipe_runs_on_112_crops():
    r = load_recipe("tiny")
    model = build_model(r.model, r.data.crop_size)
    assert conv_channels(r.model) == (24, 64, 96, 96, 64)  # recipe comment: 1/4 width
    seen, out = _shapes(model, 112, batch=2)
    # 112 → (112 + 4 - 11) // 4 + 1 = 27 → 13 → 13 → 6 → 6 → 6 → (6 - 3) // 2 + 1 = 2
    assert seen["conv1"][2:] == (27, 27) and seen["pool2"][2:] == (6, 6) and seen["pool5"] == (2, 64, 2, 2)
    assert out.shape == (2, 10)
    assert model.forward_features(torch.randn(2, 3, 112, 112)).shape == (2, 256)


def test_width_rounds_to_even_kernel_counts():
    cfg = dataclasses.replace(load_recipe("paper").model, width=0.3)
    # 96·0.3 = 28.8 → 28, 256·0.3 = 76.8 → 76, 384·0.3 = 115.2 → 116
    assert conv_channels(cfg) == (28, 76, 116, 116, 76)


@pytest.mark.parametrize("name", ["tanh", "no-lrn", "no-overlap-pool"])
def test_ablation_recipes_build_and_run(name):
    r = load_recipe(name)
    torch.manual_seed(0)
    model = build_model(r.model, r.data.crop_size)
    seen, out = _shapes(model, 224)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    if name == "no-overlap-pool":
        # §3.4 with z = s = 2: 55 → 27, 27 → 13, 13 → 6: the same sizes as the overlapping pools.
        assert seen["pool1"][2:] == (27, 27) and seen["pool2"][2:] == (13, 13) and seen["pool5"][2:] == (6, 6)
        assert model.pool1.kernel_size == 2 and model.pool1.stride == 2
    if name == "no-lrn":
        # §3.3 puts an LRN after conv1 and conv2: the ablation removes both, and nothing normalises instead.
        assert not [n for n, m in model.named_modules() if isinstance(m, LocalResponseNorm)]
        x = torch.randn(1, 96, 55, 55)
        assert model.norm1(x) is x and model.norm2(x) is x
        paper = build_model(load_recipe("paper").model, r.data.crop_size)
        assert [n for n, m in paper.named_modules() if isinstance(m, LocalResponseNorm)] == ["norm1", "norm2"]
    if name == "tanh":
        feats = model.eval().forward_features(torch.randn(1, 3, 224, 224) * 50)
        assert feats.min() < 0 and feats.abs().max() <= 1


def test_relu_features_are_non_negative_and_fc7_sized(paper_net):
    feats = paper_net.eval().forward_features(torch.randn(1, 3, 224, 224))
    assert feats.shape == (1, 4096) and feats.min() >= 0


def test_crop_too_small_is_a_user_error():
    with pytest.raises(UserError, match="crop size 40 is too small"):
        build_model(load_recipe("paper").model, 40)


# ------------------------------------------------------------------------------------------ initialisation
BIAS_ONE = {"conv2", "conv4", "conv5", "fc6", "fc7"}  # §5


@pytest.mark.parametrize("scheme", ["paper", "caffe"])
def test_init_statistics_per_layer(paper_net, scheme):
    torch.manual_seed(1)
    init_weights(paper_net, scheme)
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        layer = getattr(paper_net, name)
        w = layer.weight.detach().double()
        # §5: N(0, 0.01); Caffe's bvlc_alexnet: fc6 and fc7 N(0, 0.005).
        std = 0.005 if scheme == "caffe" and name in ("fc6", "fc7") else 0.01
        n = w.numel()
        assert abs(w.mean().item()) < 5 * std / math.sqrt(n), name
        assert abs(w.std().item() / std - 1) < 5 / math.sqrt(2 * n) + 1e-3, name
        # §5: biases 1 in conv2, conv4, conv5, fc6, fc7, else 0; Caffe: 0.1 where the paper has 1.
        one = 1.0 if scheme == "paper" else 0.1
        expected = one if name in BIAS_ONE else 0.0
        assert torch.all(layer.bias == expected), name


def test_unknown_init_is_a_user_error(paper_net):
    with pytest.raises(UserError, match="unknown init scheme 'xavier'"):
        init_weights(paper_net, "xavier")


# ------------------------------------------------------------------------------------------ model parallel
@pytest.mark.parametrize("changes", [{}, {"num_classes": 7, "fc_width": 65, "activation": "tanh"}])
def test_model_parallel_gives_the_grouped_output(changes):
    torch.manual_seed(0)
    grouped = build_model(small_cfg(**changes), 112).eval()
    mp = model_parallel(grouped, CPU2).eval()
    x = torch.randn(2, 3, 112, 112) * 30
    torch.testing.assert_close(mp(x), grouped(x))
    torch.testing.assert_close(mp.forward_features(x), grouped.forward_features(x))


def test_model_parallel_dropout_draws_each_towers_half_on_its_own():
    # C8: each device drops half of fc6's and fc7's neurons for its own half, with §4.2's rule: an output is
    # 0 with probability 0.5, else the input doubled (inverted dropout: ×2 in training = ×0.5 at test time).
    torch.manual_seed(0)
    mp = model_parallel(build_model(small_cfg(dropout=0.5, fc_width=128), 112), CPU2).train()
    calls = []
    mp.drop.register_forward_hook(lambda m, a, out: calls.append((a[0].detach(), out.detach())))
    mp(torch.randn(64, 3, 112, 112) * 30)
    assert len(calls) == 4  # fc6 then fc7, a call per tower each
    masks = []
    for x, out in calls:
        assert x.shape == (64, 64)  # the tower's half of the 128 units
        kept = out != 0
        torch.testing.assert_close(out[kept], 2 * x[kept])
        live = x != 0  # a ReLU zero stays zero either way: count the drops among live units only
        rate = 1 - (kept & live).sum().item() / live.sum().item()
        assert abs(rate - 0.5) < 0.05, rate  # thousands of live units: binomial sd about 0.01
        masks.append(kept | ~live)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[2], masks[3])  # towers draw apart


def test_model_parallel_training_step_matches_grouped():
    torch.manual_seed(0)
    grouped = build_model(small_cfg(dropout=0.0), 112).train()
    mp = model_parallel(grouped, CPU2).train()
    x, y = torch.randn(4, 3, 112, 112) * 30, torch.tensor([0, 3, 5, 9])
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in (grouped, mp)]
    for m, opt in zip((grouped, mp), opts, strict=True):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
    for name, p in grouped.named_parameters():
        layer, kind = name.split(".")
        halves = [getattr(t[layer], kind).grad for t in mp.towers]
        assert all(h is not None and h.abs().sum() > 0 for h in halves), name
        torch.testing.assert_close(torch.cat(halves, 0), p.grad, rtol=1e-4, atol=1e-6)
    for opt in opts:
        opt.step()
    after_mp, after_grouped = mp.state_dict(), grouped.state_dict()
    for key, value in after_grouped.items():
        torch.testing.assert_close(after_mp[key], value, rtol=1e-4, atol=1e-6)


def test_state_dicts_are_interchangeable():
    torch.manual_seed(0)
    a = build_model(small_cfg(), 112).eval()
    mp = model_parallel(a, CPU2).eval()
    sd = mp.state_dict()
    assert list(sd) == list(a.state_dict())
    assert {k: v.shape for k, v in sd.items()} == {k: v.shape for k, v in a.state_dict().items()}
    x = torch.randn(1, 3, 112, 112) * 30
    # grouped -> model parallel: a fresh (differently initialised) split model takes the grouped weights
    torch.manual_seed(1)
    b = build_model(small_cfg(), 112).eval()
    mp_b = model_parallel(b, CPU2).eval()
    assert not torch.allclose(mp_b(x), a(x))
    mp_b.load_state_dict(a.state_dict())
    torch.testing.assert_close(mp_b(x), a(x))
    # model parallel -> grouped
    torch.manual_seed(2)
    c = build_model(small_cfg(), 112).eval()
    c.load_state_dict(mp.state_dict())
    torch.testing.assert_close(c(x), mp(x))


def test_model_parallel_rejects_what_it_cannot_split():
    one_tower = build_model(small_cfg(layout="one-tower"), 112)
    with pytest.raises(UserError, match="layout is 'one-tower'"):
        model_parallel(one_tower, CPU2)
    mp = model_parallel(build_model(small_cfg(), 112), CPU2)
    sd = mp.state_dict()
    with pytest.raises(UserError, match="missing \\['fc8.bias'\\]"):
        mp.load_state_dict({k: v for k, v in sd.items() if k != "fc8.bias"})
    sd["fc6.weight"] = torch.zeros(3, 3)
    with pytest.raises(UserError, match="fc6.weight has shape \\(3, 3\\)"):
        mp.load_state_dict(sd)


def test_model_parallel_places_each_towers_half_on_its_device():
    # The meta device stands for a second device on a machine with one: placement is checked, not the maths.
    torch.manual_seed(0)
    grouped = build_model(small_cfg(), 112)
    mp = model_parallel(grouped, ("cpu", "meta"))
    assert mp.devices == (torch.device("cpu"), torch.device("meta")) and mp.crop_size == 112
    for name in ("conv1", "conv3", "fc6", "fc8"):
        assert mp.towers[0][name].weight.device.type == "cpu" and mp.towers[1][name].bias.device.type == "meta"
    half = grouped.conv1.weight.shape[0] // 2
    torch.testing.assert_close(mp.towers[0]["conv1"].weight, grouped.conv1.weight[:half])


def test_model_parallel_state_dict_is_torchs_plain_tensors_under_any_prefix():
    torch.manual_seed(0)
    grouped = build_model(small_cfg(), 112)
    mp = model_parallel(grouped, CPU2)
    sd = mp.state_dict()
    assert not any(v.requires_grad for v in sd.values())  # detached, as nn.Module.state_dict gives them
    kept = mp.state_dict(keep_vars=True)["fc8.weight"]
    assert kept.requires_grad and torch.equal(kept.detach(), grouped.fc8.weight)
    into = {}
    assert mp.state_dict(destination=into, prefix="module.") is into
    assert list(into) == [f"module.{k}" for k in grouped.state_dict()]
    assert all(torch.equal(into[f"module.{k}"], v) for k, v in grouped.state_dict().items())


def test_model_parallel_load_reports_and_refuses_keys_as_torch_does():
    torch.manual_seed(0)
    mp = model_parallel(build_model(small_cfg(), 112), CPU2)
    sd = dict(mp.state_dict())
    extra = {**sd, "fc9.weight": torch.zeros(1)}
    with pytest.raises(UserError, match=r"^state_dict does not fit the two-tower AlexNet: missing \[\], unexpected "
                                        r"\['fc9.weight'\]; load a checkpoint saved from the same recipe's model$"):
        mp.load_state_dict(extra)
    torch.manual_seed(1)
    fresh = model_parallel(build_model(small_cfg(), 112), CPU2)
    del extra["fc8.bias"]
    keys = fresh.load_state_dict(extra, strict=False)
    assert keys.missing_keys == ["fc8.bias"] and keys.unexpected_keys == ["fc9.weight"]
    assert torch.equal(fresh.state_dict()["fc6.weight"], sd["fc6.weight"])
    assert fresh.load_state_dict(sd) == ([], [])
    sd["fc6.weight"] = torch.zeros(3, 3)
    with pytest.raises(UserError, match=r"has shape \(3, 3\), the model needs \(64, 256\); load a checkpoint "
                                        r"saved from the same recipe's model$"):
        fresh.load_state_dict(sd)


def test_model_parallel_refusals_say_what_to_do():
    with pytest.raises(UserError, match=r"^model_parallel needs the AlexNet from build_model \(unwrap DDP or "
                                        r"torch.compile first\)$"):
        model_parallel(torch.nn.Linear(2, 2), CPU2)
    with pytest.raises(UserError, match=r"layout is 'one-tower': use --set model.layout=two-tower or data "
                                        r"parallelism$"):
        model_parallel(build_model(small_cfg(layout="one-tower"), 112), CPU2)
    with pytest.raises(UserError, match=r"^model parallelism normalises each tower's maps on its own GPU \(§3.3\); "
                                        r"this model's LRN crosses the towers \(model.lrn_across_towers, as "
                                        r"Caffe's\): use data parallelism$"):
        model_parallel(build_model(small_cfg(lrn_across_towers=True), 112), CPU2)
    with pytest.raises(UserError, match="^model parallelism needs exactly two devices, got 3$"):
        model_parallel(build_model(small_cfg(), 112), (*CPU2, torch.device("cpu")))


# ------------------------------------------------------------------------------------------ summary and CLI
def test_summary_counts_and_forward_macs():
    cfg = load_recipe("paper").model
    rows = summarize(meta_model(cfg, 224), 224)
    by_name = {r.name: r for r in rows}
    assert by_name["conv1"].neurons == 55 * 55 * 96 == 290_400  # the paper lists 253,440 (§3.5)
    assert by_name["conv2"].neurons == 186_624 and by_name["conv5"].neurons == 43_264
    assert by_name["conv1"].macs == 55 * 55 * 96 * 11 * 11 * 3
    assert by_name["conv2"].macs == 27 * 27 * 256 * 5 * 5 * 96 // 2
    macs_by_hand = (
        55 * 55 * 96 * 11 * 11 * 3
        + 27 * 27 * 256 * 5 * 5 * 48
        + 13 * 13 * 384 * 3 * 3 * 256
        + 13 * 13 * 384 * 3 * 3 * 192
        + 13 * 13 * 256 * 3 * 3 * 192
        + 9216 * 4096
        + 4096 * 4096
        + 4096 * 1000
    )
    assert forward_macs(cfg, 224) == macs_by_hand
    totals = summary_totals(rows)
    assert totals["params"] == 60_965_224
    assert totals["neurons"] == 290_400 + 186_624 + 64_896 + 64_896 + 43_264 + 4096 + 4096 + 1000
    tiny = load_recipe("tiny")
    real = build_model(tiny.model, 112)
    assert summary_totals(summarize(real, 112))["params"] == n_params(real)
    assert isinstance(real, AlexNet) and real.training  # summarize restores the mode


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    captured = capsys.readouterr()
    return exc.value.code, captured.out, captured.err


def test_cli_model_summary_json_reports_the_paper_count(capsys):
    code, out, _ = _cli(["model", "summary", "--recipe", "paper", "--json"], capsys)
    assert code in (0, None)
    report = json.loads(out)
    assert report["total_params"] == 60_965_224 and report["matches_paper_params"] and report["paper_net"]
    assert report["paper"]["neurons_stated"] == 650_000
    assert report["paper"]["neurons_per_layer"]["conv1"] == 253_440
    assert [r["name"] for r in report["layers"] if r["kind"] == "conv"] == [f"conv{i}" for i in range(1, 6)]


def test_cli_model_summary_human_and_errors(capsys):
    code, out, err = _cli(["model", "summary", "--recipe", "tiny", "--set", "model.width=0.5"], capsys)
    assert code in (0, None) and out == ""
    assert "multiply-adds per image" in err and "60,965,224" in err
    code, _, err = _cli(["model", "summary", "--set", "model.widht=2"], capsys)
    assert code == 2 and "did you mean 'width'" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_parallel_across_a_gpu_and_the_cpu():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    grouped = build_model(small_cfg(dropout=0.0), 112)
    mp = model_parallel(grouped, (torch.device("cuda"), torch.device("cpu")))
    assert mp.towers[0]["conv1"].weight.is_cuda and not mp.towers[1]["conv1"].weight.is_cuda
    x, y = torch.randn(2, 3, 112, 112) * 30, torch.tensor([1, 2])
    out = mp(x)
    assert out.is_cuda
    torch.testing.assert_close(out.cpu(), grouped(x), rtol=1e-4, atol=1e-4)
    features = mp.forward_features(x)
    assert features.is_cuda
    torch.testing.assert_close(features.cpu(), grouped.forward_features(x), rtol=1e-4, atol=1e-4)
    assert all(v.is_cuda for v in mp.state_dict().values())  # both towers' halves joined on devices[0]
    torch.nn.functional.cross_entropy(out, y.cuda()).backward()
    assert all(p.grad is not None for p in mp.parameters())


# ------------------------------------------------------------------------------------------ layer order (§3.1-§3.5, §4.2)
def _capture(model, names):
    """Inputs and outputs of the named submodules during one forward pass."""
    seen, handles = {}, []
    for name in names:
        def hook(mod, inp, out, name=name):
            seen[name] = (inp[0].detach().clone(), out.detach().clone())
        handles.append(getattr(model, name).register_forward_hook(hook))
    return seen, handles


LAYERS_IN_ORDER = ["conv1", "norm1", "pool1", "conv2", "norm2", "pool2", "conv3", "conv4", "conv5", "pool5",
                   "fc6", "drop6", "fc7", "drop7", "fc8"]


def test_relu_after_every_layer_then_lrn_then_pool():
    # §3.1: ReLU after every conv and FC layer; §3.3/§3.4: conv → ReLU → LRN → max-pool after conv1 and conv2;
    # conv5 → ReLU → max-pool; §4.2: dropout on fc6's and fc7's outputs.
    torch.manual_seed(0)
    model = build_model(small_cfg(), 112).eval()
    seen, handles = _capture(model, LAYERS_IN_ORDER)
    model(torch.randn(2, 3, 112, 112) * 50)
    for h in handles:
        h.remove()
    relu = torch.relu
    out = {n: seen[n][1] for n in seen}
    inp = {n: seen[n][0] for n in seen}
    torch.testing.assert_close(inp["norm1"], relu(out["conv1"]))
    torch.testing.assert_close(inp["pool1"], out["norm1"])
    torch.testing.assert_close(inp["conv2"], out["pool1"])
    torch.testing.assert_close(inp["norm2"], relu(out["conv2"]))
    torch.testing.assert_close(inp["pool2"], out["norm2"])
    torch.testing.assert_close(inp["conv3"], out["pool2"])
    torch.testing.assert_close(inp["conv4"], relu(out["conv3"]))
    torch.testing.assert_close(inp["conv5"], relu(out["conv4"]))
    torch.testing.assert_close(inp["pool5"], relu(out["conv5"]))
    torch.testing.assert_close(inp["fc6"], torch.flatten(out["pool5"], 1))
    torch.testing.assert_close(inp["drop6"], relu(out["fc6"]))
    torch.testing.assert_close(inp["fc7"], out["drop6"])  # eval: dropout is the identity
    torch.testing.assert_close(inp["drop7"], relu(out["fc7"]))
    torch.testing.assert_close(inp["fc8"], out["drop7"])


def test_dropout_halves_fc6_and_fc7_outputs_in_training_only():
    # §4.2: each hidden neuron of fc6/fc7 is zeroed with probability 0.5 in training; at test time all are used
    # (inverted dropout: survivors are scaled by 1/(1-p) = 2 in training, the same function in expectation).
    torch.manual_seed(0)
    model = build_model(small_cfg(fc_width=2048), 112)
    x = torch.randn(8, 3, 112, 112) * 50
    seen_eval, handles = _capture(model.eval(), ["fc7", "fc8"])
    model(x)
    for h in handles:
        h.remove()
    seen_train, handles = _capture(model.train(), ["fc6", "fc7", "fc8"])
    model(x)
    for h in handles:
        h.remove()
    # fc6's output is the same in both modes (no dropout before it), so fc7's input shows the mask exactly.
    train_in, eval_in = seen_train["fc7"][0], seen_eval["fc7"][0]
    alive = eval_in > 0
    kept = train_in[alive] != 0
    assert abs(kept.double().mean().item() - 0.5) < 0.03
    torch.testing.assert_close(train_in[alive][kept], 2 * eval_in[alive][kept])
    torch.testing.assert_close(train_in[~alive], eval_in[~alive])  # ReLU's zeros stay zero
    # fc8's input: fc7's ReLU output after its own dropout, so again about half of it is zero.
    fc8_in = seen_train["fc8"][0]
    assert (fc8_in == 0).double().mean().item() > 0.45  # about half dropped (plus ReLU's zeros)


# ------------------------------------------------------------------------------------------ paper-scaled init
def test_paper_scaled_is_the_paper_init_on_the_paper_net(paper_net):
    torch.manual_seed(3)
    init_weights(paper_net, "paper")
    paper = {k: v.clone() for k, v in paper_net.state_dict().items()}
    torch.manual_seed(3)
    init_weights(paper_net, "paper-scaled")
    for k, v in paper_net.state_dict().items():
        assert torch.equal(v, paper[k]), k


def test_paper_scaled_keeps_the_full_nets_std_per_fan_in():
    # §3.5's fan-ins of the two-GPU net, written out: kernel size × input maps on the same GPU.
    paper_fan_in = {"conv1": 11 * 11 * 3, "conv2": 5 * 5 * 48, "conv3": 3 * 3 * 256, "conv4": 3 * 3 * 192,
                    "conv5": 3 * 3 * 192, "fc6": 256 * 6 * 6, "fc7": 4096, "fc8": 4096}
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(load_recipe("tiny").model, init="paper-scaled"), 112)
    for name, fan in paper_fan_in.items():
        w = getattr(model, name).weight.detach().double()
        fan_in = w[0].numel()
        std = 0.01 * math.sqrt(fan / fan_in)
        assert abs(w.std().item() / std - 1) < 5 / math.sqrt(2 * w.numel()) + 1e-3, name
        assert torch.all(getattr(model, name).bias == (1.0 if name in BIAS_ONE else 0.0)), name


# ------------------------------------------------------------------------------------------ geometry's edges
def test_feature_sizes_name_every_stage_with_the_papers_sides():
    from alexrepro.nets.alexnet import feature_sizes

    # §3.5 with padding 2 on conv1: 224 → 55 → 27 → 27 → 13 → 13 → 13 → 13 → 6
    assert feature_sizes(load_recipe("paper").model, 224) == {
        "conv1": 55, "pool1": 27, "conv2": 27, "pool2": 13, "conv3": 13, "conv4": 13, "conv5": 13, "pool5": 6}


def test_conv1_padding_comes_from_the_recipe():
    from alexrepro.nets.alexnet import conv_geometry, feature_sizes

    cfg = dataclasses.replace(load_recipe("paper").model, conv1_padding=0)  # Caffe's 227 crops, no padding
    assert conv_geometry(cfg)["conv1"] == (11, 4, 0)
    assert feature_sizes(cfg, 227)["conv1"] == (227 - 11) // 4 + 1 == 55
    model = AlexNet(dataclasses.replace(small_cfg(), conv1_padding=0), 112)
    assert model.conv1.padding == (0, 0) and model.conv2.padding == (2, 2)


def test_the_narrowest_net_keeps_two_kernels_per_layer():
    cfg = dataclasses.replace(load_recipe("paper").model, width=0.001)  # 96·0.001 rounds to 0 kernels
    assert conv_channels(cfg) == (2, 2, 2, 2, 2)  # one per tower


def test_crop_sizes_below_one_and_too_small_for_the_net_are_told_apart():
    cfg = small_cfg()
    with pytest.raises(UserError, match="^crop size must be positive, got 0$"):
        build_model(cfg, 0)
    with pytest.raises(UserError, match=r"^crop size 1 is too small for this net: nothing is left after conv1; "
                                        r"use a larger data.crop_size \(the tiny recipe uses 112\)$"):
        build_model(cfg, 1)
    with pytest.raises(UserError, match="^unknown init scheme 'he'; use one of paper, caffe, paper-scaled$"):
        init_weights(build_model(cfg, 112), "he")


def test_caffes_lrn_crosses_the_towers_boundary_and_the_papers_does_not():
    torch.manual_seed(0)
    x = torch.rand(1, 24, 5, 5) + 0.5  # conv1 of the tiny net: 24 maps, towers of 12
    for across, crosses in ((True, True), (False, False)):
        model = AlexNet(small_cfg(lrn_across_towers=across), 112)
        bumped = x.clone()
        bumped[:, 11] *= 4  # the last map of tower 1
        changed = (model.norm1(bumped) - model.norm1(x)).abs().amax(dim=(0, 2, 3))
        assert bool(changed[12] > 0) == crosses  # the first map of tower 2 sees it only across the boundary
        assert bool(changed[10] > 0)  # its own tower always does
