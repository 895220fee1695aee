"""LRN (§3.3): b = a / (k + α' Σ a²)^β over n adjacent maps, checked against the formula written out in loops."""

from types import SimpleNamespace

import pytest
import torch

from alexrepro.errors import UserError
from alexrepro.nets.lrn import LocalResponseNorm, local_response_norm

K, N, ALPHA, BETA = 2.0, 5, 1e-4, 0.75  # §3.3 as printed


def lrn_by_loops(
    x: torch.Tensor, n: int, alpha_prime: float, beta: float, k: float, groups: int
) -> torch.Tensor:
    """The formula of §3.3 with explicit loops over channels: the sum runs over channels max(lo, c - n/2) ..
    min(hi, c + n/2), where [lo, hi] is the channel range of c's tower (the whole range when groups = 1)."""
    channels = x.shape[1]
    per_group = channels // groups
    out = []
    for c in range(channels):
        lo_tower = (c // per_group) * per_group
        hi_tower = lo_tower + per_group - 1
        total = torch.zeros_like(x[:, 0])
        for j in range(max(lo_tower, c - n // 2), min(hi_tower, c + n // 2) + 1):
            total = total + x[:, j] ** 2
        out.append(x[:, c] / (k + alpha_prime * total) ** beta)
    return torch.stack(out, 1)


def activations(channels: int = 8, scale: float = 30.0, seed: int = 0) -> torch.Tensor:
    # Large activations so that α Σ a² is comparable to k (30² · 5 · 1e-4 ≈ 0.45 against k = 2).
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, channels, 3, 4, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("size", [1, 3, 5])
def test_printed_convention_is_the_formula_with_alpha(size):
    x = activations()
    got = local_response_norm(x, size, ALPHA, BETA, K, "printed")
    torch.testing.assert_close(got, lrn_by_loops(x, size, ALPHA, BETA, K, groups=1))


@pytest.mark.parametrize("size", [3, 5])
def test_divided_by_n_convention_is_the_formula_with_alpha_over_n(size):
    x = activations()
    got = local_response_norm(x, size, ALPHA, BETA, K, "divided-by-n")
    torch.testing.assert_close(got, lrn_by_loops(x, size, ALPHA / size, BETA, K, groups=1))
    printed = local_response_norm(x, size, ALPHA, BETA, K, "printed")
    assert not torch.allclose(got, printed, rtol=1e-3, atol=0)


def test_conventions_match_pytorch_as_paper_md_states():
    # PAPER.md: the printed formula is nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2), and
    # PyTorch's own α = 1e-4 is the divided-by-n reading.
    x = activations().float()
    torch.testing.assert_close(
        local_response_norm(x, N, ALPHA, BETA, K, "printed"),
        torch.nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)(x),
    )
    torch.testing.assert_close(
        local_response_norm(x, N, ALPHA, BETA, K, "divided-by-n"),
        torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(x),
    )


@pytest.mark.parametrize("convention, alpha_prime", [("printed", ALPHA), ("divided-by-n", ALPHA / N)])
def test_two_towers_never_share_a_neighbourhood(convention, alpha_prime):
    # 8 channels in two towers of 4: channels 3 and 4 sit on either side of the tower boundary.
    x = activations(channels=8)
    towers = local_response_norm(x, N, ALPHA, BETA, K, convention, groups=2)
    torch.testing.assert_close(towers, lrn_by_loops(x, N, alpha_prime, BETA, K, groups=2))
    whole = local_response_norm(x, N, ALPHA, BETA, K, convention, groups=1)
    torch.testing.assert_close(whole, lrn_by_loops(x, N, alpha_prime, BETA, K, groups=1))
    # With n = 5 the windows of channels 2..5 reach across the boundary; those of 0, 1, 6, 7 do not.
    for c in (0, 1, 6, 7):
        torch.testing.assert_close(towers[:, c], whole[:, c])
    for c in (2, 3, 4, 5):
        assert not torch.allclose(towers[:, c], whole[:, c], rtol=1e-4, atol=0), c
    # The boundary channel 3 of tower 1 normalises over channels 1, 2, 3 only.
    expected = x[:, 3] / (K + alpha_prime * (x[:, 1] ** 2 + x[:, 2] ** 2 + x[:, 3] ** 2)) ** BETA
    torch.testing.assert_close(towers[:, 3], expected)


def test_gradient_matches_the_written_out_formula():
    x1 = activations(channels=6).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    w = torch.randn_like(x1)
    (local_response_norm(x1, N, ALPHA, BETA, K, "printed", groups=2) * w).sum().backward()
    (lrn_by_loops(x2, N, ALPHA, BETA, K, groups=2) * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_module_wraps_the_function_and_keeps_channels_last():
    x = activations().float().contiguous(memory_format=torch.channels_last)
    m = LocalResponseNorm(N, ALPHA, BETA, K, "divided-by-n", groups=2)
    torch.testing.assert_close(
        m(x), local_response_norm(x.contiguous(), N, ALPHA, BETA, K, "divided-by-n", 2)
    )
    assert "groups=2" in repr(m)


def test_bad_arguments_are_user_errors():
    x = activations(channels=6)
    with pytest.raises(UserError, match="groups=4 must divide the 6 channels"):
        local_response_norm(x, N, ALPHA, BETA, K, "printed", groups=4)
    with pytest.raises(UserError, match="unknown LRN convention 'caffe'"):
        local_response_norm(x, N, ALPHA, BETA, K, "caffe")
    with pytest.raises(UserError, match="unknown LRN convention"):
        LocalResponseNorm(N, ALPHA, BETA, K, "torch")
    with pytest.raises(UserError, match="N×C×H×W"):
        local_response_norm(x[0], N, ALPHA, BETA, K)


@pytest.mark.parametrize("size, groups", [(2, 1), (4, 2), (5, 2), (7, 2), (9, 1)])
def test_written_out_backward_agrees_with_the_forward(size, groups):
    # The backward is written by hand (∂b_i/∂a_j summed over the windows that hold i, the window
    # transposed for even sizes); gradcheck compares it with finite differences of the forward, also
    # for windows wider than a tower's 3 channels.
    x = activations(channels=6, scale=20.0).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: local_response_norm(t, size, 1e-3, BETA, K, "printed", groups), (x,))


def test_bf16_and_channels_last_activations_keep_their_dtype_and_layout():
    x = activations(channels=8).float()
    ref = x.clone().requires_grad_(True)
    local_response_norm(ref, N, ALPHA, BETA, K, "printed", 2).sum().backward()
    half = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = local_response_norm(half, N, ALPHA, BETA, K, "printed", 2)
    y.sum().backward()
    assert y.dtype == torch.bfloat16 and half.grad.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.float(), local_response_norm(x, N, ALPHA, BETA, K, "printed", 2), rtol=2e-2, atol=1e-1)
    torch.testing.assert_close(half.grad.float(), ref.grad, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("size, groups", [(4, 2), (5, 1), (5, 2)])
def test_the_benchmarks_autograd_baseline_is_the_same_lrn(size, groups):
    from alexrepro.nets.lrn import local_response_norm_autograd

    x1 = activations(channels=6).requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    w = torch.randn_like(x1)
    y1 = local_response_norm(x1, size, ALPHA, BETA, K, "divided-by-n", groups)
    y2 = local_response_norm_autograd(x2, size, ALPHA, BETA, K, "divided-by-n", groups)
    torch.testing.assert_close(y1, y2)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lrn_on_cuda_in_bf16_channels_last_matches_the_cpu():
    x = activations(channels=16, scale=20.0).float()
    ref = x.clone().requires_grad_(True)
    local_response_norm(ref, N, ALPHA, BETA, K, "printed", 2).sum().backward()
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        xg = x.cuda().to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = local_response_norm(xg, N, ALPHA, BETA, K, "printed", 2)
        y.float().sum().backward()
        assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.float().cpu(), local_response_norm(x, N, ALPHA, BETA, K, "printed", 2),
                                   rtol=tol, atol=tol * 10)
        torch.testing.assert_close(xg.grad.float().cpu(), ref.grad, rtol=tol, atol=tol)


def cmrnorm_kfcnorm(x: torch.Tensor, size: int, scale: float, pow_: float, min_div: float) -> torch.Tensor:
    """cuda-convnet2's cross-map response norm written out as its kernel computes it (kFCNorm in
    cudaconv3/src/conv_util.cu, with layer.py's `scale /= size` for a cmrnorm layer): for map f the sum of
    squares over maps startF = f - size/2 (C integer division) to startF + size - 1, clipped to the maps
    that exist; denominator minDiv + (scale / size) · sum; output a · denominator^(-pow)."""
    channels = x.shape[1]
    out = []
    for f in range(channels):
        start = f - size // 2
        total = sum(x[:, j] ** 2 for j in range(max(0, start), min(channels, start + size)))
        out.append(x[:, f] * (min_div + (scale / size) * total) ** (-pow_))
    return torch.stack(out, 1)


def test_cuda_convnet_recipe_computes_krizhevskys_imagenet_cmrnorm():
    # layers/layer-params-223-ce2-1gpu.cfg of cuda-convnet2 (Krizhevsky's ImageNet net): [rnorm1] and
    # [rnorm2] have scale=0.0001, pow=0.75, minDiv=2, size=5 (layers-223-1gpu.cfg). See
    # docs/FAITHFULNESS.md, "LRN in Krizhevsky's released code".
    from alexrepro.nets.alexnet import _norm
    from alexrepro.recipe_reader import load_recipe

    cfg = load_recipe("cuda-convnet").model
    x = activations(channels=10)
    torch.testing.assert_close(_norm(cfg, groups=1)(x), cmrnorm_kfcnorm(x, 5, 1e-4, 0.75, 2.0))
    # The hard-coded 1 of the 2011 cuda-convnet kernel (and of minDiv's default) is another function.
    assert not torch.allclose(_norm(cfg, groups=1)(x), cmrnorm_kfcnorm(x, 5, 1e-4, 0.75, 1.0), rtol=1e-3, atol=0)


def test_defaults_are_the_printed_reading_over_all_maps():
    # §3.3 as printed, one window over all the maps, unless a caller says otherwise (8 maps: two towers of 4
    # would change channels 2..5, the divided-by-n reading every channel).
    from alexrepro.nets.lrn import local_response_norm_autograd

    x = activations(channels=8)
    expected = lrn_by_loops(x, N, ALPHA, BETA, K, groups=1)
    torch.testing.assert_close(local_response_norm(x, N, ALPHA, BETA, K), expected)
    torch.testing.assert_close(LocalResponseNorm(N, ALPHA, BETA, K)(x), expected)
    torch.testing.assert_close(local_response_norm_autograd(x, N, ALPHA, BETA, K), expected)
    assert repr(LocalResponseNorm(N, ALPHA, BETA, K)) == (
        "LocalResponseNorm(size=5, alpha=0.0001, beta=0.75, k=2.0, convention='printed', groups=1, kernel='auto')")


def test_half_precision_activations_are_normalised_in_float32():
    # Under autocast the activations arrive in bf16: the window sums and the power are taken in float32 and
    # only the result is rounded, so it is the float32 formula of the same inputs, rounded once.
    x = activations(channels=8).to(torch.bfloat16)
    y = local_response_norm(x, N, ALPHA, BETA, K, "printed", 2)
    expected = lrn_by_loops(x.double(), N, ALPHA, BETA, K, groups=2).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)


def test_sizes_below_one_and_unknown_names_are_one_line_errors():
    x = activations(channels=6)
    with pytest.raises(UserError, match="^LRN size must be at least 1, got 0$"):
        local_response_norm(x, 0, ALPHA, BETA, K)
    with pytest.raises(UserError, match="^unknown LRN convention 'caffe'; use one of printed, divided-by-n$"):
        local_response_norm(x, N, ALPHA, BETA, K, "caffe")
    with pytest.raises(UserError, match="^unknown LRN kernel 'cuda'; use one of auto, triton, torch$"):
        local_response_norm(x, N, ALPHA, BETA, K, kernel="cuda")
    with pytest.raises(UserError, match="unknown LRN kernel 'cuda'"):
        LocalResponseNorm(N, ALPHA, BETA, K, kernel="cuda")


# ------------------------------------------------------------------------------------------ choosing a kernel
class FakeTriton:
    """Stands in for alexrepro/nets/lrn_triton.py on a machine without CUDA: it says why it cannot run (as the
    real one does for k ≤ 0 or α' < 0, on `why`), and its "fused kernel" is the formula, recording each call."""

    def __init__(self, why: str | None = None) -> None:
        self.why, self.calls = why, []

    def unsupported(self, x, alpha, k):
        return self.why if (k > 0 and alpha >= 0) else "k ≤ 0 or α < 0"

    def fused_local_response_norm(self, x, size, alpha_prime, beta, k, groups):
        self.calls.append((size, alpha_prime, beta, k, groups))
        return lrn_by_loops(x, size, alpha_prime, beta, k, groups)


class CudaLike:
    """What the kernel choice reads of a tensor: is it on CUDA."""

    is_cuda = True


def test_the_kernel_choice_follows_the_recipes_name(monkeypatch):
    from alexrepro.nets import lrn

    monkeypatch.setattr(lrn, "lrn_triton", FakeTriton())
    cuda, cpu = CudaLike(), activations()
    assert lrn._runs_triton(cuda, ALPHA, K, "auto") and lrn._runs_triton(cuda, ALPHA, K, "triton")
    assert not lrn._runs_triton(cuda, ALPHA, K, "torch")  # "torch" always takes the torch path
    assert not lrn._runs_triton(cpu, ALPHA, K, "auto")  # "auto" takes Triton only for CUDA tensors
    assert lrn._runs_triton(cpu, ALPHA, K, "triton")  # "triton" where it says it can run (the interpreter)
    assert not lrn._runs_triton(cuda, ALPHA, -1.0, "auto")  # what it cannot do goes to the torch path
    with pytest.raises(UserError, match="^LRN kernel 'triton': k ≤ 0 or α < 0; use kernel 'auto' or 'torch'"):
        lrn._runs_triton(cuda, ALPHA, -1.0, "triton")
    monkeypatch.setattr(lrn, "lrn_triton", FakeTriton("not on this device"))
    assert not lrn._runs_triton(cuda, ALPHA, K, "auto")
    with pytest.raises(UserError, match="LRN kernel 'triton': not on this device"):
        lrn._runs_triton(cuda, ALPHA, K, "triton")
    monkeypatch.setattr(lrn, "lrn_triton", None)
    assert not lrn._runs_triton(cuda, ALPHA, K, "auto")
    with pytest.raises(UserError, match="LRN kernel 'triton': Triton is not installed; use kernel 'auto'"):
        lrn._runs_triton(cuda, ALPHA, K, "triton")


@pytest.mark.parametrize("convention, alpha_prime", [("printed", ALPHA), ("divided-by-n", ALPHA / N)])
def test_the_triton_kernel_gets_the_same_lrn(monkeypatch, convention, alpha_prime):
    # The fused kernel is handed exactly the function the torch path computes: α' of the convention, the
    # size, β, k and the towers.
    from alexrepro.nets import lrn

    fake = FakeTriton()
    monkeypatch.setattr(lrn, "lrn_triton", fake)
    x = activations(channels=8)
    got = local_response_norm(x, N, ALPHA, BETA, K, convention, groups=2, kernel="triton")
    assert fake.calls == [(N, alpha_prime, BETA, K, 2)]
    torch.testing.assert_close(got, lrn_by_loops(x, N, alpha_prime, BETA, K, groups=2))
    module = LocalResponseNorm(N, ALPHA, BETA, K, convention, groups=2, kernel="triton")
    torch.testing.assert_close(module(x), got)
    assert len(fake.calls) == 2
    LocalResponseNorm(N, ALPHA, BETA, K, convention, groups=2, kernel="torch")(x)
    assert len(fake.calls) == 2


def test_set_lrn_kernel_sets_every_lrn_and_refuses_unknown_names():
    from alexrepro.nets.alexnet import build_model
    from alexrepro.nets.lrn import set_lrn_kernel
    from alexrepro.recipe_reader import load_recipe

    net = build_model(load_recipe("tiny").model, 112)
    assert set_lrn_kernel(net, "torch") is net
    kernels = [m.kernel for m in net.modules() if isinstance(m, LocalResponseNorm)]
    assert kernels == ["torch", "torch"]
    with pytest.raises(UserError, match="unknown LRN kernel 'fast'"):
        set_lrn_kernel(net, "fast")


def test_a_run_refuses_a_kernel_its_device_cannot_run(monkeypatch):
    from alexrepro.nets import lrn

    for kernel in ("auto", "torch"):
        lrn.check_kernel_device(kernel, "cpu")
        lrn.check_kernel_device(kernel, "cuda")
    with pytest.raises(UserError, match="unknown LRN kernel 'cuda'"):
        lrn.check_kernel_device("cuda", "cuda")
    monkeypatch.setattr(lrn, "lrn_triton", SimpleNamespace(runs_on=lambda device_type: device_type == "cuda"))
    lrn.check_kernel_device("triton", "cuda")
    with pytest.raises(UserError, match=r"^run.lrn_kernel = 'triton' runs on CUDA \(on the CPU only under "
                                        r"TRITON_INTERPRET=1\), not on cpu; use 'auto' or 'torch'$"):
        lrn.check_kernel_device("triton", "cpu")
    # Triton's CPU interpreter runs kernels on real tensors, never on torch.compile's fake ones
    monkeypatch.setattr(lrn, "lrn_triton", SimpleNamespace(runs_on=lambda device_type: True))
    lrn.check_kernel_device("triton", "cpu")
    lrn.check_kernel_device("triton", "cuda", compiled=True)
    lrn.check_kernel_device("torch", "cpu", compiled=True)
    with pytest.raises(UserError, match=r"^run.lrn_kernel = 'triton' under --compile runs on CUDA only \(Triton's "
                                        r"interpreter cannot run inside torch.compile\), not on cpu; drop --compile "
                                        r"or use 'auto' or 'torch'$"):
        lrn.check_kernel_device("triton", "cpu", compiled=True)
    monkeypatch.setattr(lrn, "lrn_triton", None)
    lrn.check_kernel_device("auto", "cuda")
    with pytest.raises(UserError, match=r"^run.lrn_kernel = 'triton' needs Triton \(pip install triton\); "
                                        r"use 'auto' or 'torch'$"):
        lrn.check_kernel_device("triton", "cuda")
