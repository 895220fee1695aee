"""Evaluation: §4.1's ten-patch (or centre-patch) test, §6's averaged nets, top-1/top-5 error.

`run_evaluation` is the entry point (here, in spawned processes, or under torchrun, as training's
`run_training`). The test-time variants are named functions chosen by name
(`alexrepro.evaluation.test_time.TEST_TIME`), their views the preset's (`alexrepro.loaders.presets`).
On several processes (torch.distributed; NCCL on GPUs, gloo on CPUs) each rank scores its slice of
every global batch (`alexrepro.loaders.order`); the tallies are summed and the total is checked
against the split's size, so no image is dropped or counted twice. The report: `report.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexrepro.atomic import writable_file
from alexrepro.distributed import all_reduce_sum, gather_objects, max_over_ranks, rank_and_world
from alexrepro.errors import UserError, WorkFailed
from alexrepro.evaluation.classes import class_ids, same_classes
from alexrepro.evaluation.metrics import TOP_KS, ErrorCounts, topk_classes
from alexrepro.evaluation.report import PREDICTIONS_K, make_report, write_per_class, write_predictions
from alexrepro.evaluation.test_time import predict_ensemble
from alexrepro.loaders.presets import TEN_CROPS, saved_mean, variant_for
from alexrepro.runtime import resolve_device


# --------------------------------------------------------------------------------------------- members
@dataclass
class Member:
    """One checkpoint of an ensemble, loaded."""

    path: Path
    model: nn.Module
    recipe: Any  # alexrepro.recipe.Recipe
    classes: list[dict[str, Any]]
    stats: dict[str, Any] | None = None  # the colour statistics the checkpoint carries (its mean image)
    origin: Any = None  # alexrepro.training.checkpoint.Origin of imported weights; None for a trained net


def load_members(paths: list[Path], device: torch.device) -> list[Member]:
    """Load every checkpoint; UserError if the members disagree on classes or input size."""
    from alexrepro.training.checkpoint import model_from_checkpoint
    from alexrepro.training.weight_file import read_net

    if not paths:
        raise UserError("give at least one --checkpoint")
    members = []
    for p in paths:
        ckpt = read_net(Path(p))  # a checkpoint or a .safetensors weight file
        model, recipe, classes = model_from_checkpoint(ckpt)
        members.append(Member(Path(p), model.to(device).eval(), recipe, classes, ckpt.stats, ckpt.origin))
    first = members[0]
    for m in members[1:]:
        if class_ids(m.classes) != class_ids(first.classes):
            raise UserError(
                f"ensemble members have different class lists: {first.path} has {len(first.classes)} "
                f"classes, {m.path} has {len(m.classes)} (or another order); average only nets trained on the same set"
            )
        a, b = first.recipe.data, m.recipe.data
        if (a.image_size, a.crop_size, a.mean) != (b.image_size, b.crop_size, b.mean):
            raise UserError(
                f"ensemble members see different inputs: {first.path} uses image {a.image_size}, crop "
                f"{a.crop_size}, mean {a.mean}; {m.path} uses {b.image_size}, {b.crop_size}, {b.mean}"
            )
    return members


def check_classes(member: Member, set_classes: list[dict[str, Any]], out: Path) -> None:
    """UserError unless a checkpoint was trained on the prepared set's classes (imported weights without
    WNIDs: the same number of classes, indexed as ILSVRC's sorted WNIDs)."""
    n_model = member.recipe.model.num_classes
    if n_model != len(set_classes) or len(member.classes) != len(set_classes):
        raise UserError(
            f"{member.path} was trained for {n_model} classes but {out} has {len(set_classes)}; "
            "evaluate it on the set it was trained on"
        )
    if not same_classes(member.classes, set_classes):
        raise UserError(
            f"{member.path} was trained on different classes than {out} (the WNIDs differ); "
            "evaluate it on the set it was trained on"
        )


# --------------------------------------------------------------------------------------------- ranks
def rank_indices(plan: Any) -> Iterator[int]:
    """The global image indices a loader yields on its rank, in order (its `BatchPlan`, epoch 0)."""
    for b in range(plan.num_batches):
        idx = plan.global_batch(0, b)
        lo, hi = plan.rank_bounds(len(idx))
        yield from (int(i) for i in idx[lo:hi])


def gather_results(counts: ErrorCounts, predictions: list[dict[str, Any]], device: torch.device) -> list[Any]:
    """Sum the tallies over ranks (in place) and collect every rank's predictions, in rank order."""
    if rank_and_world()[1] == 1:
        return predictions
    tally = all_reduce_sum(torch.from_numpy(counts.as_array()).to(device))
    counts.add_array(tally.cpu().numpy() - counts.as_array())
    return [p for part in gather_objects(predictions) for p in part]


# --------------------------------------------------------------------------------------------- scoring
@dataclass
class Scored:
    """What one pass over a split gives: tallies, per-image top-5 and timing."""

    counts: ErrorCounts
    predictions: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def score_batches(
    models: list[nn.Module],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    indices: Iterator[int],
    variant: str,
    num_classes: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> Scored:
    """Score every batch with the ensemble, tallying errors and keeping each image's top-5 classes."""
    ks = tuple(k for k in TOP_KS if k <= num_classes)  # a set with fewer than 5 classes has no top-5
    counts = ErrorCounts(num_classes=num_classes, ks=ks)
    scored = Scored(counts)
    start = time.perf_counter()
    with torch.inference_mode():
        for images, labels in batches:
            if len(labels) == 0:  # a rank with no image of the last partial batch
                continue
            images = images.to(device, non_blocking=True)
            probs = predict_ensemble(models, images, variant).float()
            labels = torch.as_tensor(labels).to(probs.device).long()
            counts.update(probs, labels)
            vals, idx = topk_classes(probs, PREDICTIONS_K)
            for v, i, y in zip(vals.cpu().tolist(), idx.cpu().tolist(), labels.cpu().tolist(), strict=True):
                scored.predictions.append({"index": next(indices), "label": y, "top": i, "prob": v})
            if on_batch is not None:
                on_batch(len(labels))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    scored.seconds = time.perf_counter() - start
    return scored


# --------------------------------------------------------------------------------------------- the run
@dataclass
class EvalOptions:
    """Everything `alexrepro eval` takes."""

    out: Path
    checkpoints: list[Path]
    crops: int = TEN_CROPS
    split: str = "val"
    batch_size: int = 128
    device: str = "auto"
    loader: str = "auto"
    paper_table: str | None = None
    per_class: Path | None = None
    predictions: Path | None = None
    procs: int = 1  # processes splitting the images, spawned here (one per GPU; gloo on CPUs)


def check_options(opts: EvalOptions) -> str:
    """UserError for options that cannot work, before any process starts; returns the crop variant."""
    if opts.procs < 1:
        raise UserError(f"--procs must be at least 1, got {opts.procs}")
    variant = variant_for(opts.crops)
    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {opts.batch_size}")
    resolve_device(opts.device)
    if opts.per_class is not None:
        writable_file(opts.per_class, "--per-class")
    if opts.predictions is not None:
        writable_file(opts.predictions, "--predictions")
    return variant


def evaluate(opts: EvalOptions, show_progress: bool = True) -> dict[str, Any]:
    """Score a split with one checkpoint or an ensemble and return the report (all ranks get it)."""
    from alexrepro.data.prepared import open_split
    from alexrepro.loaders import make_loader
    from alexrepro.progress import make_progress

    variant = check_options(opts)
    dataset = open_split(opts.out, opts.split)  # UserError if OUT or the split does not exist
    rank, world = rank_and_world()
    device = resolve_device(opts.device, rank)
    members = load_members(opts.checkpoints, device)
    for m in members:
        check_classes(m, dataset.classes, Path(opts.out))
    n = len(dataset)
    if n == 0:
        raise UserError(f"{opts.out} split {opts.split!r} holds no images; prepare it again")
    data = members[0].recipe.data
    loader = make_loader(
        opts.out, opts.split, data, opts.batch_size, train=False, device=device,
        rank=rank, world_size=world, crops=variant, kind=opts.loader,
        stats=saved_mean(members[0].stats, Path(opts.out), data),  # the net's own mean, else OUT's stats.h5
    )
    models = [m.model for m in members]
    progress = make_progress(transient=True)
    label = f"eval {opts.split} ({variant}, {len(models)} net{'s' if len(models) > 1 else ''})"
    with progress:
        if world > 1:
            label += f" rank 0 of {world}"
        task = progress.add_task(label, total=loader.num_images, unit="images", visible=show_progress and rank == 0)
        with loader:
            scored = score_batches(models, loader, rank_indices(loader.plan), variant, dataset.num_classes,
                                   device, on_batch=lambda k: progress.advance(task, k))
    if scored.counts.total != loader.num_images:
        raise RuntimeError(f"rank {rank} scored {scored.counts.total} images, its share is {loader.num_images}")
    predictions = gather_results(scored.counts, scored.predictions, device)
    seconds = max_over_ranks(scored.seconds, device)
    total = scored.counts.total
    if total != n:  # torchvision's evaluate() only warns when padding changes the count; we refuse
        raise WorkFailed(f"scored {total} images across {world} ranks but the split holds {n}; not reporting")
    report = make_report(opts, variant, members, dataset, scored.counts, seconds, world, device)
    report["loader"] = loader.kind  # the backend used, not the one asked for
    if rank == 0:
        if opts.per_class is not None:
            write_per_class(opts.per_class, scored.counts, dataset.classes)
        if opts.predictions is not None:
            write_predictions(opts.predictions, predictions, dataset.keys(), dataset.classes)
    return report


def evaluate_in_group(opts: EvalOptions, show_progress: bool = True) -> dict[str, Any]:
    """`evaluate` in one process of a group (torchrun or `launch`): join, score this rank's share, leave."""
    from alexrepro.distributed import cleanup, init_process_group, torchrun_env

    info = torchrun_env()
    if info is not None:
        init_process_group(info, resolve_device(opts.device, info.local_rank).type)
    try:
        return evaluate(opts, show_progress=show_progress)
    finally:
        cleanup()


def run_evaluation(opts: EvalOptions, show_progress: bool = True) -> dict[str, Any] | None:
    """Check, then evaluate here, in opts.procs spawned processes, or under torchrun (None on ranks > 0).

    show_progress is for the spawned processes (eval --json hides their bar); in this process the
    bar is always drawn, on stderr.
    """
    from alexrepro.data.prepared import open_split
    from alexrepro.distributed import launch, torchrun_env
    from alexrepro.locking import command_line
    from alexrepro.signals import Stopped

    check_options(opts)  # before spawning opts.procs processes
    open_split(opts.out, opts.split)  # the set's counts and labels checked before any work, too
    try:
        if opts.procs > 1:
            return launch(evaluate_in_group, opts.procs, (opts, show_progress))
        report = evaluate_in_group(opts, show_progress=True)
    except Stopped as e:  # eval writes only at the end, so nothing was
        raise Stopped(e.signum, f"nothing was written; run it again: {command_line()}") from None
    info = torchrun_env()  # under torchrun every rank gets the report; rank 0 returns it
    return None if info is not None and not info.is_main else report
