"""`alexrepro bench`: each benchmark runs both sides on the same data and reports consistent ratios.

Nothing here times anything against a threshold (speed is a benchmark's business, not a test's);
the tests check that the reports are complete and that their ratios are computed from their own rates.
"""

import json
from types import SimpleNamespace

import pytest
import torch
from cli_run import run_cli

from alexrepro.bench import timing
from alexrepro.bench.timing import time_interleaved
from alexrepro.bench.train import bench_train
from alexrepro.data.options import PrepOptions
from alexrepro.data.prep import prep
from alexrepro.data.stats import compute_pca


@pytest.fixture(scope="module")
def prepared(synth_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    prep(synth_src, out, PrepOptions(workers=1), progress=False)
    compute_pca(out, progress=False)
    return out


def test_time_interleaved_takes_turns_and_keeps_the_best_round(monkeypatch):
    # A clock that only the steps move: each step of a loop "takes" its round's cost, so the best round is known.
    now = [0.0]
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    cost = {"a": [0.0, 5.0, 1.0, 3.0], "b": [0.0, 2.0, 4.0, 6.0]}  # warm-up, then rounds 1-3 (seconds a step)
    calls = []

    def step(name):
        calls.append(name)
        now[0] += cost[name][calls.count(name) // 2]  # call 1 is the warm-up, calls 2-3 round 1, ...

    loops = {"a": lambda: step("a"), "b": lambda: step("b")}
    secs = time_interleaved(loops, steps=2, warmup=1, rounds=3, device=torch.device("cpu"))
    assert calls == ["a", "b"] + ["a", "a", "b", "b"] * 3
    assert secs == {"a": 1.0, "b": 2.0}  # seconds per step of each loop's fastest round, not its first or last


def test_bench_train_reports_every_loop_and_the_ceiling(prepared):
    r = bench_train("tiny", ("model.num_classes=4", "model.width=0.125", "model.fc_width=32"), batch_size=8,
                    steps=1, warmup=1, rounds=1, data=str(prepared), loader="torch", workers=0)
    assert set(r["loops"]) == {"ours", "plain", "torchvision", "end_to_end"}
    for name, loop in r["loops"].items():
        assert loop["images_per_s"] == pytest.approx(8 / loop["seconds_per_step"], rel=1e-2), name
        assert loop["fraction_of_ceiling"] == pytest.approx(loop["images_per_s"] / r["ceiling_images_per_s"],
                                                            rel=1e-2)
    # the ceiling: measured FLOP/s over 3 × 2 × multiply-adds per image
    assert r["ceiling_images_per_s"] == pytest.approx(r["matmul_gflops"] * 1e9 / (6 * r["forward_macs_per_image"]),
                                                      rel=1e-2)
    # torchvision's AlexNet at these 112-pixel crops and 4 classes, counted by hand: conv1 64×3×11×11 to 27×27,
    # pool to 13, conv2 192×64×5×5 at 13×13, pool to 6, conv3-5 at 6×6, the adaptive pool to 6×6 (a no-op), fc
    tv = (27**2 * 64 * 3 * 121 + 13**2 * 192 * 64 * 25 + 6**2 * (384 * 192 + 256 * 384 + 256 * 256) * 9
          + 256 * 36 * 4096 + 4096 * 4096 + 4096 * 4)
    assert r["torchvision_forward_macs_per_image"] == tv
    assert r["ours_vs_torchvision_per_mac"] == pytest.approx(r["ours_vs_torchvision"] * r["forward_macs_per_image"] / tv,
                                                             rel=2e-3)
    ours, plain = r["loops"]["ours"]["seconds_per_step"], r["loops"]["plain"]["seconds_per_step"]
    # the step times are reported to 4 significant digits (up to 5e-4 relative each), the overhead from the
    # unrounded ones: compare the ratio, not its difference from 1 (which a loaded machine makes large)
    assert 1 + r["overhead_vs_plain"] == pytest.approx(ours / plain, rel=2e-3)
    assert r["machine"]["cpu_cores"] >= 1 and r["machine"]["torch"]
    from alexrepro.nets.alexnet import build_model
    from alexrepro.recipe_reader import load_recipe

    o = r["optimizer"]  # the update alone, three ways over the same parameters
    net = build_model(load_recipe("tiny", ["model.num_classes=4", "model.width=0.125", "model.fc_width=32"]).model,
                      r["crop_size"])
    assert o["parameters"] == sum(p.numel() for p in net.parameters())
    secs = o["seconds_per_update"]
    assert set(secs) == {"fused", "per_tensor", "torch_sgd"}
    assert o["fused_speedup_vs_per_tensor"] == pytest.approx(secs["per_tensor"] / secs["fused"], rel=2e-3)
    lrn = r["lrn"]  # the two LRN layers (§3.3: after conv1 and conv2) on their real input shapes
    assert lrn["layers"] == 2 and [s[0] for s in lrn["shapes"]] == [8, 8]
    assert set(lrn["seconds_forward_backward"]) == {"torch", "autograd"}  # the Triton kernels run on CUDA only


def test_bench_prep_pca_loader_cli_json(synth_src, prepared, capsys):
    code, stdout, err = run_cli(["bench", "prep", str(synth_src), "--limit", "6", "--workers", "1", "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["bench"] == "prep" and r["speedup_per_core"] == pytest.approx(
        r["ours_images_per_s_per_core"] / r["baseline_images_per_s_per_core"], rel=0.01)
    code, stdout, err = run_cli(["bench", "pca", str(prepared), "--max-images", "8", "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["eigval_max_rel_diff"] < 1e-9  # both passes agree on the numbers they time
    code, stdout, err = run_cli(["bench", "loader", str(prepared), "--src", str(synth_src), "--batches", "1",
                         "--batch-size", "4", "--workers", "0", "--kinds", "torch", "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["loaders"]["torch"]["images_per_s"] > 0 and r["baseline"]["images_per_s"] > 0


# ---- bench profile: the kernel-name table, the event walk, and the command on the CPU

PROFILE_KERNELS = [  # real names, as CUDA traces of convnets show them
    ("void cudnn::detail::implicit_convolve_sgemm<float, float, 1024, 5, 5, 3, 3, 3, 1, false, false, true>"
     "(int, int, int, float const*, int, float*, float const*, kernel_conv_params, unsigned long long, int, "
     "float, float, int, float const*, float const*, bool, int, int)", "conv"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_warpgroupsize1x1x1_"
     "g1_execute_segment_k_off_kernel__5x_cudnn", "conv"),
    ("sm80_xmma_wgrad_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64_stage3_warpsize2x2x1_"
     "g1_tensor16x8x16_kernel_cudnn", "conv"),
    ("void at::native::(anonymous namespace)::fused_sgd_kernel<float, float>(...)", "optimiser"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
     "FusedOptimizerTensorListMetadata<3>, at::native::(anonymous namespace)::FusedSgdMathFunctor<float, 3>>",
     "optimiser"),
    ("aten::avg_pool3d", "LRN"),
    ("void at::native::(anonymous namespace)::avg_pool3d_cuda_update_output<c10::BFloat16, float>(...)", "LRN"),
    ("triton_poi_fused_avg_pool3d_constant_pad_nd_div_mul_pow_1", "LRN"),
    ("triton_poi_fused_add_mul_pow_relu_slice_2", "LRN"),  # inductor's fusion of alexrepro.nets.lrn's window sums
    ("_LRNBackward", "LRN"),
    ("_lrn_forward_kernel", "LRN"),  # alexrepro.nets.lrn_triton's kernels and ops
    ("_lrn_backward_kernel", "LRN"),
    ("alexrepro::lrn_backward", "LRN"),
    ("void at::native::(anonymous namespace)::max_pool_forward_nhwc<c10::BFloat16, float>(...)", "pool"),
    ("aten::max_pool2d_with_indices_backward", "pool"),
    ("ampere_sgemm_128x64_tn", "matmul"),
    ("nvjet_hsh_128x256_64x4_2x1_v_bz_coopB_NNT", "matmul"),
    ("aten::addmm", "matmul"),
    ("triton_poi_fused_convolution_relu_3", "elementwise"),  # inductor's bias + ReLU after a cuDNN conv
    ("void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::launch_clamp_scalar"
     "(at::TensorIteratorBase&, c10::Scalar, c10::Scalar, at::native::detail::ClampLimits)::{lambda()#1}"
     "::operator()() const::{lambda()#8}::operator()() const::{lambda(float)#1}, at::detail::Array<char*, 2> >",
     "elementwise"),
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<...>>>", "elementwise"),
    ("Memcpy HtoD (Pageable -> Device)", "memory"),
    ("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16, __nv_bfloat16, float, false, true>", "memory"),
    ("aten::mkldnn_convolution", "conv"),
    ("aten::convolution_backward", "conv"),
    ("aten::copy_", "memory"),
    ("some_kernel_nobody_named", None),
]


@pytest.mark.parametrize("name,expected", PROFILE_KERNELS, ids=[n[:40] for n, _ in PROFILE_KERNELS])
def test_profile_categories_classify_real_kernel_names(name, expected):
    from alexrepro.bench.profile import category_of

    assert category_of(name) == expected


def test_profile_the_outermost_named_op_decides():
    from alexrepro.bench.profile import categorise, phase_of

    # cuDNN may run a convolution as a plain gemm: the op that launched it says conv
    assert categorise(["train_step", "module: Conv2d", "aten::cudnn_convolution", "ampere_sgemm_128x64_tn"]) == "conv"
    assert categorise(["train_step", "aten::linear", "aten::addmm", "ampere_sgemm_128x64_tn"]) == "matmul"
    assert categorise(["Optimizer.step#PaperSGD.step", "aten::_foreach_mul_", "vectorized_elementwise_kernel"]) \
        == "optimiser"
    assert categorise(["train_step", "some_kernel_nobody_named"]) == "other"
    assert phase_of(["train_step", "Optimizer.step#PaperSGD.step", "aten::_fused_sgd_"]) == "optimiser"
    assert phase_of(["autograd::engine::evaluate_function: PowBackward0", "PowBackward0", "aten::pow"]) == "backward"
    assert phase_of(["train_step", "module: Conv2d", "aten::conv2d"]) == "forward"


def test_profile_walk_traces_backward_kernels_to_their_forward_layer():
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    from alexrepro.bench.profile import summarise, timed_events

    def ev(i, name, start, end, parent=None, seq=-1, thread=1, device=DeviceType.CPU):
        e = FunctionEvent(i, name, thread, start, end, fwd_thread=1, sequence_nr=seq, device_type=device)
        if parent is not None:
            e.set_cpu_parent(parent)
        return e

    step = ev(1, "train_step", 0, 100)
    lrn = ev(2, "module: LocalResponseNorm", 1, 10, step)
    powf = ev(3, "aten::pow", 2, 5, lrn, seq=7)
    powf.append_kernel("void at::native::vectorized_elementwise_kernel<4, mul_kernel>", 0, 3.0)
    guard = ev(4, "aten::where", 20, 21, step, seq=8)  # a no-grad op: reports the next sequence number
    conv = ev(5, "aten::cudnn_convolution", 22, 30, step, seq=8)
    conv.append_kernel("ampere_sgemm_128x64_tn", 0, 10.0)
    back = ev(6, "autograd::engine::evaluate_function: PowBackward0", 40, 50, seq=7, thread=2)  # autograd's thread
    node = ev(7, "PowBackward0", 41, 49, back, thread=2)
    mul = ev(8, "aten::mul", 42, 48, node, thread=2)
    mul.append_kernel("void at::native::vectorized_elementwise_kernel<4, mul_kernel>", 0, 6.0)
    back_conv = ev(9, "autograd::engine::evaluate_function: ConvolutionBackward0", 51, 60, seq=8, thread=2)
    back_conv.append_kernel("sm80_xmma_dgrad_implicit_gemm_bf16bf16_bf16f32_f32_kernel_cudnn", 0, 20.0)
    opt = ev(10, "Optimizer.step#PaperSGD.step", 70, 80, step)
    opt.append_kernel("void at::native::multi_tensor_apply_kernel<FusedSgdMathFunctor<float, 3>>", 0, 5.0)
    # two kernels on the GPU: one tied to an op above, one the profiler could not tie to any op
    # and the labels' spans as the GPU timeline mirrors them (annotations, not kernels: never counted)
    gpu = [ev(11, "ampere_sgemm_128x64_tn", 25, 35, device=DeviceType.CUDA),
           ev(12, "Memset (Device)", 36, 39, device=DeviceType.CUDA),
           ev(13, "train_step", 0, 100, device=DeviceType.CUDA),
           ev(14, "module: LocalResponseNorm", 1, 10, device=DeviceType.CUDA)]
    timed = timed_events([step, lrn, powf, guard, conv, back, node, mul, back_conv, opt, *gpu], device=True)
    got = sorted((t.name[:24], t.us, t.category, t.phase) for t in timed)
    assert got == sorted([
        ("void at::native::vectori", 3.0, "LRN", "forward"),
        ("ampere_sgemm_128x64_tn", 10.0, "conv", "forward"),
        ("void at::native::vectori", 6.0, "LRN", "backward"),  # LRN's backward mul, through seq 7
        ("sm80_xmma_dgrad_implicit", 20.0, "conv", "backward"),  # seq 8: the conv, not the where before it
        ("void at::native::multi_t", 5.0, "optimiser", "optimiser"),
        ("Memset (Device)", 3.0, "memory", "other"),
    ])
    s = summarise(timed, steps=1, top=3)
    assert s["measured_ms_per_step"] == pytest.approx(47e-3)
    assert [row["name"][:10] for row in s["top"]] == ["sm80_xmma_", "ampere_sge", "void at::n"]
    assert s["top"][2]["calls"] == 2 and s["top"][2]["total_ms"] == pytest.approx(0.009)  # LRN: forward + backward
    assert s["categories"]["conv"] == {"ms_per_step": 0.03, "share": round(30 / 47, 4)}
    assert s["categories"]["LRN"]["share"] == round(9 / 47, 4)
    assert s["phases"]["backward"]["share"] == round(26 / 47, 4)


def test_bench_profile_cli_cpu_json_and_trace(tmp_path, capsys):
    steps = 2
    trace = tmp_path / "trace.json"
    code, stdout, err = run_cli(["bench", "profile", "--recipe", "tiny", "--set", "model.num_classes=4", "--set",
                         "model.width=0.125", "--set", "model.fc_width=32", "--batch-size", "8", "--steps", str(steps),
                         "--warmup", "1", "--top", "6", "--trace", str(trace), "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["bench"] == "profile" and r["device"] == "cpu" and r["steps"] == steps
    assert r["images_per_s"] == pytest.approx(8 / r["seconds_per_step"], rel=1e-2)
    assert 1 <= len(r["top"]) <= 6 and r["top"] == sorted(r["top"], key=lambda row: -row["total_ms"])
    for row in r["top"]:
        assert row["ms_per_step"] == pytest.approx(row["total_ms"] / steps, abs=1e-3)
        assert row["share"] == pytest.approx(row["ms_per_step"] / r["measured_ms_per_step"], abs=2e-3)
    assert set(r["categories"]) == {"conv", "LRN", "pool", "matmul", "optimiser", "elementwise", "memory", "other"}
    assert sum(v["share"] for v in r["categories"].values()) == pytest.approx(1.0, abs=0.01)
    assert sum(v["share"] for v in r["phases"].values()) == pytest.approx(1.0, abs=0.01)
    assert sum(v["ms_per_step"] for v in r["categories"].values()) == pytest.approx(r["measured_ms_per_step"], rel=0.01)
    for kind in ("conv", "LRN", "pool", "matmul", "optimiser"):  # the net has each of them
        assert r["categories"][kind]["ms_per_step"] > 0, kind
    events = json.loads(trace.read_text())["traceEvents"]
    names = [e.get("name") for e in events]
    # the net: 5 convs (conv2/4/5 by tower), 2 LRNs, 3 max pools, 3 linear layers, each once per profiled step
    assert names.count("train_step") == steps
    assert names.count("module: Conv2d") == 2 * steps and names.count("module: TowerConv2d") == 3 * steps
    assert names.count("module: LocalResponseNorm") == 2 * steps
    assert names.count("module: MaxPool2d") == 3 * steps and names.count("module: Linear") == 3 * steps


def test_bench_lrn_cli_json_and_table(capsys):
    args = ["bench", "lrn", "--recipe", "tiny", "--set", "model.num_classes=4", "--set", "model.width=0.125",
            "--batch-size", "4", "--steps", "1", "--rounds", "1"]
    code, stdout, err = run_cli([*args, "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["bench"] == "lrn" and r["layers"] == 2 and r["dtype"] == "torch.float32"
    # the tiny net at width 1/8: 12 maps of 27×27 after conv1, 32 of 13×13 after conv2 (112-pixel crops)
    assert r["shapes"] == [[4, 12, 27, 27], [4, 32, 13, 13]] and r["values"] == 4 * (12 * 27 * 27 + 32 * 13 * 13)
    assert set(r["seconds_forward_backward"]) == {"torch", "autograd"}
    # a fused LRN moves a and b forward, a, ∂L/∂b and ∂L/∂a backward: 5 float32 values per activation
    assert r["bytes_forward_backward"] == {"triton": 20 * r["values"], "triton_saved": 28 * r["values"]}
    assert r["floor_seconds"] == pytest.approx(20 * r["values"] / (r["bandwidth_gb_per_s"] * 1e9), rel=0.01)
    for name, secs in r["seconds_forward_backward"].items():
        assert r["times_floor"][name] == pytest.approx(secs / r["floor_seconds"], rel=0.01)
    assert "tiles" not in r  # the Triton kernels' tiles are timed where they run (CUDA)
    code, stdout, err = run_cli(args, capsys)
    assert code == 0 and stdout == "" and "LRN floor" in err and "LRN torch ÷ floor" in err
    from alexrepro.cli.bench_tables import _lrn_rows

    rows = _lrn_rows(r | {"tiles": {"default": "1024x4", "best": "2048x8", "best_vs_default": 0.8,
                                    "times_floor": {"1024x4": 2.5, "2048x8": 2.0}}})
    assert rows[-3:] == [("LRN kernels at tile 1024x4 ÷ floor", 2.5, 1.0), ("LRN kernels at tile 2048x8 ÷ floor", 2.0, 1.0),
                         ("fastest tile 2048x8: time ÷ default 1024x4's", 0.8, 1.0)]


def test_bench_profile_bad_options_exit_2(tmp_path, capsys):
    for args in (["--steps", "0"], ["--precision", "fp8"], ["--top", "0"], ["--trace", str(tmp_path)]):
        code, stdout, err = run_cli(["bench", "profile", "--recipe", "tiny", *args], capsys)
        assert code == 2, (args, err)


def test_bench_read_times_both_readers_on_the_same_bytes(tmp_path, capsys):
    from loader_data import make_set

    from alexrepro.data import shard_files

    out = make_set(tmp_path / "jpeg", n_train=24, n_val=3, per_shard=3)  # 8 shards, 2 h5py handles
    code, stdout, err = run_cli(["bench", "read", str(out), "--batches", "4", "--batch-size", "10", "--max-open", "2",
                         "--rounds", "2", "--json"], capsys)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["bench"] == "read" and r["identical"] is True and r["shards"] == 8 and r["max_open"] == 2
    assert 1 <= r["shards_per_batch"] <= 8
    for reader in ("h5py", "pread", "pread_checked"):
        assert r["readers"][reader]["images_per_s"] == pytest.approx(4 * 10 / r["readers"][reader]["seconds"],
                                                                     rel=1e-2)
    assert r["pread_vs_h5py"] == pytest.approx(r["readers"]["h5py"]["seconds"] / r["readers"]["pread"]["seconds"],
                                               rel=1e-2)
    assert r["checked_vs_pread"] == pytest.approx(
        r["readers"]["pread"]["seconds"] / r["readers"]["pread_checked"]["seconds"], rel=1e-2)
    assert shard_files.MAX_OPEN_SHARDS == 256  # the run's cap did not outlive it
    raw = make_set(tmp_path / "raw", n_train=6, n_val=3, per_shard=3, encoding="raw")
    code, stdout, err = run_cli(["bench", "read", str(raw)], capsys)
    assert code == 2 and "JPEG" in err


def test_bench_tables_are_printed_without_json(prepared, capsys):
    code, stdout, err = run_cli(["bench", "pca", str(prepared), "--max-images", "8"], capsys)
    assert code == 0, err
    assert stdout == ""  # the table goes to stderr; stdout is kept for --json
    assert "pca: images/s" in err and "max relative eigenvalue difference" in err


def test_bench_all_makes_its_set_once_and_runs_each_benchmark_on_it(tmp_path, monkeypatch, capsys):
    """The orchestration of `bench all`, with each benchmark and each data stage replaced by a recorder."""
    import os

    calls, made = [], []

    def recorder(kind):
        def bench(*args, **kwargs):
            calls.append((kind, args, kwargs))
            return {"ran": kind}
        return bench

    for kind in ("prep", "pca", "loader", "train"):
        monkeypatch.setattr(f"alexrepro.bench.{kind}.bench_{kind}", recorder(kind))
    for target in ("alexrepro.data.synth.make_synthetic", "alexrepro.data.prep.prep", "alexrepro.data.stats.compute_pca"):
        monkeypatch.setattr(target, lambda *args, name=target.rsplit(".", 1)[1], **kwargs: made.append((name, args[:2])))
    src, out = tmp_path / "src", tmp_path / "data"

    code, stdout, err = run_cli(["bench", "all", "--dir", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert list(report) == ["bench", "prep", "pca", "loader", "train", "machine"]
    assert report["bench"] == "all" and report["loader"] == {"ran": "loader"} and report["machine"]["cpu_cores"] >= 1
    assert made == [("make_synthetic", (src,)), ("prep", (src, out)), ("compute_pca", (out,))]
    assert [(kind, args[:2]) for kind, args, _ in calls] == [
        ("prep", (src,)), ("pca", (out,)), ("loader", (out, src)), ("train", ("tiny", ("model.num_classes=10",)))]
    loader_args, train_kwargs = calls[2][1], calls[3][2]
    assert loader_args[2:] == (10, 64, os.cpu_count() or 1)  # the CPU sizes
    assert train_kwargs["data"] == str(out) and train_kwargs["device"] == "cpu" and train_kwargs["precision"] == "fp32"

    out.mkdir()
    (out / "manifest.json").write_text("{}")  # a set already in --dir is used as it is
    made.clear()
    calls.clear()
    code, stdout, err = run_cli(["bench", "all", "--dir", str(tmp_path), "--json"], capsys)
    assert code == 0, err
    assert made == [] and [kind for kind, _, _ in calls] == ["prep", "pca", "loader", "train"]
