"""Training curves of one or several runs overlaid: loss, top-1 and top-5 error (train and val), learning rate.

Reads the per-epoch records of RUN/metrics.jsonl (`"kind": "epoch"`, written by alexrepro.training.loop):
`epoch` (0-based), `train_loss`, `train_top1_error`, `train_top5_error`, `val_top1_error`,
`val_top5_error` (fractions) and `lr`. The x axis is epochs completed (epoch + 1); errors are
plotted in percent, as the paper prints them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alexrepro.errors import UserError
from alexrepro.figures.common import figure_path, new_figure, save_figure

METRICS = "metrics.jsonl"
SERIES = ("train_loss", "train_top1_error", "train_top5_error", "val_top1_error", "val_top5_error", "lr")
WIDTH_IN, HEIGHT_IN = 12.0, 8.0  # 1200 × 800 pixels at the common DPI


def read_epoch_records(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The run's per-epoch metric records in epoch order (a later line for the same epoch wins; torn lines skipped)."""
    run = Path(run_dir)
    path = run / METRICS
    if not run.is_dir():
        what = "is not a folder" if run.exists() else "does not exist"
        raise UserError(f"{run} {what}; give a run folder (alexrepro train --run RUN)")
    if not path.is_file():
        raise UserError(f"{run} has no {METRICS}; give a run folder written by alexrepro train")
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a killed run may leave a torn last line
        if isinstance(rec, dict) and rec.get("kind") == "epoch" and isinstance(rec.get("epoch"), int):
            by_epoch[rec["epoch"]] = rec  # a resumed run re-logs an epoch: keep the last
    return [by_epoch[e] for e in sorted(by_epoch)]


def epoch_series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs completed, values) of one metric; errors as percentages; records lacking it are left out."""
    xs, ys = [], []
    for rec in records:
        value = rec.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            xs.append(int(rec["epoch"]) + 1)
            ys.append(100.0 * float(value) if key.endswith("_error") else float(value))
    return xs, ys


def run_labels(runs: Sequence[Path]) -> list[str]:
    """A legend name per run: its folder name, or its path where two folders share a name."""
    names = [Path(r).name or str(r) for r in runs]
    return [str(r) if names.count(n) > 1 else n for r, n in zip(runs, names, strict=True)]


def draw_curves(runs: Sequence[str | os.PathLike[str]], png: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Write the curves figure of one or several runs; returns {"path", "runs": [{"run", "label", "epochs"}]}."""
    if not runs:
        raise UserError("give at least one run folder")
    paths = [Path(r) for r in runs]
    records = [read_epoch_records(p) for p in paths]
    for p, recs in zip(paths, records, strict=True):
        if not recs:
            raise UserError(f"{p}/{METRICS} has no epoch records yet; let the run finish an epoch first")
    fig_path = figure_path(paths[0], "curves.png", png)
    labels = run_labels(paths)
    fig = new_figure(WIDTH_IN, HEIGHT_IN)
    (ax_loss, ax_top1), (ax_top5, ax_lr) = fig.subplots(2, 2)
    colours = [f"C{i % 10}" for i in range(len(paths))]
    for recs, label, colour in zip(records, labels, colours, strict=True):
        ax_loss.plot(*epoch_series(recs, "train_loss"), color=colour, marker=".", label=label)
        for ax, k in ((ax_top1, 1), (ax_top5, 5)):
            ax.plot(*epoch_series(recs, f"train_top{k}_error"), color=colour, marker=".", label=f"{label} train")
            ax.plot(*epoch_series(recs, f"val_top{k}_error"), color=colour, marker=".", linestyle="--",
                    label=f"{label} val")
        ax_lr.plot(*epoch_series(recs, "lr"), color=colour, marker=".", drawstyle="steps-post", label=label)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="cross-entropy")
    ax_top1.set(title="top-1 error (solid: train, dashed: val)", xlabel="epoch", ylabel="error (%)")
    ax_top5.set(title="top-5 error (solid: train, dashed: val)", xlabel="epoch", ylabel="error (%)")
    ax_lr.set(title="learning rate", xlabel="epoch", ylabel="lr")
    if any(epoch_series(r, "lr")[1] and min(epoch_series(r, "lr")[1]) > 0 for r in records):
        ax_lr.set_yscale("log")  # §5's divisions by 10 are even steps on a log axis
    for ax in (ax_loss, ax_top1, ax_top5, ax_lr):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("training curves: " + ", ".join(labels))
    fig.tight_layout()  # arranges the axes only; the canvas stays WIDTH_IN × HEIGHT_IN
    path = save_figure(fig, fig_path)
    return {
        "path": str(path),
        "runs": [{"run": str(p), "label": lab, "epochs": len(r)} for p, lab, r in zip(paths, labels, records, strict=True)],
        "width": int(WIDTH_IN * fig.dpi),
        "height": int(HEIGHT_IN * fig.dpi),
    }
