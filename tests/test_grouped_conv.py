"""conv2/conv4/conv5's towers (§3.2) as one grouped convolution or as one convolution per tower (run.grouped_conv).

Both forms are checked against what §3.2 says the layer is, not against each other only: each output map
sees exactly its own tower's input maps, through that tower's half of the one weight tensor.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from alexrepro.errors import UserError
from alexrepro.nets import build_net
from alexrepro.nets.alexnet import CONV_FORMS, GROUPED, TowerConv2d, set_grouped_conv
from alexrepro.recipe_reader import load_recipe
from alexrepro.training.step import build_step

TINY = ["model.num_classes=4", "model.width=0.125", "model.fc_width=32"]


def tower_layer(form, dtype=torch.float64):
    torch.manual_seed(0)
    layer = TowerConv2d(8, 6, 3, padding=1, groups=2, dtype=dtype)
    return set_grouped_conv(layer, form)


@pytest.mark.parametrize("form", CONV_FORMS)
def test_each_tower_is_a_plain_convolution_of_its_own_maps(form):
    layer = tower_layer(form)
    x = torch.randn(2, 8, 5, 5, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    w, b = layer.weight, layer.bias  # 6 × 4 × 3 × 3: tower t owns output maps 3t..3t+2 and reads input maps 4t..4t+3
    for t in range(2):
        want = F.conv2d(x[:, 4 * t:4 * t + 4], w[3 * t:3 * t + 3], b[3 * t:3 * t + 3], padding=1)
        assert torch.allclose(y[:, 3 * t:3 * t + 3], want, rtol=0, atol=1e-12)
    # and nothing crosses: the other tower's input maps move none of a tower's outputs
    x2 = x.detach().clone()
    x2[:, 4:] += 1.0
    assert torch.equal(layer(x2)[:, :3], y[:, :3].detach()) and not torch.equal(layer(x2)[:, 3:], y[:, 3:].detach())
    y.square().sum().backward()  # gradients reach the one weight tensor, both towers' halves
    assert layer.weight.grad.shape == (6, 4, 3, 3) and bool((layer.weight.grad[:3] != 0).any())
    assert bool((layer.weight.grad[3:] != 0).any()) and bool((layer.bias.grad != 0).all())


class ConvCalls(TorchDispatchMode):
    """Records the groups argument of every convolution the dispatcher runs."""

    def __init__(self):
        super().__init__()
        self.groups = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.groups.append(args[-1])
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("form", "calls"), [("grouped", [2]), ("split", [1, 1])])
def test_each_form_runs_its_own_kernels(form, calls):
    with ConvCalls() as seen:
        tower_layer(form)(torch.randn(1, 8, 5, 5, dtype=torch.float64))
    assert seen.groups == calls


def test_the_forms_are_one_function_with_the_same_parameters():
    grouped, split = tower_layer("grouped"), tower_layer("split")
    assert grouped.state_dict().keys() == split.state_dict().keys() == {"weight", "bias"}
    x = torch.randn(3, 8, 7, 7, dtype=torch.float64)
    xg, xs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    yg, ys = grouped(xg), split(xs)
    g = torch.randn_like(yg)
    yg.backward(g)
    ys.backward(g)
    for a, b in ((yg, ys), (xg.grad, xs.grad), (grouped.weight.grad, split.weight.grad), (grouped.bias.grad, split.bias.grad)):
        assert torch.allclose(a, b, rtol=0, atol=1e-12)
    assert "form='split'" in repr(split)
    for kw in ({"bias": False}, {"dilation": 2, "stride": 2}):  # not the net's layers, but any grouped conv
        plain = torch.nn.Conv2d(8, 6, 3, padding=2, groups=2, dtype=torch.float64, **kw)
        other = set_grouped_conv(TowerConv2d(8, 6, 3, padding=2, groups=2, dtype=torch.float64, **kw), "split")
        other.load_state_dict(plain.state_dict())
        assert torch.allclose(other(x), plain(x), rtol=0, atol=1e-12)
    with pytest.raises(UserError, match="unknown grouped convolution form 'halves'; use one of grouped, split"):
        set_grouped_conv(split, "halves")


def test_the_net_in_either_form_gives_the_same_scores_and_weights_keys():
    cfg = load_recipe("tiny", TINY).model
    torch.manual_seed(1)
    grouped = build_net(cfg, 112)
    split = set_grouped_conv(build_net(cfg, 112), "split")
    split.load_state_dict(grouped.state_dict())
    assert [n for n, m in grouped.named_modules() if isinstance(m, TowerConv2d)] == list(GROUPED)
    assert grouped.state_dict().keys() == split.state_dict().keys()
    grouped.eval()
    split.eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        a, b = grouped(x), split(x)
    assert float((a - b).abs().max() / a.abs().max()) < 1e-5  # float32: different kernels, rounding apart


def test_the_run_option_reaches_the_net_and_is_checked():
    assert load_recipe("tiny").run.grouped_conv == "grouped"
    for devices in (None, (torch.device("cpu"), torch.device("cpu"))):  # one device, and §3.2's two towers
        model = build_step(load_recipe("tiny", [*TINY, "run.grouped_conv=split"]), torch.device("cpu"),
                           model_devices=devices).model
        forms = {m.form for m in model.modules() if isinstance(m, TowerConv2d)}
        # the model-parallel net holds each tower's convolutions as plain ones: nothing left to split
        assert forms == ({"split"} if devices is None else set())
        assert model(torch.zeros(1, 3, 112, 112)).shape == (1, 4)
    one_gpu = build_net(load_recipe("one-gpu").model, 224)  # §3.5's one-GPU net has no towers
    assert not any(isinstance(m, TowerConv2d) for m in one_gpu.modules())
    with pytest.raises(UserError, match="run.grouped_conv must be one of 'grouped', 'split'"):
        load_recipe("tiny", ["run.grouped_conv=halves"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_forms_agree_on_cuda(channels_last, monkeypatch):
    # cuDNN picks other kernels for the two forms: the same function up to float32 rounding (TF32 off), and
    # within bf16's precision under autocast; gradients reach the one weight tensor in both
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    cfg = load_recipe("tiny", TINY).model
    torch.manual_seed(3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    grouped = build_net(cfg, 112).cuda().to(memory_format=fmt).eval()
    split = set_grouped_conv(build_net(cfg, 112), "split").cuda().to(memory_format=fmt).eval()
    split.load_state_dict(grouped.state_dict())
    x = torch.randn(4, 3, 112, 112, device="cuda").contiguous(memory_format=fmt)
    for dtype, tol in ((None, 1e-4), (torch.bfloat16, 3e-2)):
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            a, b = grouped(x), split(x)
        assert float((a - b).detach().abs().max() / a.detach().abs().max()) < tol, dtype
        a.float().sum().backward()
        b.float().sum().backward()
        wa, wb = grouped.conv2.weight.grad, split.conv2.weight.grad
        assert float((wa - wb).abs().max() / wa.abs().max()) < tol, dtype
        grouped.zero_grad()
        split.zero_grad()
