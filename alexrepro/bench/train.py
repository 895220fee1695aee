"""Benchmark a training step: ours beside plain loops, and against the device's compute ceiling.

Three timings on the same synthetic batches, in one process:
  ours       the recipe's net and optimiser through alexrepro.training.step (autocast, loss, top-k tally,
             the NaN watchdog's device-side check, the paper's update rule as one fused kernel): what
             `alexrepro train` runs between two metric reads
  plain      the same net with torch.optim.SGD in the plainest loop (forward, loss, backward, step):
             ours ÷ plain is the overhead of our step
  torchvision torchvision's AlexNet (64-192-384-256-256, no LRN, no groups) with torch.optim.SGD in the
             plain loop: the reference most users know
The ceiling is the measured matmul rate ÷ (3 × 2 × multiply-adds per image): forward plus a backward
of about twice its cost; the report says what fraction of it each loop reaches. Ours ÷ torchvision is
also given per multiply-add (each net's own forward count), which takes the nets' sizes out of the ratio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alexrepro.bench.lrn import lrn_timings
from alexrepro.bench.machine import machine_info
from alexrepro.bench.timing import check_step_options, matmul_rate, sig, synthetic_batch, time_interleaved
from alexrepro.errors import UserError
from alexrepro.nets.lrn import check_kernel_device
from alexrepro.nets.summary import forward_macs
from alexrepro.recipe import Recipe
from alexrepro.recipe_reader import load_recipe
from alexrepro.runtime import resolve_device
from alexrepro.training.step import StepHarness, autocast, build_step, place_model


def optimizer_timings(model: torch.nn.Module, cfg: Any, device: torch.device, steps: int = 5,
                      rounds: int = 3) -> dict[str, Any]:
    """Seconds per update over the net's parameters: our fused §5 step, §5 written per tensor, torch's SGD.

    The per-tensor loop is how §5's rule was applied before the fused kernel (four passes over every
    weight tensor and its velocity); torch.optim.SGD runs with its defaults (foreach on CUDA).
    """
    from alexrepro.training.optim import make_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(1)
    for p in params:
        # laid out as the parameter (channels_last too), as autograd's gradients are
        p.grad = torch.empty_like(p).copy_(torch.randn(p.shape, generator=gen) * 1e-3)
    ours = make_optimizer(model, dataclasses.replace(cfg, name="paper"))
    sgd = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    velocity = [torch.zeros_like(p) for p in params]
    lr, mu, wd = cfg.lr, cfg.momentum, cfg.weight_decay

    @torch.no_grad()
    def per_tensor() -> None:  # v ← μ·v − λ·ε·w − ε·g, w ← w + v, tensor by tensor
        for p, v in zip(params, velocity, strict=True):
            v.mul_(mu).add_(p, alpha=-wd * lr).add_(p.grad, alpha=-lr)
            p.add_(v)

    secs = time_interleaved({"fused": ours.step, "per_tensor": per_tensor, "torch_sgd": sgd.step},
                            steps, 1, rounds, device)
    return {"parameters": sum(p.numel() for p in params),
            "seconds_per_update": {k: sig(v) for k, v in secs.items()},
            "fused_speedup_vs_per_tensor": sig(secs['per_tensor'] / secs['fused']),
            "fused_speedup_vs_torch_sgd": sig(secs['torch_sgd'] / secs['fused'])}


def _cycle(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Full batches from the loader forever, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


@dataclass
class StepBench:
    """The recipe's training step on a fixed synthetic batch: what `bench train` and `bench profile` time."""

    recipe: Recipe
    batch_size: int
    images: torch.Tensor
    labels: torch.Tensor
    harness: StepHarness  # built as `alexrepro train` builds it, with the benchmark's precision and format
    precision: str
    channels_last: bool
    compile_: bool


def step_bench(recipe: str, overrides: tuple[str, ...], batch_size: int | None, device: torch.device,
               precision: str, channels_last: bool, compile_: bool) -> StepBench:
    """The recipe (with overrides), a synthetic batch and the step harness seeded 0, as both benchmarks use."""
    loaded = load_recipe(recipe, list(overrides))
    check_kernel_device(loaded.run.lrn_kernel, device.type, compile_ or loaded.run.compile)
    n = batch_size or loaded.optim.batch_size
    images, labels = synthetic_batch(n, loaded.data.crop_size, loaded.model.num_classes, device, channels_last)
    torch.manual_seed(0)  # the plain loop's net is built from the same seed: the same initial weights
    harness = build_step(loaded, device, precision=precision, channels_last=channels_last)
    harness.wrap(compile_=compile_)
    return StepBench(loaded, n, images, labels, harness, precision, channels_last, compile_)


def bench_train(
    recipe: str = "paper",
    overrides: tuple[str, ...] = (),
    batch_size: int | None = None,
    steps: int = 10,
    warmup: int = 3,
    rounds: int = 3,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = False,
    compile_: bool = False,
    torchvision_baseline: bool = True,
    data: str | None = None,
    loader: str = "auto",
    workers: int | None = None,
) -> dict[str, Any]:
    """images/s of our step, the plain loop and torchvision's AlexNet; fractions of the compute ceiling."""
    check_step_options(precision, batch_size, steps)
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as `alexrepro train` runs: fixed shapes, cuDNN picks its kernels
    if data is not None:
        from alexrepro.data.manifest import read_manifest

        read_manifest(data)  # before the synthetic timings, not after them
    bench = step_bench(recipe, overrides, batch_size, dev, precision, channels_last, compile_)
    loops, plain_model = plain_loops(bench, torchvision_baseline)
    loops = {"ours": lambda: bench.harness.step(bench.images, bench.labels), **loops}
    feed = None
    if data is not None:  # end to end: the same step fed by our loader from a prepared set
        from alexrepro.loaders import make_loader

        data_cfg = bench.recipe.data
        data_cfg = dataclasses.replace(data_cfg, workers=workers if workers is not None else data_cfg.workers)
        feed = make_loader(data, "train", data_cfg, bench.batch_size, train=True, device=dev, seed=0, kind=loader,
                           channels_last=channels_last)
        batches = _cycle(feed)
        loops["end_to_end"] = lambda: bench.harness.step(*next(batches))
    try:
        results = time_interleaved(loops, steps, warmup, rounds, dev)
    finally:
        if feed is not None:
            feed.close()
    if bench.harness.guard.bad_step() is not None:  # read once, after the timings, as the training loop reads it
        raise UserError("the benchmark's loss is not finite; check the recipe's learning rate")
    report = train_report(bench, results, steps, rounds)
    report["optimizer"] = optimizer_timings(plain_model, bench.recipe.optim, dev, rounds=rounds)

    report["lrn"] = lrn_timings(plain_model, bench.images, bench.harness.amp_dtype, rounds=rounds)
    report["machine"] = machine_info()
    return report


def plain_loops(bench: StepBench, torchvision_baseline: bool) -> tuple[dict[str, Callable[[], None]], torch.nn.Module]:
    """The plain loop on the recipe's net (same seed as ours) and, at crops of 63 or more, on torchvision's
    AlexNet; and the plain loop's net (the optimiser and LRN timings run on it)."""
    import torchvision

    from alexrepro.nets import build_net, set_run_kernels

    recipe, device, amp = bench.recipe, bench.harness.device, bench.harness.amp_dtype

    def placed(model: torch.nn.Module) -> torch.nn.Module:
        model = place_model(model, device, bench.channels_last)
        return torch.compile(model) if bench.compile_ else model

    def plain_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable[[], None]:
        def step() -> None:
            with autocast(device, amp):
                loss = F.cross_entropy(model(bench.images), bench.labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    torch.manual_seed(0)
    plain_model = set_run_kernels(build_net(recipe.model, recipe.data.crop_size), recipe.run)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=recipe.optim.lr, momentum=recipe.optim.momentum,
                                weight_decay=recipe.optim.weight_decay)
    loops = {"plain": plain_step(placed(plain_model), plain_opt)}
    if torchvision_baseline and recipe.data.crop_size >= 63:
        tv_model = torchvision.models.alexnet(num_classes=recipe.model.num_classes)
        tv_opt = torch.optim.SGD(tv_model.parameters(), lr=recipe.optim.lr, momentum=0.9, weight_decay=5e-4)
        loops["torchvision"] = plain_step(placed(tv_model), tv_opt)
    return loops, plain_model


def train_report(bench: StepBench, results: dict[str, float], steps: int, rounds: int) -> dict[str, Any]:
    """Each loop's step time, images/s and fraction of the ceiling, and the ratios between the loops."""
    recipe, n, crop, device = bench.recipe, bench.batch_size, bench.recipe.data.crop_size, bench.harness.device
    macs = forward_macs(recipe.model, crop)
    rate = matmul_rate(device, bench.precision)
    ceiling = rate / (3 * 2 * macs)
    report: dict[str, Any] = {
        "recipe": recipe.name, "batch_size": n, "crop_size": crop, "device": str(device), "precision": bench.precision,
        "channels_last": bench.channels_last, "compile": bench.compile_, "steps": steps, "rounds": rounds,
        "forward_macs_per_image": macs, "matmul_gflops": round(rate / 1e9, 2),
        "ceiling_images_per_s": round(ceiling, 1), "loops": {},
    }
    for name, secs in results.items():
        ips = n / secs
        report["loops"][name] = {"seconds_per_step": sig(secs), "images_per_s": sig(ips),
                                 "fraction_of_ceiling": sig(ips / ceiling)}
    report["overhead_vs_plain"] = round(results["ours"] / results["plain"] - 1, 4)
    if "end_to_end" in results:
        # Training drops the last partial batch (data.drop_last), so every timed batch has n images.
        report["end_to_end_vs_synthetic"] = round(results["ours"] / results["end_to_end"], 4)
    if "torchvision" in results:
        report["ours_vs_torchvision"] = round(results["torchvision"] / results["ours"], 3)
        # Both nets do about the same work per image (the paper's 724 M forward multiply-adds at 224, torchvision's
        # 714 M), so a ratio below 1 is kernels, not FLOPs: the same ratio per multiply-add says how much. The
        # plain loop's torchvision.models.alexnet is full width whatever the recipe's width, and so is this count.
        tv_macs = forward_macs(dataclasses.replace(recipe.model, arch="torchvision-alexnet", width=1.0, fc_width=4096),
                               crop)
        report["torchvision_forward_macs_per_image"] = tv_macs
        report["ours_vs_torchvision_per_mac"] = round(results["torchvision"] / results["ours"] * macs / tv_macs, 3)
    return report
