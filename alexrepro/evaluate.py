"""Evaluation: §4.1's ten-patch (or centre-patch) test, §6's averaged nets, top-1/top-5 error.

The test-time variants are named functions chosen by name (`TEST_TIME`), as in airbench. On
several processes (torch.distributed; NCCL on GPUs, gloo on CPUs) each rank scores its slice of
every global batch (`alexrepro.loaders.order`); the tallies are summed and the total is checked
against the split's size, so no image is dropped or counted twice.
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
from alexrepro.errors import UserError, WorkFailed
from alexrepro.metrics import TOP_KS, ErrorCounts, average_crops, average_ensemble, softmax, topk_classes

TEN_CROPS = 10  # §4.1: four corner patches, the centre patch, and their horizontal reflections
PREDICTIONS_K = 5  # §6: the top-5 labels kept per image


# --------------------------------------------------------------------------------------------- test time
def predict_center(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, c, c) centre patches → (N, K) softmax."""
    return softmax(model(images))


def predict_ten_crop(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 10, 3, c, c) patches → (N, K): §4.1's softmax averaged over the ten patches."""
    n, crops = images.shape[:2]
    probs = softmax(model(images.reshape(n * crops, *images.shape[2:])))
    return average_crops(probs.view(n, crops, -1))


TEST_TIME: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "center": predict_center,
    "ten": predict_ten_crop,
}
CROPS_TO_VARIANT = {1: "center", TEN_CROPS: "ten"}


def variant_for(crops: int) -> str:
    """The test-time variant's name for a crop count (1 → "center", 10 → "ten")."""
    if crops not in CROPS_TO_VARIANT:
        raise UserError(f"--crops must be 1 (centre patch) or 10 (§4.1's ten patches), got {crops}")
    return CROPS_TO_VARIANT[crops]


def predict_ensemble(models: list[nn.Module], images: torch.Tensor, variant: str) -> torch.Tensor:
    """The softmax of each net under a test-time variant, averaged over the nets (§6)."""
    fn = TEST_TIME[variant]
    return average_ensemble([fn(m, images) for m in models])


# --------------------------------------------------------------------------------------------- members
@dataclass
class Member:
    """One checkpoint of an ensemble, loaded."""

    path: Path
    model: nn.Module
    recipe: Any  # alexrepro.recipe.Recipe
    classes: list[dict[str, Any]]


def load_members(paths: list[Path], device: torch.device) -> list[Member]:
    """Load every checkpoint; UserError if the members disagree on classes or input size."""
    from alexrepro.checkpoint import model_from_checkpoint

    if not paths:
        raise UserError("give at least one --checkpoint")
    members = []
    for p in paths:
        model, recipe, classes = model_from_checkpoint(Path(p))
        members.append(Member(Path(p), model.to(device).eval(), recipe, classes))
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


def class_ids(classes: list[dict[str, Any]]) -> list[str]:
    """The WNIDs of a class list in index order (the identity of a label space)."""
    return [str(c.get("wnid", c.get("index"))) for c in sorted(classes, key=lambda c: int(c["index"]))]


def check_classes(member: Member, set_classes: list[dict[str, Any]], out: Path) -> None:
    """UserError unless a checkpoint was trained on the prepared set's classes."""
    n_model = member.recipe.model.num_classes
    if n_model != len(set_classes) or len(member.classes) != len(set_classes):
        raise UserError(
            f"{member.path} was trained for {n_model} classes but {out} has {len(set_classes)}; "
            "evaluate it on the set it was trained on"
        )
    if class_ids(member.classes) != class_ids(set_classes):
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


def dist_info() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, or (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_results(counts: ErrorCounts, predictions: list[dict[str, Any]], device: torch.device) -> list[Any]:
    """Sum the tallies over ranks (in place) and collect every rank's predictions, in rank order."""
    import torch.distributed as dist

    rank, world = dist_info()
    if world == 1:
        return predictions
    tally = torch.from_numpy(counts.as_array()).to(device)
    dist.all_reduce(tally, op=dist.ReduceOp.SUM)
    merged = tally.cpu().numpy()
    counts.add_array(merged - counts.as_array())
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, predictions)
    return [p for part in parts for p in part]


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


def resolve_device(name: str, rank: int = 0) -> torch.device:
    """"auto" → this rank's GPU if there is one, else the CPU; otherwise the named device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for a GPU but CUDA is not available here; use --device cpu")
    return device


def check_options(opts: EvalOptions) -> str:
    """UserError for options that cannot work, before any process starts; returns the crop variant."""
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
    from alexrepro.loaders import make_loader
    from alexrepro.prepared import open_split
    from alexrepro.progress import make_progress

    variant = check_options(opts)
    dataset = open_split(opts.out, opts.split)  # UserError if OUT or the split does not exist
    rank, world = dist_info()
    device = resolve_device(opts.device, rank)
    members = load_members(opts.checkpoints, device)
    for m in members:
        check_classes(m, dataset.classes, Path(opts.out))
    n = len(dataset)
    if n == 0:
        raise UserError(f"{opts.out} split {opts.split!r} holds no images; prepare it again")
    loader = make_loader(
        opts.out, opts.split, members[0].recipe.data, opts.batch_size, train=False, device=device,
        rank=rank, world_size=world, crops=variant, kind=opts.loader,
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
    seconds = _max_over_ranks(scored.seconds, device)
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


def _max_over_ranks(seconds: float, device: torch.device) -> float:
    import torch.distributed as dist

    if dist_info()[1] == 1:
        return seconds
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


# --------------------------------------------------------------------------------------------- report
def _pct(x: float) -> float:
    return round(100.0 * x, 4)


def make_report(
    opts: EvalOptions, variant: str, members: list[Member], dataset: Any, counts: ErrorCounts,
    seconds: float, world: int, device: torch.device,
) -> dict[str, Any]:
    """The eval JSON object: error rates in percent (as the paper prints them) beside the paper's rows.

    `paper.comparable` names the row measured with the same protocol (nets and test patches) and the
    differences are taken against it only; with no such row (Table 2 has no centre-patch row) they are
    None and `paper.no_comparable` says which protocols the table does have.
    """
    from alexrepro.paper_tables import choose_table, compare_with_paper

    table = choose_table(opts.paper_table, dataset.manifest.get("source"), opts.split)
    result: dict[str, Any] = {}
    for k in TOP_KS:
        if k in counts.ks:
            lo, hi = counts.interval(k)
            result[f"top{k}_error_pct"] = _pct(counts.error(k))
            result[f"top{k}_ci95_pct"] = [_pct(lo), _pct(hi)]
        else:
            result[f"top{k}_error_pct"] = None
            result[f"top{k}_ci95_pct"] = None
    ours1, ours5 = result["top1_error_pct"], result["top5_error_pct"]
    return {
        "command": "eval",
        "out": str(opts.out),
        "split": opts.split,
        "checkpoints": [str(m.path) for m in members],
        "nets": len(members),
        "crops": opts.crops,
        "test_time": TEST_TIME[variant].__name__,
        "images": counts.total,
        "classes": counts.num_classes,
        **result,
        "seconds": round(seconds, 4),
        "images_per_s": round(counts.total / seconds, 2) if seconds > 0 else None,
        "device": str(device),
        "world_size": world,
        "paper": compare_with_paper(table, opts.split, len(members), opts.crops, ours1, ours5),
        "per_class": str(opts.per_class) if opts.per_class else None,
        "predictions": str(opts.predictions) if opts.predictions else None,
    }


def _class_fields(classes: list[dict[str, Any]]) -> dict[int, tuple[str, str]]:
    return {int(c["index"]): (str(c.get("wnid", "")), str(c.get("name", ""))) for c in classes}


def write_per_class(path: Path, counts: ErrorCounts, classes: list[dict[str, Any]]) -> None:
    """CSV of each class's image count and top-k error (percent), written atomically."""
    import csv
    import io

    from alexrepro.atomic import atomic_write_text

    names = _class_fields(classes)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "wnid", "name", "images"] + [f"top{k}_error_pct" for k in counts.ks])
    errs = {k: counts.class_error(k) for k in counts.ks}
    for c in range(counts.num_classes):
        wnid, name = names.get(c, ("", ""))
        row = [c, wnid, name, int(counts.images[c])]
        row += ["" if counts.images[c] == 0 else _pct(float(errs[k][c])) for k in counts.ks]
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())


def write_predictions(
    path: Path, predictions: list[dict[str, Any]], keys: list[str], classes: list[dict[str, Any]]
) -> None:
    """Each image's top-5 classes and probabilities with its key: CSV for *.csv, else JSON lines."""
    import csv
    import io
    import json

    from alexrepro.atomic import atomic_write_text

    names = _class_fields(classes)
    ordered = sorted(predictions, key=lambda p: p["index"])
    buf = io.StringIO()
    if Path(path).suffix.lower() == ".csv":
        w = csv.writer(buf, lineterminator="\n")
        k = PREDICTIONS_K
        w.writerow(["key", "label", "wnid"] + [f"top{i + 1}_{f}" for i in range(k) for f in ("wnid", "prob")])
        for p in ordered:
            row = [keys[p["index"]], p["label"], names.get(p["label"], ("", ""))[0]]
            for c, pr in zip(p["top"], p["prob"], strict=True):
                row += [names.get(c, ("", ""))[0] or c, f"{pr:.6f}"]
            w.writerow(row)
    else:
        for p in ordered:
            top = [{"index": c, "wnid": names.get(c, ("", ""))[0], "name": names.get(c, ("", ""))[1],
                    "prob": round(pr, 6)} for c, pr in zip(p["top"], p["prob"], strict=True)]
            buf.write(json.dumps({"key": keys[p["index"]], "label": p["label"], "top5": top}) + "\n")
    atomic_write_text(path, buf.getvalue())


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
