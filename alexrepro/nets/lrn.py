"""Local response normalization (§3.3) as a pure function, with the two readings of α and per-tower groups.

b[c] = a[c] / (k + α' Σ_{j} a[j]²)^β, the sum over the `size` channels centred on c at the same position,
clipped at the edges of the channel range (or of the tower's half when groups = 2). α' = α as printed in
§3.3 ("printed"), or α / size as in PyTorch, Caffe and cuda-convnet ("divided-by-n").

Two implementations of the same function, chosen by `kernel`: "torch" (`_LRN`: window sums as shifted
adds, the backward written out; any device and dtype) and "triton" (alexrepro/nets/lrn_triton.py: one
fused kernel forward and one backward, CUDA tensors in bf16, fp16 or fp32). "auto", the default, takes
the Triton kernel for the CUDA tensors it fits and the torch path for the rest (the CPU, float64, k ≤ 0
or α < 0, no Triton installed).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from alexrepro.errors import UserError

try:  # Triton ships with torch's Linux wheels; without it every LRN takes the torch path
    from alexrepro.nets import lrn_triton
except ImportError:
    lrn_triton = None

Convention = Literal["printed", "divided-by-n"]
CONVENTIONS: tuple[str, ...] = ("printed", "divided-by-n")
KERNELS: tuple[str, ...] = ("auto", "triton", "torch")  # run.lrn_kernel in the recipe


def effective_alpha(alpha: float, size: int, convention: str) -> float:
    """The α' that multiplies the sum of squares under a convention."""
    if convention == "printed":
        return alpha  # §3.3 as printed: α multiplies Σ a²
    if convention == "divided-by-n":
        return alpha / size  # PyTorch / Caffe / cuda-convnet: α/n multiplies Σ a²
    raise UserError(f"unknown LRN convention {convention!r}; use one of {', '.join(CONVENTIONS)}")


def local_response_norm(
    x: torch.Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    convention: str = "printed",
    groups: int = 1,
    kernel: str = "auto",
) -> torch.Tensor:
    """Normalise N×C×H×W activations over `size` adjacent channels, never across the `groups` channel blocks,
    with the implementation `kernel` names (KERNELS)."""
    if x.dim() != 4:
        raise UserError(f"LRN expects N×C×H×W activations, got shape {tuple(x.shape)}")
    if size < 1:
        raise UserError(f"LRN size must be at least 1, got {size}")
    c = x.shape[1]
    if groups < 1 or c % groups:
        raise UserError(f"LRN groups={groups} must divide the {c} channels evenly")
    alpha_prime = effective_alpha(alpha, size, convention)
    if _runs_triton(x, alpha_prime, k, kernel):
        return lrn_triton.fused_local_response_norm(x, size, alpha_prime, beta, k, groups)
    return _LRN.apply(x, size, alpha_prime, beta, k, groups)


def check_kernel(kernel: str) -> None:
    """UserError unless `kernel` is one of KERNELS."""
    if kernel not in KERNELS:
        raise UserError(f"unknown LRN kernel {kernel!r}; use one of {', '.join(KERNELS)}")


def check_kernel_device(kernel: str, device_type: str, compiled: bool = False) -> None:
    """UserError unless `kernel` can run on `device_type` ("cpu", "cuda"), under torch.compile if `compiled`:
    a run refuses it before it starts."""
    check_kernel(kernel)
    if kernel != "triton":
        return
    if lrn_triton is None:
        raise UserError("run.lrn_kernel = 'triton' needs Triton (pip install triton); use 'auto' or 'torch'")
    if not lrn_triton.runs_on(device_type):
        raise UserError(f"run.lrn_kernel = 'triton' runs on CUDA (on the CPU only under TRITON_INTERPRET=1), "
                        f"not on {device_type}; use 'auto' or 'torch'")
    if compiled and device_type != "cuda":  # the interpreter runs kernels on real tensors, not compile's fake ones
        raise UserError(f"run.lrn_kernel = 'triton' under --compile runs on CUDA only (Triton's interpreter cannot "
                        f"run inside torch.compile), not on {device_type}; drop --compile or use 'auto' or 'torch'")


def _runs_triton(x: torch.Tensor, alpha_prime: float, k: float, kernel: str) -> bool:
    """Whether this call takes the Triton kernel: never for "torch"; for "auto" on CUDA tensors it fits (the
    interpreter is never chosen for it); always for "triton", with a UserError saying why where it cannot."""
    if kernel == "torch":
        return False
    check_kernel(kernel)
    why = "Triton is not installed" if lrn_triton is None else lrn_triton.unsupported(x, alpha_prime, k)
    if kernel == "triton":
        if why is not None:
            raise UserError(f"LRN kernel 'triton': {why}; use kernel 'auto' or 'torch' (run.lrn_kernel)")
        return True
    return why is None and x.is_cuda


def _window_sum(t: torch.Tensor, before: int, after: int, groups: int) -> torch.Tensor:
    """out[:, c] = Σ t[:, j] for j from c − before to c + after, clipped at the edges of c's group.

    In-place adds of channel-shifted slices: no padding copy, any memory format (channels_last too).
    """
    out = t.clone()
    per = t.shape[1] // groups
    for g in range(groups):
        o, s = out[:, g * per : (g + 1) * per], t[:, g * per : (g + 1) * per]
        # .add_ on the slice, not `o[:, d:] += ...`: that form also copies the sum back onto itself
        for d in range(1, min(before, per - 1) + 1):
            o[:, d:].add_(s[:, :-d])  # channel c gains c − d
        for d in range(1, min(after, per - 1) + 1):
            o[:, :-d].add_(s[:, d:])  # channel c gains c + d
    return out


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision activations (autocast), else the activations' own (float64 in tests)."""
    return torch.promote_types(x.dtype, torch.float32)


class _LRN(torch.autograd.Function):
    """b = a·D^(−β), D = k + α'·S, S the window sum of a²; the backward written out (as Caffe's LRN):

        ∂L/∂a_i = g_i·D_i^(−β) − 2α'β·a_i·Σ_{c: i ∈ window(c)} g_c·a_c·D_c^(−β−1)

    Computed in float32 at least (bf16 activations under autocast keep D exact), saving only
    a, D and D^(−β): about half the passes over the activations, and fewer saved tensors, than the
    same formula through autograd's square, pool, pow and divide.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, size: int, alpha: float, beta: float, k: float,  # noqa: ANN001
                groups: int) -> torch.Tensor:
        xf = x.to(_compute_dtype(x))
        denom = _window_sum(xf * xf, size // 2, (size - 1) // 2, groups).mul_(alpha).add_(k)
        scale = denom.pow(-beta)
        ctx.save_for_backward(x, denom, scale)
        ctx.lrn = (size, alpha, beta, groups)
        return (xf * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        x, denom, scale = ctx.saved_tensors
        size, alpha, beta, groups = ctx.lrn
        xf = x.to(scale.dtype)
        g_scaled = grad.to(scale.dtype) * scale  # g·D^(−β)
        t = (g_scaled * xf).div_(denom)  # g·a·D^(−β−1)
        # i lies in the window of c when c runs from i − after to i + before: the window transposed
        spread = _window_sum(t, (size - 1) // 2, size // 2, groups)
        grad_x = g_scaled.addcmul_(xf, spread, value=-2.0 * alpha * beta)
        return grad_x.to(x.dtype), None, None, None, None, None


def local_response_norm_autograd(
    x: torch.Tensor, size: int, alpha: float, beta: float, k: float, convention: str = "printed", groups: int = 1
) -> torch.Tensor:
    """The same LRN through autograd (square, a channel-window average pool, pow, divide): the plain
    formulation that `alexrepro bench train` times `local_response_norm` against."""
    import torch.nn.functional as F

    n, c, h, w = x.shape
    sq = x.square().reshape(n * groups, 1, c // groups, h, w)  # each group folded into the batch
    sq = F.pad(sq, (0, 0, 0, 0, size // 2, (size - 1) // 2))  # zero padding: also the group edge
    window_sum = F.avg_pool3d(sq, (size, 1, 1), stride=1) * size
    return x / (window_sum.reshape(n, c, h, w) * effective_alpha(alpha, size, convention) + k).pow(beta)


class LocalResponseNorm(nn.Module):
    """Module wrapper of `local_response_norm` with fixed hyper-parameters and implementation."""

    def __init__(
        self, size: int, alpha: float, beta: float, k: float, convention: str = "printed", groups: int = 1,
        kernel: str = "auto",
    ) -> None:
        super().__init__()
        effective_alpha(alpha, size, convention)  # reject an unknown convention at build time
        check_kernel(kernel)
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.convention, self.groups, self.kernel = convention, groups, kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.convention, self.groups,
                                   self.kernel)

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
            f"convention={self.convention!r}, groups={self.groups}, kernel={self.kernel!r}"
        )


def set_lrn_kernel(net: nn.Module, kernel: str) -> nn.Module:
    """Every LocalResponseNorm in `net` takes `kernel` (the recipe's run.lrn_kernel); the same function, so
    weights, checkpoints and the recipe's maths do not change. Returns `net`."""
    check_kernel(kernel)
    for module in net.modules():
        if isinstance(module, LocalResponseNorm):
            module.kernel = kernel
    return net
