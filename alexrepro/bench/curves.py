"""Train the same steps under two or more recipe variants and compare their loss curves (`alexrepro bench curves`).

Each variant is the recipe with its own overrides (for example `run.lrn_kernel=triton` against
`run.lrn_kernel=torch`): the net is built from the same seed, then trained for the same number of
steps of `alexrepro train`'s step (training.step) on the same synthetic batches, a fixed cycle of
`--batches` batches of random images and labels (memorised, so the loss moves within a few hundred
steps). The losses stay on the device until the end (one read). The report gives each variant's
per-step loss and, against the first variant, the largest relative difference of any step's loss
and of the loss averaged over windows of ten steps, and whether each lies within the tolerance.
"""

from __future__ import annotations

from typing import Any

import torch

from alexrepro.bench.machine import machine_info
from alexrepro.bench.timing import check_step_options
from alexrepro.bench.train import step_bench
from alexrepro.errors import UserError
from alexrepro.runtime import resolve_device

TOLERANCE = 0.01  # relative: "loss curves within 1%"
WINDOW = 10  # steps per window of the smoothed comparison


def _batches(n: int, count: int, crop: int, classes: int, device: torch.device, channels_last: bool,
             seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` fixed batches of random images (about the spread of mean-subtracted pixels) and labels."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(seed)
    return [((torch.randn(n, 3, crop, crop, generator=gen) * 50).to(device).contiguous(memory_format=fmt),
             torch.randint(0, classes, (n,), generator=gen).to(device)) for _ in range(count)]


def train_losses(recipe: str, overrides: tuple[str, ...], steps: int, batches: int, batch_size: int | None,
                 device: torch.device, precision: str, channels_last: bool, compile_: bool) -> list[float]:
    """The mean loss of each of `steps` training steps of the recipe with overrides, from seed 0."""
    bench = step_bench(recipe, overrides, batch_size, device, precision, channels_last, compile_)
    data = _batches(bench.batch_size, batches, bench.recipe.data.crop_size, bench.recipe.model.num_classes, device,
                    channels_last)
    torch.manual_seed(1)  # dropout's masks: the same stream in every variant
    tallies = [bench.harness.step(*data[i % batches], i + 1) for i in range(steps)]
    t = torch.stack(tallies).cpu().double()  # (loss sum, top-1, top-5, images) per step; one host read
    if bench.harness.guard.bad_step() is not None:
        raise UserError(f"the loss of variant {', '.join(overrides) or '(the recipe)'} is not finite")
    return (t[:, 0] / t[:, 3]).tolist()


def compare(reference: list[float], other: list[float], window: int = WINDOW) -> dict[str, Any]:
    """The largest relative difference of `other` from `reference`, step by step and over windows."""
    a, b = torch.tensor(reference, dtype=torch.float64), torch.tensor(other, dtype=torch.float64)
    per_step = ((b - a).abs() / a.abs().clamp_min(1e-12))
    k = max(1, min(window, len(a)))
    m = len(a) // k * k
    wa, wb = a[:m].view(-1, k).mean(1), b[:m].view(-1, k).mean(1)
    per_window = ((wb - wa).abs() / wa.abs().clamp_min(1e-12))
    worst = int(per_step.argmax())
    return {"max_rel_diff_step": round(float(per_step.max()), 6), "at_step": worst + 1,
            "max_rel_diff_window": round(float(per_window.max()), 6), "mean_rel_diff_step": round(float(per_step.mean()), 6),
            "within_tolerance": bool(per_window.max() <= TOLERANCE), "within_tolerance_every_step": bool(per_step.max() <= TOLERANCE)}


def bench_curves(recipe: str = "paper", common: tuple[str, ...] = (), variants: tuple[str, ...] = (),
                 steps: int = 200, batches: int = 8, batch_size: int | None = None, device: str = "cpu",
                 precision: str = "fp32", channels_last: bool = False, compile_: bool = False) -> dict[str, Any]:
    """Loss curves of the recipe under each variant ("k=v,k=v" overrides, the first the reference), compared."""
    check_step_options(precision, batch_size, steps)
    if len(variants) < 2:
        raise UserError("give at least two --variant, e.g. --variant run.lrn_kernel=triton --variant run.lrn_kernel=torch")
    if batches < 1:
        raise UserError(f"--batches must be at least 1, got {batches}")
    dev = resolve_device(device)
    parsed = {v: tuple(p.strip() for p in v.split(",") if p.strip()) for v in variants}
    losses = {v: train_losses(recipe, (*common, *o), steps, batches, batch_size, dev, precision, channels_last,
                              compile_) for v, o in parsed.items()}
    ref = variants[0]
    report: dict[str, Any] = {
        "recipe": recipe, "common": list(common), "variants": list(variants), "reference": ref, "steps": steps,
        "batches": batches, "device": str(dev), "precision": precision, "channels_last": channels_last,
        "compile": compile_, "tolerance": TOLERANCE, "window": WINDOW,
        "loss_first_last": {v: [round(x[0], 5), round(x[-1], 5)] for v, x in losses.items()},
        "against_reference": {v: compare(losses[ref], x) for v, x in losses.items() if v != ref},
        "losses": {v: [round(x, 5) for x in xs] for v, xs in losses.items()},
    }
    report["within_tolerance"] = all(c["within_tolerance"] for c in report["against_reference"].values())
    report["machine"] = machine_info()
    return report
