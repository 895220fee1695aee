"""The eval report: the JSON object (error rates beside the paper's row), the per-class and per-image files."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alexrepro.evaluation.classes import class_fields
from alexrepro.evaluation.metrics import ErrorCounts
from alexrepro.evaluation.variants import TEST_TIME
from alexrepro.process.atomic import atomic_write_text
from alexrepro.topk import TOP_KS

if TYPE_CHECKING:
    import torch

    from alexrepro.evaluation.members import Member
    from alexrepro.evaluation.options import EvalOptions

PREDICTIONS_K = 5  # §6: the top-5 labels kept per image


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
    from alexrepro.evaluation.paper_tables import choose_table, compare_with_paper

    table = choose_table(opts.paper_table, dataset.manifest.source, opts.split)
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
        # imported weights (alexrepro import): their published row beside ours (evaluation/published.py)
        "published": published_for(members, opts.crops, ours1, ours5, dataset.manifest.resize),
        "per_class": str(opts.per_class) if opts.per_class else None,
        "predictions": str(opts.predictions) if opts.predictions else None,
    }


def published_for(
    members: list[Member], crops: int, top1: float | None, top5: float | None, resize: str
) -> dict[str, Any] | None:
    """The published row of a single imported checkpoint; None for trained nets and ensembles."""
    from alexrepro.evaluation.published import published_row

    return published_row(members[0].origin, crops, top1, top5, resize) if len(members) == 1 else None


def write_per_class(path: Path, counts: ErrorCounts, classes: list[dict[str, Any]]) -> None:
    """CSV of each class's image count and top-k error (percent), written atomically."""
    names = class_fields(classes)
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
    names = class_fields(classes)
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
