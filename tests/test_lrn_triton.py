"""The fused LRN kernels (alexrepro/nets/lrn_triton.py) against §3.3's formula written out in float64.

Triton's interpreter (TRITON_INTERPRET=1) runs the kernels on CPU tensors, but Triton reads it when the
kernels are defined, that is when alexrepro.nets is first imported, which other test modules do at
collection. So on a CPU the kernel checks below (marked `kernels`) run in one child pytest process
started with TRITON_INTERPRET=1 (test_kernels_pass_in_the_interpreter) and are skipped in this one; on a
machine with CUDA they run here on the GPU (marked gpu), with the paper's shapes besides. The other tests
(the `kernel=` choices, the recipe option, torch.compile's trace) run here on the CPU.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexrepro.errors import UserError
from alexrepro.nets import lrn
from alexrepro.nets.lrn import KERNELS, LocalResponseNorm, local_response_norm, set_lrn_kernel

INTERPRETED = lrn.lrn_triton is not None and lrn.lrn_triton.INTERPRETED
CUDA = torch.cuda.is_available() and not INTERPRETED
DEVICE = "cpu" if INTERPRETED else "cuda"
kernels = [pytest.mark.skipif(not (INTERPRETED or CUDA), reason="runs in the interpreter's child process "
                              "(test_kernels_pass_in_the_interpreter) or on CUDA")]
kernels += [pytest.mark.gpu] if CUDA else []
gpu = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs CUDA")]

K, N, ALPHA, BETA = 2.0, 5, 1e-4, 0.75  # §3.3
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Two ulps of each dtype: the kernels compute in float32 and round once.
TOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 1e-5}


def lrn_formula(x: torch.Tensor, size: int, alpha_prime: float, beta: float, k: float, groups: int) -> torch.Tensor:
    """§3.3 in float64: b_c = a_c / (k + α' Σ a_j²)^β, j from max(lo, c − ⌊n/2⌋) to min(hi, c + ⌊n/2⌋), where
    [lo, hi] are the channels of c's tower (all of them when groups = 1); n odd."""
    per = x.shape[1] // groups
    out = []
    for c in range(x.shape[1]):
        lo = c // per * per
        hi = lo + per - 1
        window = x[:, max(lo, c - size // 2): min(hi, c + size // 2) + 1]
        out.append(x[:, c] / (k + alpha_prime * (window**2).sum(1)) ** beta)
    return torch.stack(out, 1)


def activations(shape: tuple[int, ...], dtype: torch.dtype, channels_last: bool, device: str = DEVICE) -> torch.Tensor:
    """Activations large enough that α Σ a² is comparable to k (30² · 5 · 1e-4 ≈ 0.45 against 2)."""
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 30).to(dtype).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def check_against_formula(x: torch.Tensor, size: int, alpha: float, beta: float, k: float, convention: str,
                          groups: int, save_denominator: bool = False, grad: torch.Tensor | None = None) -> None:
    """The kernels' forward and backward on x against the formula and autograd through it, in float64."""
    alpha_prime = lrn.effective_alpha(alpha, size, convention)
    x = x.detach().requires_grad_(True)
    y = lrn.lrn_triton.fused_local_response_norm(x, size, alpha_prime, beta, k, groups, save_denominator)
    dense = x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)
    assert y.dtype == x.dtype and (y.stride() == x.stride() or not dense)  # NCHW or channels-last is kept
    if grad is None:
        grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(y)
    y.backward(grad)
    x64 = x.detach().double().requires_grad_(True)
    want = lrn_formula(x64, size, alpha_prime, beta, k, groups)
    want.backward(grad.double())
    tol = TOL[x.dtype]
    torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol * want.abs().max().item())
    dx = x64.grad
    assert x.grad.dtype == x.dtype and (x.grad.stride() == x.stride() or not dense)
    torch.testing.assert_close(x.grad.double(), dx, rtol=tol, atol=tol * dx.abs().max().item())


# (batch, channels, spatial, groups, size, convention): every channel count at a small spatial size and
# every spatial size with few channels, so the interpreter stays fast.
SHAPES = [
    (2, 96, 2, 2, 5, "printed"),  # conv1's maps, two towers of 48
    (2, 256, 1, 2, 3, "divided-by-n"),  # conv2's maps
    (1, 256, 3, 1, 5, "printed"),  # one window over both towers (Caffe's LRN)
    (2, 96, 1, 1, 3, "divided-by-n"),
    (2, 7, 27, 1, 5, "printed"),  # an odd count
    (1, 8, 55, 2, 1, "divided-by-n"),  # n = 1: each map alone
    (1, 6, 55, 2, 5, "divided-by-n"),  # towers of 3, narrower than the window
]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("batch, channels, side, groups, size, convention", SHAPES)
@pytest.mark.parametrize("_", [pytest.param(None, marks=kernels)])
def test_kernels_are_the_formula(_, batch, channels, side, groups, size, convention, dtype, layout):
    x = activations((batch, channels, side, side), DTYPES[dtype], layout == "channels_last")
    check_against_formula(x, size, ALPHA, BETA, K, convention, groups)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("_", [pytest.param(None, marks=kernels)])
def test_saved_denominator_backward_is_the_formula(_, dtype, layout):
    x = activations((2, 12, 5, 5), DTYPES[dtype], layout == "channels_last")
    check_against_formula(x, N, ALPHA, BETA, K, "printed", 2, save_denominator=True)


@pytest.mark.parametrize("_", [pytest.param(None, marks=kernels)])
def test_any_k_beta_and_alpha(_):
    # k = 1, β = 0.5 and a large α: D far from k, so a wrong power or window would show
    x = activations((2, 10, 4, 4), torch.float32, channels_last=True)
    check_against_formula(x, 3, 1e-2, 0.5, 1.0, "printed", 2)
    check_against_formula(x, 5, 3e-3, 1.25, 0.5, "divided-by-n", 1, save_denominator=True)


@pytest.mark.parametrize("_", [pytest.param(None, marks=kernels)])
def test_any_strides_of_input_and_gradient(_):
    x = activations((2, 16, 6, 6), torch.float32, channels_last=True)
    check_against_formula(x, N, ALPHA, BETA, K, "printed", 2, grad=torch.ones(2, 16, 6, 6, device=DEVICE))
    ones = torch.ones((), device=DEVICE).expand(2, 16, 6, 6)  # stride 0 everywhere, as .sum().backward() gives
    check_against_formula(x, N, ALPHA, BETA, K, "printed", 2, grad=ones)
    wide = activations((2, 32, 6, 7), torch.float32, channels_last=False)
    check_against_formula(wide[:, ::2, :, 1:], N, ALPHA, BETA, K, "printed", 2)  # a strided view


@pytest.mark.parametrize("layout", ["nchw", "channels_last"] if INTERPRETED else ["channels_last"])
@pytest.mark.parametrize("_", [pytest.param(None, marks=kernels)])
def test_every_tile_gives_the_same_bits(_, layout):
    """A tile (activations and warps per program) changes which program computes an activation, not how: at
    every tile `bench lrn` times, the kernels give the default tile's bits, forward (saving D or not) and
    backward (recomputing D or reading it). On CUDA at the paper's shapes, channels-last, the kernels a
    training step runs (each tile there is a compilation of its own: a few seconds each)."""
    from alexrepro.nets.lrn_triton import TILE, TILES, _launch, launch_backward, launch_forward

    alpha = lrn.effective_alpha(ALPHA, N, "printed")

    def run(x: torch.Tensor, g: torch.Tensor, tile: tuple[int, int]) -> list[torch.Tensor]:
        y, _ = launch_forward(x, N, alpha, BETA, K, 2, False, tile)
        out = [y, launch_backward(g, x, None, N, alpha, BETA, K, 2, tile)]
        if INTERPRETED:  # and the kernels' other forms
            y_saving, d = launch_forward(x, N, alpha, BETA, K, 2, True, tile)
            out += [y_saving, d, launch_backward(g, x, d, N, alpha, BETA, K, 2, tile)]
        return out

    for shape in [(2, 96, 7, 7)] if INTERPRETED else [(128, 96, 55, 55), (128, 256, 27, 27)]:
        x = activations(shape, torch.bfloat16, layout == "channels_last")
        g = activations(shape, torch.bfloat16, layout == "channels_last").flip(0)
        want = run(x, g, TILE)
        for tile in TILES:
            assert all(torch.equal(a, b) for a, b in zip(run(x, g, tile), want, strict=True)), (shape, tile)
        assert len({_launch(x, N // 2, t)[0] for t in TILES}) >= 3  # the tiles' lengths really differ here


@pytest.mark.parametrize("_", [pytest.param(None, marks=kernels)])
def test_bench_times_every_tile(_):
    from alexrepro.bench.lrn import tile_timings
    from alexrepro.nets.lrn_triton import TILE, TILES

    x = activations((1, 16, 4, 4), torch.float32, channels_last=True)
    r = tile_timings([(LocalResponseNorm(N, ALPHA, BETA, K, groups=2), x)], steps=1, rounds=1, floor=1e-3)
    secs = r["seconds_forward_backward"]
    names = [f"{a}x{w}" for a, w in [TILE, *(t for t in TILES if t != TILE)]]
    assert list(secs) == names and r["default"] == names[0] and r["best"] == min(secs, key=secs.__getitem__)
    assert r["best_vs_default"] == pytest.approx(secs[r["best"]] / secs[names[0]], rel=1e-3) and r["best_vs_default"] <= 1
    assert r["times_floor"] == {k: pytest.approx(v / 1e-3, rel=1e-3) for k, v in secs.items()}


@pytest.mark.parametrize("_", [pytest.param(None, marks=kernels)])
def test_kernel_choices_on_this_device(_):
    x = activations((2, 8, 3, 3), torch.float32, channels_last=False)
    want = lrn_formula(x.double(), N, ALPHA, BETA, K, 2)
    for module in (LocalResponseNorm(N, ALPHA, BETA, K, groups=2, kernel="triton"),
                   set_lrn_kernel(torch.nn.Sequential(LocalResponseNorm(N, ALPHA, BETA, K, groups=2)), "triton")):
        torch.testing.assert_close(module(x).double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(UserError, match="bfloat16, float16 or float32 activations, not torch.float64"):
        local_response_norm(x.double(), N, ALPHA, BETA, K, kernel="triton")
    with pytest.raises(UserError, match=r"needs k > 0 and α ≥ 0"):
        local_response_norm(x, N, ALPHA, BETA, 0.0, kernel="triton")
    empty = torch.empty(0, 8, 3, 3, device=DEVICE, requires_grad=True)  # an empty batch launches nothing
    local_response_norm(empty, N, ALPHA, BETA, K, groups=2, kernel="triton").sum().backward()
    assert empty.grad.shape == empty.shape
    # "auto" never takes the interpreter, and on CUDA keeps float64 on the torch path
    assert torch.equal(local_response_norm(x.double(), N, ALPHA, BETA, K, groups=2),
                       local_response_norm(x.double(), N, ALPHA, BETA, K, groups=2, kernel="torch"))


@pytest.mark.parametrize("_", [pytest.param(None, marks=kernels)])
def test_opcheck(_):
    x = activations((2, 8, 3, 3), torch.float32, channels_last=True).requires_grad_(True)
    # the interpreter cannot trace with fake tensors (it reads their data), so only these two there
    utils = ("test_schema", "test_autograd_registration") if INTERPRETED else None
    kw = {} if utils is None else {"test_utils": utils}
    for op in (torch.ops.alexrepro.lrn.default, torch.ops.alexrepro.lrn_saving_denominator.default):
        torch.library.opcheck(op, (x, N, ALPHA, BETA, K, 2), **kw)
    g = torch.randn_like(x)
    torch.library.opcheck(torch.ops.alexrepro.lrn_backward.default, (g, x.detach(), None, N, ALPHA, BETA, K, 2), **kw)


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED, reason="this is the child's parent")
@pytest.mark.skipif(lrn.lrn_triton is None, reason="Triton is not installed")
def test_kernels_pass_in_the_interpreter():
    """Every `kernels` test above, in a child pytest with TRITON_INTERPRET=1 set before anything imports."""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "not gpu",
                           "-k", "not in_the_interpreter", str(Path(__file__).resolve())],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert " passed" in done.stdout and "interpreter's child process" not in done.stdout, done.stdout[-3000:]


# ------------------------------------------------------------------------------------- on this CPU, no kernel
@pytest.mark.skipif(INTERPRETED, reason="the CPU without the interpreter")
def test_on_the_cpu_auto_is_the_torch_path_bit_for_bit():
    x = activations((2, 8, 5, 5), torch.float32, channels_last=True, device="cpu").requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    y = local_response_norm(x, N, ALPHA, BETA, K, "printed", 2)  # kernel="auto"
    y2 = lrn._LRN.apply(x2, N, ALPHA, BETA, K, 2)
    assert torch.equal(y, y2)
    y.backward(torch.ones_like(y))
    y2.backward(torch.ones_like(y2))
    assert torch.equal(x.grad, x2.grad)
    with pytest.raises(UserError, match="runs on CUDA tensors .*TRITON_INTERPRET=1.*not on cpu"):
        local_response_norm(x, N, ALPHA, BETA, K, kernel="triton")
    with pytest.raises(UserError, match="unknown LRN kernel 'fast'; use one of auto, triton, torch"):
        local_response_norm(x, N, ALPHA, BETA, K, kernel="fast")
    with pytest.raises(UserError, match="unknown LRN kernel"):
        LocalResponseNorm(N, ALPHA, BETA, K, kernel="cudnn")


def test_recipe_option_reaches_every_lrn_layer():
    import typing

    from alexrepro.recipe import RunConfig
    from alexrepro.recipe_reader import load_recipe
    from alexrepro.training.step import build_step

    assert typing.get_args(typing.get_type_hints(RunConfig)["lrn_kernel"]) == KERNELS == ("auto", "triton", "torch")
    tiny = ["model.num_classes=4", "model.width=0.125", "model.fc_width=32", "run.lrn_kernel=torch"]
    recipe = load_recipe("tiny", tiny)
    for devices in (None, (torch.device("cpu"), torch.device("cpu"))):  # one device, and §3.2's two towers
        model = build_step(recipe, torch.device("cpu"), model_devices=devices).model
        norms = [m for m in model.modules() if isinstance(m, LocalResponseNorm)]
        assert norms and {m.kernel for m in norms} == {"torch"}
    assert load_recipe("tiny").run.lrn_kernel == "auto"
    with pytest.raises(UserError, match="run.lrn_kernel must be one of 'auto', 'triton', 'torch'"):
        load_recipe("tiny", ["run.lrn_kernel=fast"])


@pytest.mark.skipif(INTERPRETED or CUDA, reason="the CPU without the interpreter")
def test_bench_refuses_the_triton_kernel_on_the_cpu(capsys):
    from alexrepro.cli.app import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "train", "--recipe", "tiny", "--set", "run.lrn_kernel=triton", "--steps", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "run.lrn_kernel = 'triton' runs on CUDA" in err and "Traceback" not in err


@pytest.mark.skipif(lrn.lrn_triton is None, reason="needs Triton")
def test_compile_with_the_interpreted_kernel_is_refused_in_one_line():
    # On the CPU the kernel runs only in Triton's interpreter, which cannot run inside torch.compile (it wants
    # real tensors, Dynamo traces fake ones): one line and exit 2 before any work, not Dynamo's traceback.
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "alexrepro", "bench", "train", "--recipe", "tiny", "--device", "cpu", "--compile",
           "--set", "run.lrn_kernel=triton", "--steps", "1", "--batch-size", "2"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0] == ("error: run.lrn_kernel = 'triton' under --compile runs on CUDA only (Triton's interpreter "
                        "cannot run inside torch.compile), not on cpu; drop --compile or use 'auto' or 'torch'")


@pytest.mark.skipif(INTERPRETED or lrn.lrn_triton is None, reason="traces on the CPU without the interpreter")
def test_compile_traces_the_kernels_in_one_graph(monkeypatch):
    """torch.compile(fullgraph=True) of the net with kernel="triton": one forward graph and one backward graph,
    calling the forward and the backward kernel of each LRN layer, which write their outputs only. Traced
    with fake tensors on the CPU and never run (the compiled graphs are replaced by functions returning
    zeros); Triton is told it compiles for an H100 (sm_90), so torch's check of what each kernel writes runs
    as on a GPU."""
    import triton
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from triton.backends.compiler import GPUTarget

    from alexrepro.nets import build_net
    from alexrepro.recipe_reader import load_recipe

    class H100Target:
        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", 90, 32)

    monkeypatch.setattr(triton.runtime.driver, "_active", H100Target())
    monkeypatch.setattr(lrn.lrn_triton, "runs_on", lambda device_type: True)  # let the CPU take the kernel path
    recipe = load_recipe("tiny", ["model.num_classes=4", "model.width=0.125", "model.fc_width=32"])
    net = set_lrn_kernel(build_net(recipe.model, 64), "triton")
    graphs = []

    def record(gm: torch.fx.GraphModule, example_inputs) -> object:  # noqa: ANN001
        graphs.append(gm)
        outs = [n.meta["val"] if isinstance(n, torch.fx.Node) else None for n in gm.graph.output_node().args[0]]
        return make_boxed_func(lambda *args: [None if v is None else torch.zeros(v.shape, dtype=v.dtype) for v in outs])

    def backend(gm: torch.fx.GraphModule, example_inputs) -> object:  # noqa: ANN001
        return aot_module_simplified(gm, example_inputs, fw_compiler=record, bw_compiler=record)

    def kernel_calls(gm: torch.fx.GraphModule) -> list[tuple[str, list[str]]]:
        """(kernel, the arguments it writes) of each Triton kernel the graph launches."""
        return [(kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__, n.kwargs["tensors_to_clone"])
                for n in gm.graph.nodes if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional]

    torch._dynamo.reset()
    try:
        compiled = torch.compile(net, fullgraph=True, backend=backend)
        compiled(torch.randn(2, 3, 64, 64)).sum().backward()
        assert len(graphs) == 2  # forward and backward: no graph break
        assert kernel_calls(graphs[0]) == [("_lrn_forward_kernel", ["y_ptr"])] * 2
        assert kernel_calls(graphs[1]) == [("_lrn_backward_kernel", ["dx_ptr"])] * 2
    finally:
        torch._dynamo.reset()


@pytest.mark.slow
@pytest.mark.skipif(INTERPRETED or lrn.lrn_triton is None, reason="compiles the kernels, not the interpreter's")
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_kernels_compile_for_a_gpu_without_one(layout, tmp_path, monkeypatch):
    """Triton's compiler (to an sm_90 binary through the ptxas it ships) accepts the kernels as the launches
    specialise them: the interpreter runs Python, so it would not catch what only the GPU compiler refuses."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    def compile_kernel(kernel, flag: str, save: bool, tile: tuple[int, int] = lrn.lrn_triton.TILE) -> None:  # noqa: ANN001
        floats, ones = ("alpha", "beta", "k"), (("s_c", "g_c") if layout == "channels_last" else ("s_p", "g_p"))
        consts = {"PER": 48, "SIZE": 5, flag: save, "BLOCK_P": tile[0] // 64, "BLOCK_C": 64} | {n: 1 for n in ones}
        if not save:
            consts["denom_ptr"] = None  # launched with None when D is not saved
        signature = {}
        for name in kernel.arg_names:
            if name in consts:
                signature[name] = "constexpr"
            elif name.endswith("_ptr"):
                signature[name] = "*fp32" if name == "denom_ptr" and save else "*bf16"
            else:
                signature[name] = "fp32" if name in floats else "i32"
        consts = {name: value for name, value in consts.items() if name in signature}
        compiled = triton.compile(ASTSource(kernel, signature, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                                  options={"num_warps": tile[1]})
        assert compiled.asm["cubin"] and compiled.metadata.num_warps == tile[1]

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compiled from scratch, and no cache left behind
    for save in (False, True):
        compile_kernel(lrn.lrn_triton._lrn_forward_kernel, "SAVE", save)
        compile_kernel(lrn.lrn_triton._lrn_backward_kernel, "SAVED", save)
    for tile in lrn.lrn_triton.TILES:  # every tile `bench lrn` times on a GPU
        compile_kernel(lrn.lrn_triton._lrn_forward_kernel, "SAVE", False, tile)
        compile_kernel(lrn.lrn_triton._lrn_backward_kernel, "SAVED", False, tile)


# ------------------------------------------------------------------------------------------- on CUDA only
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape, groups", [((128, 96, 55, 55), 2), ((128, 256, 27, 27), 2)])
@pytest.mark.parametrize("_", [pytest.param(None, marks=gpu)])
def test_paper_shapes_on_cuda(_, shape, groups, dtype, layout):
    x = activations(shape, DTYPES[dtype], layout == "channels_last")
    check_against_formula(x, N, ALPHA, BETA, K, "printed", groups)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("_", [pytest.param(None, marks=gpu)])
def test_kernel_matches_the_torch_path_in_bf16(_, layout):
    for shape in ((128, 96, 55, 55), (128, 256, 27, 27)):
        x = activations(shape, torch.bfloat16, layout == "channels_last").requires_grad_(True)
        x2 = x.detach().clone().requires_grad_(True)
        y = local_response_norm(x, N, ALPHA, BETA, K, "printed", 2, kernel="triton")
        y2 = local_response_norm(x2, N, ALPHA, BETA, K, "printed", 2, kernel="torch")
        torch.testing.assert_close(y, y2, rtol=2**-7, atol=2**-7 * y2.abs().max().item())
        grad = torch.randn_like(y)
        y.backward(grad)
        y2.backward(grad)
        torch.testing.assert_close(x.grad, x2.grad, rtol=2**-7, atol=2**-7 * x2.grad.abs().max().item())
        assert torch.equal(local_response_norm(x, N, ALPHA, BETA, K, "printed", 2), y)  # "auto" takes the kernel


@pytest.mark.parametrize("_", [pytest.param(None, marks=gpu)])
def test_compiled_paper_net_with_the_kernel_on_cuda(_):
    """The paper net, channels-last bf16, compiled with fullgraph=True (a graph break raises): its loss and
    gradients match the eager net on the torch path."""
    from alexrepro.nets import build_net
    from alexrepro.recipe_reader import load_recipe

    recipe = load_recipe("paper")
    torch.manual_seed(0)
    net = build_net(recipe.model, 224).cuda().to(memory_format=torch.channels_last)
    images = torch.randn(8, 3, 224, 224, device="cuda").contiguous(memory_format=torch.channels_last) * 50
    labels = torch.arange(8, device="cuda")

    def loss_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        with torch.autocast("cuda", torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    net.eval()  # no dropout: the two runs see the same function
    torch._dynamo.reset()
    loss, grads = loss_and_grads(torch.compile(set_lrn_kernel(net, "triton"), fullgraph=True))
    loss2, grads2 = loss_and_grads(set_lrn_kernel(net, "torch"))
    torch.testing.assert_close(loss, loss2, rtol=1e-2, atol=1e-2)
    for g, g2 in zip(grads, grads2, strict=True):
        torch.testing.assert_close(g, g2, rtol=5e-2, atol=5e-2 * g2.abs().max().item())


@pytest.mark.parametrize("_", [pytest.param(None, marks=gpu)])
def test_bench_lrn_times_both_backwards_on_cuda(_):
    from alexrepro.bench.lrn import bench_lrn

    r = bench_lrn("tiny", ("model.num_classes=4",), batch_size=8, device="cuda", precision="bf16",
                  channels_last=True, steps=2, rounds=1)
    assert set(r["seconds_forward_backward"]) == {"torch", "autograd", "triton", "triton_saved"}
    assert r["bytes_forward_backward"]["triton"] == 5 * 2 * r["values"]  # 10 bytes per value in bf16
    assert r["bytes_forward_backward"]["triton_saved"] == (5 * 2 + 8) * r["values"]
    assert r["floor_seconds"] > 0 and r["times_floor"]["triton"] > 0
    assert r["tiles"]["default"] == "1024x4" and set(r["tiles"]["seconds_forward_backward"]) == {
        f"{a}x{w}" for a, w in lrn.lrn_triton.TILES}
