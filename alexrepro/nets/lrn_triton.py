"""Local response normalization (§3.3) as fused Triton kernels, registered as torch operators.

The function of alexrepro.nets.lrn: b_c = a_c·D_c^(−β), D_c = k + α'·Σ_j a_j² over the `size` channels
centred on c, clipped at the edges of c's tower (`groups`), α' as given (`effective_alpha` converts).
Forward reads a and writes b; backward reads a and the incoming gradient g and writes

    ∂L/∂a_i = g_i·D_i^(−β) − 2α'β·a_i·Σ_{c: i ∈ window(c)} g_c·a_c·D_c^(−β−1)

recomputing D (`alexrepro::lrn`, the default: about 5 values read or written per activation), or reading
the D that the forward saved in float32 (`alexrepro::lrn_saving_denominator`: 8 bytes more per value).
`alexrepro bench lrn` times both against the torch path and the memory-traffic floor, and the kernels
at each tile of TILES against the default TILE.

Each program takes one image's tile of pixels × channels, read once from memory through its strides
(NCHW or channels-last alike), with a halo of channels on each side. The window sums are shifts of the
tile along its channels (tl.gather: warp shuffles), so one power per value is taken forward and one
backward, where a loop over shifted loads would take `size` powers per value backward. Sums and powers are
float32 (x^(−β) = 2^(−β·log2 x), defined because D ≥ k > 0); bf16, fp16 and fp32 in and out.

torch.library.triton_op makes the kernels visible to autograd and torch.compile (no graph break).
TRITON_INTERPRET=1, read when this module is imported, runs the same kernels on CPU tensors (the tests).
"""

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

DTYPES = (torch.bfloat16, torch.float16, torch.float32)  # float64 stays on the torch path


@triton.jit
def _tile_of_program(HW, C, OUT: tl.constexpr, HALO: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """(image, pixels as a column, channels as a row, the row's positions 0..BLOCK_C−1) of this program.

    The tile's channels are OUT channels and HALO more on each side; channel blocks vary fastest, so the
    programs running together share their neighbours' halo channels in the cache.
    """
    channel_blocks = tl.cdiv(C, OUT)
    pixel_blocks = tl.cdiv(HW, BLOCK_P)
    pid = tl.program_id(0)
    rest = pid // channel_blocks
    col = tl.arange(0, BLOCK_C)[None, :]
    c = (pid % channel_blocks) * OUT - HALO + col
    p = ((rest % pixel_blocks) * BLOCK_P + tl.arange(0, BLOCK_P))[:, None]
    image = (rest // pixel_blocks).to(tl.int64)
    return image, p, c, col


@triton.jit
def _window_sum(t, col, c, lo, PER: tl.constexpr, FIRST: tl.constexpr, SIZE: tl.constexpr,
                BLOCK_C: tl.constexpr):
    """Σ t[j] for j = c + FIRST .. c + FIRST + SIZE − 1 within c's tower [lo, lo + PER): shifts of the tile
    along its channels (warp shuffles), exact for every column at least |shift| from the tile's edges."""
    total = tl.zeros(t.shape, dtype=tl.float32)
    for d in tl.static_range(SIZE):
        at = tl.minimum(tl.maximum(col + (FIRST + d), 0), BLOCK_C - 1) + tl.zeros(t.shape, dtype=tl.int32)
        j = c + (FIRST + d)
        total += tl.where((j >= lo) & (j < lo + PER), tl.gather(t, at, axis=1), 0.0)
    return total


@triton.jit
def _lrn_forward_kernel(x_ptr, y_ptr, denom_ptr, C, PER: tl.constexpr, HW, s_n, s_c, s_p, alpha, beta, k,
                        SIZE: tl.constexpr, SAVE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    HALO: tl.constexpr = SIZE // 2
    OUT: tl.constexpr = BLOCK_C - 2 * HALO
    image, p, c, col = _tile_of_program(HW, C, OUT, HALO, BLOCK_P, BLOCK_C)
    inside = (p < HW) & (c >= 0) & (c < C)
    lo = (tl.maximum(c, 0) // PER) * PER  # the first channel of c's tower (c ≥ 0: // rounds alike everywhere)
    at = image * s_n + p * s_p + c * s_c
    a = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
    denom = k + alpha * _window_sum(a * a, col, c, lo, PER, -(SIZE // 2), SIZE, BLOCK_C)
    y = a * tl.exp2(-beta * tl.log2(denom))
    out = inside & (col >= HALO) & (col < HALO + OUT)
    tl.store(y_ptr + at, y.to(y_ptr.dtype.element_ty), mask=out)
    if SAVE:
        tl.store(denom_ptr + at, denom, mask=out)


@triton.jit
def _lrn_backward_kernel(x_ptr, g_ptr, denom_ptr, dx_ptr, C, PER: tl.constexpr, HW, s_n, s_c, s_p, g_n, g_c,
                         g_p, alpha, beta, k, SIZE: tl.constexpr, SAVED: tl.constexpr, BLOCK_P: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    # The windows holding channel c are those of c − (SIZE−1)//2 .. c + SIZE//2; their D reach SIZE − 1
    # channels from c (a halo of SIZE − 1), or SIZE // 2 when D is read back from the forward.
    HALO: tl.constexpr = SIZE // 2 if SAVED else SIZE - 1
    OUT: tl.constexpr = BLOCK_C - 2 * HALO
    image, p, c, col = _tile_of_program(HW, C, OUT, HALO, BLOCK_P, BLOCK_C)
    inside = (p < HW) & (c >= 0) & (c < C)
    lo = (tl.maximum(c, 0) // PER) * PER
    at = image * s_n + p * s_p + c * s_c
    a = tl.load(x_ptr + at, mask=inside, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + image * g_n + p * g_p + c * g_c, mask=inside, other=0.0).to(tl.float32)
    if SAVED:
        denom = tl.load(denom_ptr + at, mask=inside, other=1.0)
    else:
        denom = k + alpha * _window_sum(a * a, col, c, lo, PER, -(SIZE // 2), SIZE, BLOCK_C)
    log_denom = tl.log2(denom)
    term = g * a * tl.exp2((-beta - 1.0) * log_denom)  # g_c·a_c·D_c^(−β−1): zero outside the channels
    spread = _window_sum(term, col, c, lo, PER, -((SIZE - 1) // 2), SIZE, BLOCK_C)
    dx = g * tl.exp2(-beta * log_denom) - 2.0 * alpha * beta * a * spread
    tl.store(dx_ptr + at, dx.to(dx_ptr.dtype.element_ty), mask=inside & (col >= HALO) & (col < HALO + OUT))


INTERPRETED = not isinstance(_lrn_forward_kernel, triton.runtime.jit.JITFunction)  # TRITON_INTERPRET=1
# A program's tile: (activations, warps). 8 activations per thread of 4 warps on a GPU; `alexrepro bench lrn`
# times each of TILES against it on the GPU (a tile moves no number: every activation is summed in the same
# order whatever the tile). The interpreter pays Python time per program, so its tiles are 8× longer along
# the pixels; the channel tiling, where the halo logic is, stays the same.
TILE = (8192, 4) if INTERPRETED else (1024, 4)
TILES = ((512, 2), (1024, 4), (2048, 4), (2048, 8), (4096, 8))


def runs_on(device_type: str) -> bool:
    """Whether the kernels run on tensors of `device_type`: CUDA, or the CPU under TRITON_INTERPRET=1."""
    return device_type == "cuda" or (INTERPRETED and device_type == "cpu")


def unsupported(x: torch.Tensor, alpha: float, k: float) -> str | None:
    """Why the kernels cannot run on `x` with these constants, or None when they can."""
    if not runs_on(x.device.type):
        return f"the Triton LRN runs on CUDA tensors (on the CPU only under TRITON_INTERPRET=1), not on {x.device}"
    if x.dtype not in DTYPES:
        return f"the Triton LRN takes bfloat16, float16 or float32 activations, not {x.dtype}"
    if not (k > 0 and alpha >= 0):
        return f"the Triton LRN needs k > 0 and α ≥ 0 (its powers go through log2), got k={k}, α'={alpha}"
    return None


def _pixel_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(image, channel, pixel) strides when h·W + w walks the pixels with one stride, else None."""
    _, _, h, w = t.shape
    s_n, s_c, s_h, s_w = t.stride()
    if w == 1:
        return s_n, s_c, s_h
    if h == 1 or s_h == w * s_w:
        return s_n, s_c, s_w
    return None


def _readable(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """`t` (copied to NCHW if its pixels have no single stride) and its strides for the kernels."""
    strides = _pixel_strides(t)
    if strides is None:
        t = t.contiguous()
        strides = _pixel_strides(t)
    return t, strides


def _dense(x: torch.Tensor) -> torch.Tensor:
    """`x` in NCHW or channels-last, so that empty_like gives outputs with the same strides."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _launch(x: torch.Tensor, halo: int, tile: tuple[int, int]) -> tuple[int, int, tuple[int], int]:
    """(pixels, channels) of a tile, the grid and the warps per program. The tile's width is the power of 2 that
    wastes the fewest lanes on its halo and past the last channel (96 channels: 2 tiles of 64, 60 or 56
    channels each); its length takes the rest of `tile`'s activations, up to the pixels there are."""
    n, c, h, w = x.shape
    widths = [b for b in (16, 32, 64, 128) if b > 4 * halo] or [triton.next_power_of_2(4 * halo + 1)]
    block_c = min(widths, key=lambda b: (triton.cdiv(c, b - 2 * halo) * b, abs(b - 64)))
    block_p = max(1, min(tile[0] // block_c, triton.next_power_of_2(h * w)))
    return block_p, block_c, (n * triton.cdiv(h * w, block_p) * triton.cdiv(c, block_c - 2 * halo),), tile[1]


def launch_forward(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int, save: bool,
                   tile: tuple[int, int] = TILE) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(b, D in float32 when `save`) from the forward kernel, launched with `tile`; no autograd."""
    x = _dense(x)
    _, c, h, w = x.shape
    y = torch.empty_like(x)
    denom = torch.empty_like(x, dtype=torch.float32) if save else None
    s_n, s_c, s_p = _pixel_strides(x)
    block_p, block_c, grid, warps = _launch(x, size // 2, tile)
    if x.numel():  # an empty batch launches nothing
        wrap_triton(_lrn_forward_kernel)[grid](
            x, y, denom, c, c // groups, h * w, s_n, s_c, s_p, alpha, beta, k,
            SIZE=size, SAVE=save, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)
    return y, denom


def launch_backward(grad: torch.Tensor, x: torch.Tensor, denom: torch.Tensor | None, size: int, alpha: float,
                    beta: float, k: float, groups: int, tile: tuple[int, int] = TILE) -> torch.Tensor:
    """∂L/∂a from the backward kernel, launched with `tile`; `denom` is the forward's D (with x's strides), or
    None to recompute it."""
    x = _dense(x)
    _, c, h, w = x.shape
    grad, (g_n, g_c, g_p) = _readable(grad)
    dx = torch.empty_like(x)
    s_n, s_c, s_p = _pixel_strides(x)
    block_p, block_c, grid, warps = _launch(x, size // 2 if denom is not None else size - 1, tile)
    if x.numel():
        wrap_triton(_lrn_backward_kernel)[grid](
            x, grad, denom, dx, c, c // groups, h * w, s_n, s_c, s_p, g_n, g_c, g_p,
            alpha, beta, k, SIZE=size, SAVED=denom is not None, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps)
    return dx


@triton_op("alexrepro::lrn", mutates_args=())
def lrn(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """LRN with α' = `alpha`; its backward recomputes the window sums."""
    return launch_forward(x, size, alpha, beta, k, groups, save=False)[0]


@triton_op("alexrepro::lrn_saving_denominator", mutates_args=())
def lrn_saving_denominator(x: torch.Tensor, size: int, alpha: float, beta: float, k: float,
                           groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(LRN, its denominator D in float32); the backward reads D instead of recomputing it."""
    return launch_forward(x, size, alpha, beta, k, groups, save=True)


@triton_op("alexrepro::lrn_backward", mutates_args=())
def lrn_backward(grad: torch.Tensor, x: torch.Tensor, denom: torch.Tensor | None, size: int, alpha: float,
                 beta: float, k: float, groups: int) -> torch.Tensor:
    """∂L/∂a from ∂L/∂b; `denom` is the forward's D (with x's strides), or None to recompute it."""
    return launch_backward(grad, x, denom, size, alpha, beta, k, groups)


def _setup(ctx, inputs, output) -> None:  # noqa: ANN001
    x, size, alpha, beta, k, groups = inputs
    ctx.save_for_backward(x)
    ctx.lrn = (size, alpha, beta, k, groups)


def _backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN202
    (x,) = ctx.saved_tensors
    return lrn_backward(grad, x, None, *ctx.lrn), None, None, None, None, None


def _setup_saving(ctx, inputs, output) -> None:  # noqa: ANN001
    x, size, alpha, beta, k, groups = inputs
    ctx.save_for_backward(x, output[1])
    ctx.lrn = (size, alpha, beta, k, groups)


def _backward_saving(ctx, grad: torch.Tensor, _grad_denom: torch.Tensor | None):  # noqa: ANN001, ANN202
    x, denom = ctx.saved_tensors  # D is an internal output (fused_local_response_norm returns b only)
    return lrn_backward(grad, x, denom, *ctx.lrn), None, None, None, None, None


lrn.register_autograd(_backward, setup_context=_setup)
lrn_saving_denominator.register_autograd(_backward_saving, setup_context=_setup_saving)


def fused_local_response_norm(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, groups: int = 1,
                              save_denominator: bool = False) -> torch.Tensor:
    """LRN of N×C×H×W activations through the kernels, α' = `alpha`; the caller checks `unsupported` first."""
    if save_denominator:
        return lrn_saving_denominator(x, size, alpha, beta, k, groups)[0]
    return lrn(x, size, alpha, beta, k, groups)
