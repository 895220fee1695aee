"""Profile training steps with torch.profiler: top kernels, the kinds of layer that spend the time, step time.

`profile_train` builds the recipe's net and optimiser as `alexrepro bench train` does (same seed, memory
format, compile and precision), runs warm-up steps, times `steps` steps without the profiler (the step
time and images/s), then profiles `steps` more. Every step is `alexrepro.training.step.train_step`, the step
`alexrepro train` runs: forward, loss, top-k tally, the NaN watchdog's device-side check, backward and
§5's update.

The time counted is each kernel's device time on a GPU and each op's self CPU time on the CPU. Each one is
put in a category (conv, LRN, pool, matmul, optimiser, elementwise, memory, other) by CATEGORIES, a table
of name patterns, applied to the names on the way from the outermost op down to the kernel: the first name
that a row matches decides. So a cuBLAS-style gemm kernel that cuDNN launches for a convolution counts as
conv, because `aten::cudnn_convolution` is met before the kernel. A backward op is first traced to the
forward op that made it (autograd's sequence number), so LRN's backward pow/mul/div count as LRN, not as
elementwise. Without --compile each layer's forward runs inside a `module: <class>` label (forward hooks,
removed afterwards), which also names the layers in the trace; under --compile the fused kernels' own names
decide (inductor names them after the ops they fuse).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alexrepro.bench.machine import machine_info
from alexrepro.bench.timing import check_step_options, sig
from alexrepro.bench.train import step_bench
from alexrepro.errors import UserError
from alexrepro.process.atomic import atomic_write_bytes, writable_file
from alexrepro.progress import make_progress
from alexrepro.runtime import resolve_device, synchronize

# (category, pattern): searched case-insensitively in a name; the first row that matches decides, so
# the order matters (a conv kernel named ..._implicit_gemm_... must meet "conv" before "matmul").
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("optimiser", r"fused_?sgd|sgd\b|sgd_|optimizer\.(step|zero_grad)|_foreach_|multi_tensor_apply"),
    # alexrepro.nets.lrn's autograd function (_LRN, _LRNBackward), its Triton kernels (_lrn_forward_kernel,
    # _lrn_backward_kernel) or an avg_pool3d window sum; AlexNet's own pooling is max pooling. Of this net's
    # layers only LRN raises to a power (D^-β), so a fused kernel with a pow in it (inductor:
    # triton_poi_fused_add_mul_pow_slice_2) is counted as LRN.
    ("LRN", r"localresponse|local_response|avg_?pool3d|(\b|_)lrn|fused_(\w+_)?pow_"),
    ("pool", r"max_?pool|pooling"),
    ("memory", r"memcpy|memset|nchwtonhwc|nhwctonchw"),  # before conv: cuDNN's layout transposes say cudnn
    # inductor's fused kernels (triton on GPUs, C++ on CPUs) are named after the ops they fuse; a
    # convolution in the name is the bias/ReLU epilogue of one, run after cuDNN's conv kernel
    ("elementwise", r"^triton_(poi|red|per)_|^(graph_\d+_)?cpp_fused"),
    ("conv", r"conv|cudnn|implicit_?gemm|fprop|dgrad|wgrad|winograd|im2col|col2im"),
    ("matmul", r"gemm|gemv|matmul|aten::(addmm|mm|bmm)\b|linear|cublas|cutlass|nvjet|triton_tem_"),
    ("memory", r"copy|contiguous|clone|aten::(cat|pad|constant_pad_nd|fill_|zero_|zeros|empty\w*|"
               r"flatten|view|reshape|as_strided|expand|slice|narrow|transpose|permute|t)\b"),
    ("elementwise", r"elementwise|vectorized|unrolled|reduce|relu|threshold|dropout|bernoulli|tanh|"
                    r"softmax|nll_loss|cross_entropy|isfinite|clamp|accumulategrad|"
                    r"aten::(add|sub|mul|div|pow|sqrt|rsqrt|exp|log|neg|abs|square|sum|mean|max|min|"
                    r"where|eq|ne|lt|le|gt|ge|sort|topk|gather|index)"),
)
CATEGORY_NAMES: tuple[str, ...] = (
    "conv", "LRN", "pool", "matmul", "optimiser", "elementwise", "memory", "other")
PHASES: tuple[str, ...] = ("forward", "backward", "optimiser")
_COMPILED = [(cat, re.compile(pat, re.IGNORECASE)) for cat, pat in CATEGORIES]
_BACKWARD = "autograd::engine::evaluate_function"
STEP_LABEL = "train_step"  # the profiler label around each step
LAYER_LABEL = "module: "  # the prefix of each layer's label: module: <class>


def category_of(name: str) -> str | None:
    """The category of one kernel or op name by CATEGORIES, or None when no row matches."""
    for cat, pattern in _COMPILED:
        if pattern.search(name):
            return cat
    return None


def categorise(names: Sequence[str]) -> str:
    """A kernel's category from the names from its outermost op down to itself; "other" if none matches."""
    for name in names:
        cat = category_of(name)
        if cat is not None:
            return cat
    return "other"


def phase_of(names: Sequence[str]) -> str:
    """forward (loss, tally and watchdog check included), backward, or optimiser (step and zero_grad)."""
    if any(n.startswith("Optimizer.") for n in names):
        return "optimiser"
    if any(n.startswith(_BACKWARD) for n in names):
        return "backward"
    return "forward"


@dataclass(frozen=True)
class Timed:
    """One kernel run (GPU) or one op's self time (CPU), with what it belongs to."""

    name: str
    us: float
    category: str
    phase: str


def timed_events(events: Iterable[Any], device: bool) -> list[Timed]:
    """Kernels (device=True: each kernel's duration) or ops (self CPU time) from torch.profiler's events.

    `events` are torch.autograd.profiler_util.FunctionEvent (name, cpu_parent, kernels, sequence_nr, thread,
    fwd_thread, device_type, time_range, self_cpu_time_total).
    """
    events = list(events)
    cpu = [e for e in events if _is_cpu(e)]
    parent_chain: dict[int, list[Any]] = {}

    def own_chain(e: Any) -> list[Any]:  # outermost first, e last
        key = id(e)
        if key not in parent_chain:
            up = own_chain(e.cpu_parent) if e.cpu_parent is not None else []
            parent_chain[key] = [*up, e]
        return parent_chain[key]

    # Forward ops by (thread, sequence number): a backward node carries the number of the op that made it.
    # Ops that make no node (no-grad ops) report the next number, so the maker is the last op with that
    # number to start before the backward node did.
    forward: dict[tuple[int, int], list[Any]] = defaultdict(list)
    for e in cpu:
        if e.sequence_nr is None or e.sequence_nr < 0:
            continue
        if any(a.name.startswith(_BACKWARD) for a in own_chain(e)):
            continue
        forward[(e.thread, e.sequence_nr)].append(e)

    def maker(node: Any) -> Any:
        before = [f for f in forward.get((node.fwd_thread, node.sequence_nr), ())
                  if f.time_range.start <= node.time_range.start]
        return max(before, key=lambda f: f.time_range.start) if before else None

    def names(e: Any) -> list[str]:
        out: list[str] = []
        for a in own_chain(e):
            if a.name.startswith(_BACKWARD) and a.sequence_nr is not None and a.sequence_nr >= 0:
                made_by = maker(a)
                out += [f.name for f in own_chain(made_by)] if made_by is not None else []
            out.append(a.name)
        return out

    timed: list[Timed] = []
    attached: dict[str, float] = defaultdict(float)
    for e in cpu:
        if device:
            kernels = getattr(e, "kernels", None) or []
            if not kernels:
                continue
            chain = names(e)
            phase = phase_of(chain)
            for k in kernels:
                timed.append(Timed(k.name, float(k.duration), categorise([*chain, k.name]), phase))
                attached[k.name] += float(k.duration)
        elif e.self_cpu_time_total > 0:
            chain = names(e)
            timed.append(Timed(e.name, float(e.self_cpu_time_total), categorise(chain), phase_of(chain)))
    if device:
        timed += _untied_kernels(events, attached)
    return timed


def _untied_kernels(events: list[Any], attached: dict[str, float]) -> list[Timed]:
    """Kernels the profiler could not tie to an op (their time beyond what was `attached`): by name only."""
    on_device: dict[str, list[float]] = defaultdict(list)
    for e in events:
        if not _is_cpu(e) and not _is_annotation(e):
            on_device[e.name].append(float(e.time_range.end - e.time_range.start))
    timed = []
    for name, runs in on_device.items():
        left = sum(runs) - attached.get(name, 0.0)
        if left > 1e-3 * max(sum(runs), 1e-9):
            timed.append(Timed(name, left, categorise([name]), "other"))
    return timed


def _is_annotation(e: Any) -> bool:
    """A label's span mirrored on the GPU timeline ("train_step", "module: Conv2d"): not a kernel. Counted, it
    doubled the measured time (device busy 2.4× the step on an H200) and filed the step under "other"."""
    return bool(getattr(e, "is_user_annotation", False)) or e.name == STEP_LABEL or e.name.startswith(LAYER_LABEL)


def _is_cpu(e: Any) -> bool:
    from torch.autograd import DeviceType

    return e.device_type == DeviceType.CPU and not getattr(e, "is_async", False)


def summarise(timed: Sequence[Timed], steps: int, top: int) -> dict[str, Any]:
    """Top names by time (calls, ms, share), and each category's and phase's ms per step and share."""
    total = sum(t.us for t in timed)
    if total <= 0:
        raise UserError("the profile recorded no time; profile more --steps")
    by_name: dict[tuple[str, str], list[float]] = defaultdict(list)
    by_cat: dict[str, float] = dict.fromkeys(CATEGORY_NAMES, 0.0)
    by_phase: dict[str, float] = dict.fromkeys((*PHASES, "other"), 0.0)
    for t in timed:
        by_name[(t.name, t.category)].append(t.us)
        by_cat[t.category] += t.us
        by_phase[t.phase] += t.us

    def share(us: float) -> dict[str, float]:
        return {"ms_per_step": round(us / 1e3 / steps, 4), "share": round(us / total, 4)}

    rows = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {
        "measured_ms_per_step": round(total / 1e3 / steps, 4),
        "top": [{"name": name, "category": cat, "calls": len(us), "total_ms": round(sum(us) / 1e3, 4),
                 **share(sum(us))} for (name, cat), us in rows],
        "categories": {c: share(us) for c, us in sorted(by_cat.items(), key=lambda kv: -kv[1])},
        "phases": {p: share(us) for p, us in by_phase.items() if us > 0 or p in PHASES},
    }


def _label_layers(model: torch.nn.Module) -> Callable[[], None]:
    """Run each leaf module's forward inside a `module: <class>` profiler label; returns the undo."""
    handles, open_labels = [], []

    def enter(module: torch.nn.Module, _inputs: Any) -> None:
        label = torch.profiler.record_function(f"{LAYER_LABEL}{type(module).__name__}")
        label.__enter__()
        open_labels.append(label)

    def leave(_module: torch.nn.Module, _inputs: Any, _output: Any) -> None:
        open_labels.pop().__exit__(None, None, None)

    for m in model.modules():
        if next(m.children(), None) is None:
            handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]

    def undo() -> None:
        for h in handles:
            h.remove()

    return undo


def _run(step: Callable[[], None], steps: int, warmup: int, dev: torch.device, label: torch.nn.Module | None,
         progress: bool) -> tuple[Any, float, float]:
    """Warm up, time `steps` steps, profile `steps` more: (profile, s per step, profiled s per step).

    `label`: the model whose layers get `module: <class>` labels while profiled (None under compile).
    """
    from torch.profiler import ProfilerActivity, profile

    with make_progress(transient=True, show=progress) as bar:
        task = bar.add_task("profile", total=warmup + 2 * steps, unit="step")

        def run(count: int, status: str) -> None:
            for _ in range(count):
                with torch.profiler.record_function(STEP_LABEL):  # its self time: the host's own Python
                    step()
                bar.update(task, advance=1, status=status)

        run(warmup, "warm-up")
        synchronize(dev)
        t0 = time.perf_counter()
        run(steps, "timed")
        synchronize(dev)
        seconds = (time.perf_counter() - t0) / steps
        undo = _label_layers(label) if label is not None else (lambda: None)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        # Kineto logs at ERROR level that it found no GPU on a CPU machine; quiet, unless the user asks.
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        try:
            with profile(activities=activities) as prof:
                t1 = time.perf_counter()
                run(steps, "profiled")
                synchronize(dev)
                profiled_seconds = (time.perf_counter() - t1) / steps
        finally:
            undo()
    return prof, seconds, profiled_seconds


def profile_train(
    recipe: str = "paper",
    overrides: tuple[str, ...] = (),
    batch_size: int | None = None,
    steps: int = 5,
    warmup: int = 3,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    compile_: bool = False,
    top: int = 15,
    trace: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Step time, images/s, and a torch.profiler breakdown of `steps` profiled training steps."""
    check_step_options(precision, batch_size, steps)
    if warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {warmup}")
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    if trace is not None:
        writable_file(trace, "--trace")  # before the work, so that a typo does not throw the profile away
    dev = resolve_device(device)
    bench = step_bench(recipe, overrides, batch_size, dev, precision, channels_last, compile_)  # as bench train
    prof, seconds, profiled_seconds = _profile_steps(bench, steps, warmup, dev, compile_, progress)
    if bench.harness.guard.bad_step() is not None:
        raise UserError("the profiled steps' loss is not finite; check the recipe's learning rate")
    timed = timed_events(prof.events(), device=dev.type == "cuda")
    summary = summarise(timed, steps, top)
    n = bench.batch_size
    report: dict[str, Any] = {
        "recipe": bench.recipe.name, "batch_size": n, "crop_size": bench.recipe.data.crop_size, "device": str(dev),
        "precision": precision, "channels_last": channels_last, "compile": compile_, "warmup": warmup, "steps": steps,
        "seconds_per_step": sig(seconds), "images_per_s": sig(n / seconds),
        "profiled_seconds_per_step": sig(profiled_seconds),
        "time_counted": "kernel time on the GPU" if dev.type == "cuda" else "self CPU time of ops",
        **summary,
    }
    if dev.type == "cuda":  # below 1: the GPU waits for the host (launches, syncs) part of each step
        report["device_busy_fraction"] = round(summary["measured_ms_per_step"] / 1e3 / seconds, 4)
    if trace is not None:
        report["trace"] = str(write_trace(prof, trace))
    report["machine"] = machine_info()
    return report


def _profile_steps(bench: Any, steps: int, warmup: int, dev: torch.device, compile_: bool,
                   progress: bool) -> tuple[Any, float, float]:
    """`_run` over the bench's training step, with cuDNN's autotuner as training sets it on GPUs."""
    count = 0

    def step() -> None:
        nonlocal count
        count += 1
        bench.harness.step(bench.images, bench.labels, count)

    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda" or benchmark  # as alexrepro.training.build sets it on GPUs
    try:
        with contextlib.ExitStack() as stack:
            if compile_ and dev.type == "cpu":  # inductor's C++ kernels reach the profiler only with this
                import torch._inductor.config as inductor_config

                stack.enter_context(inductor_config.patch({"cpp.enable_kernel_profile": True}))
            labelled = None if compile_ else bench.harness.model
            return _run(step, steps, warmup, dev, labelled, progress)
    finally:
        torch.backends.cudnn.benchmark = benchmark


def write_trace(prof: Any, path: str | Path) -> Path:
    """The profile as a Chrome/Perfetto trace, written atomically (JSON; gzip-compressed for a .gz name)."""
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="alexrepro-trace-") as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        data = raw.read_bytes()
    atomic_write_bytes(path, gzip.compress(data, compresslevel=6) if path.name.endswith(".gz") else data)
    return path
