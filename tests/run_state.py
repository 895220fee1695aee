"""What the training fault tests read of a run: the steps its metrics recorded, and its state compared bitwise."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from alexrepro.training import checkpoint as ck


def metrics_steps(run: Path) -> list[int]:
    """The steps RUN/metrics.jsonl has a record of (none before it exists)."""
    path = run / "metrics.jsonl"
    return [int(m) for m in re.findall(r'"step": (\d+)', path.read_text())] if path.is_file() else []


def assert_same_state(a: ck.Checkpoint, b: ck.Checkpoint) -> None:
    """Bitwise: the position, the net's weights and the optimiser's buffers."""
    assert (a.epoch, a.batch, a.step) == (b.epoch, b.batch, b.step)
    for k in a.model:
        assert torch.equal(a.model[k], b.model[k]), k
    for p, state in a.optimizer["state"].items():
        for name, value in state.items():
            assert not isinstance(value, torch.Tensor) or torch.equal(value, b.optimizer["state"][p][name]), name
