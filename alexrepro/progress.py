"""Rich progress bars and console output on stderr; stdout is kept for --json."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


def count_noun(n: int, noun: str, plural: str | None = None) -> str:
    """'1 epoch', '2 epochs', '1,024 images': a count with its noun in the right number."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


class RateColumn(ProgressColumn):
    """Items per second, with the unit the task names (images/s, steps/s)."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "it")
        speed = task.finished_speed or task.speed
        text = f"{speed:,.1f} {unit}/s" if speed else f"? {unit}/s"
        return Text(text, style="progress.data.speed")


class StatusColumn(ProgressColumn):
    """A free-text field a task may set (loss, skipped count, ...)."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("status", "")))


def make_progress(transient: bool = False, show: bool = True) -> Progress:
    """A progress display with count, rate and ETA on stderr: `with make_progress(show=...) as bar:` starts it
    and stops it however the block ends. With `show` False it draws nothing; its tasks still count."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        StatusColumn(),
        console=console,
        transient=transient,
        disable=not show,
    )


def emit_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout (the --json contract)."""
    sys.stdout.write(json.dumps(obj, indent=None, sort_keys=False, default=_json_default) + "\n")
    sys.stdout.flush()


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    from pathlib import Path

    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
