"""Benchmark a training step: ours beside plain loops, and against the device's compute ceiling.

Three timings on the same synthetic batches, in one process:
  ours       the recipe's net and optimiser through alexrepro.train's own step functions (autocast, loss,
             top-k tally, the NaN watchdog's check, the paper's update rule): what `alexrepro train` runs
  plain      the same net with torch.optim.SGD in the plainest loop (forward, loss, backward, step):
             ours ÷ plain is the overhead of our step
  torchvision torchvision's AlexNet (64-192-384-256-256, no LRN, no groups) with torch.optim.SGD in the
             plain loop: the reference most users know
The ceiling is the measured matmul rate ÷ (3 × 2 × multiply-adds per image): forward plus a backward
of about twice its cost; the report says what fraction of it each loop reaches.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from alexrepro.bench.machine import machine_info
from alexrepro.errors import UserError
from alexrepro.progress import emit_json
from alexrepro.recipe import load_recipe
from alexrepro.summary import forward_macs
from alexrepro.watchdog import is_finite

AMP = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_rate(device: torch.device, precision: str, n: int | None = None, seconds: float = 0.5) -> float:
    """Measured multiply-add rate (FLOP/s, 2 per multiply-add) of a square matmul in the precision."""
    n = n or (8192 if device.type == "cuda" else 1024)
    dtype = AMP[precision] or torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        count += 1
        if device.type == "cuda" and count % 10:
            continue
        _sync(device)
    _sync(device)
    return 2.0 * n**3 * count / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(loops: dict[str, Callable[[], Any]], steps: int, warmup: int, rounds: int,
                     device: torch.device) -> dict[str, float]:
    """Seconds per step of each loop: best of `rounds` rounds of `steps` steps, the loops taking turns.

    Taking turns within each round, and the best round of each, keeps a busy machine's noise from
    landing on one loop only, so the ratios between loops stay meaningful.
    """
    for step in loops.values():
        for _ in range(warmup):
            step()
    best = {name: float("inf") for name in loops}
    for _ in range(rounds):
        for name, step in loops.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            _sync(device)
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    return best


def _cycle(loader: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Full batches from the loader forever, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


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
    import torchvision

    from alexrepro.model import build_model
    from alexrepro.optim import make_optimizer
    from alexrepro.train import backward_and_update, forward_and_tally

    if precision not in AMP:
        raise UserError(f"--precision must be one of {', '.join(AMP)}, got {precision!r}")
    from alexrepro.evaluate import resolve_device

    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be 0 or more, got {workers}")
    dev = resolve_device(device)
    if data is not None:
        from alexrepro.prepared import read_manifest

        read_manifest(data)  # before the synthetic timings, not after them
    r = load_recipe(recipe, list(overrides))
    n = batch_size or r.optim.batch_size
    crop, classes = r.data.crop_size, r.model.num_classes
    amp = AMP[precision]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)
    images = (torch.randn(n, 3, crop, crop, generator=gen) * 50).to(dev).contiguous(memory_format=fmt)
    labels = torch.randint(0, classes, (n,), generator=gen).to(dev)

    def prepared(model: torch.nn.Module) -> torch.nn.Module:
        model = model.to(dev).to(memory_format=fmt)
        return torch.compile(model) if compile_ else model

    def plain_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> Callable[[], None]:
        def step() -> None:
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = F.cross_entropy(model(images), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    torch.manual_seed(0)
    ours_model = build_model(r.model, crop)
    ours_net = prepared(ours_model)
    ours_opt = make_optimizer(ours_model, r.optim)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    topk = (1, min(5, classes))

    def ours_step(x: torch.Tensor, y: torch.Tensor) -> None:  # alexrepro.train's step, watchdog check included
        losses, tally = forward_and_tally(ours_net, x, y, amp, topk, dev)
        if not is_finite(float(tally[0] / tally[3])):
            raise UserError("the benchmark's loss is not finite; check the recipe's learning rate")
        backward_and_update(losses, float(tally[3]), 1, ours_opt, scaler)

    loops: dict[str, Callable[[], Any]] = {"ours": lambda: ours_step(images, labels)}
    torch.manual_seed(0)
    plain_model = build_model(r.model, crop)
    plain_opt = torch.optim.SGD(plain_model.parameters(), lr=r.optim.lr, momentum=r.optim.momentum,
                                weight_decay=r.optim.weight_decay)
    loops["plain"] = plain_step(prepared(plain_model), plain_opt)
    if torchvision_baseline and crop >= 63:
        tv_model = torchvision.models.alexnet(num_classes=classes)
        tv_opt = torch.optim.SGD(tv_model.parameters(), lr=r.optim.lr, momentum=0.9, weight_decay=5e-4)
        loops["torchvision"] = plain_step(prepared(tv_model), tv_opt)
    feed = None
    if data is not None:  # end to end: the same step fed by our loader from a prepared set
        from alexrepro.loaders import make_loader

        d_cfg = dataclasses.replace(r.data, workers=workers if workers is not None else r.data.workers)
        feed = make_loader(data, "train", d_cfg, n, train=True, device=dev, seed=0, kind=loader,
                           channels_last=channels_last)
        batches = _cycle(feed)
        loops["end_to_end"] = lambda: ours_step(*next(batches))
    try:
        results = time_interleaved(loops, steps, warmup, rounds, dev)
    finally:
        if feed is not None:
            feed.close()

    macs = forward_macs(r.model, crop)
    rate = matmul_rate(dev, precision)
    ceiling = rate / (3 * 2 * macs)
    report: dict[str, Any] = {
        "recipe": r.name, "batch_size": n, "crop_size": crop, "device": str(dev), "precision": precision,
        "channels_last": channels_last, "compile": compile_, "steps": steps, "rounds": rounds,
        "forward_macs_per_image": macs, "matmul_gflops": round(rate / 1e9, 2),
        "ceiling_images_per_s": round(ceiling, 1), "loops": {},
    }
    for name, secs in results.items():
        ips = n / secs
        report["loops"][name] = {"seconds_per_step": float(f"{secs:.4g}"), "images_per_s": float(f"{ips:.4g}"),
                                 "fraction_of_ceiling": float(f"{ips / ceiling:.4g}")}
    report["overhead_vs_plain"] = round(results["ours"] / results["plain"] - 1, 4)
    if "end_to_end" in results:
        # Training drops the last partial batch (data.drop_last), so every timed batch has n images.
        report["end_to_end_vs_synthetic"] = round(results["ours"] / results["end_to_end"], 4)
    if "torchvision" in results:
        report["ours_vs_torchvision"] = round(results["torchvision"] / results["ours"], 3)
    report["machine"] = machine_info()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m alexrepro.bench.train", description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="paper")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--data", default=None, help="a prepared set: also time the step fed by our loader")
    a = parser.parse_args(argv)
    emit_json(bench_train(a.recipe, tuple(a.overrides), batch_size=a.batch_size, steps=a.steps, device=a.device,
                          precision=a.precision, channels_last=a.channels_last, compile_=a.compile, data=a.data))


if __name__ == "__main__":
    main()
