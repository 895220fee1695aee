"""Top-k as the paper counts it (§6: top-1 and top-5 error), for the training step, validation and evaluation.

A true class is among the top k when fewer than k classes score at least as high as it: a tie counts
against it. The tallies of `alexrepro.training` and `alexrepro.evaluation` all start from `true_class_rank`.
"""

from __future__ import annotations

import torch

from alexrepro.errors import UserError

TOP_KS = (1, 5)  # §6: the paper reports top-1 and top-5 error


def topk_for(num_classes: int) -> tuple[int, int]:
    """The (top-1, top-5) pair training counts; top-5 shrinks to the class count below five classes."""
    return 1, min(5, num_classes)


def check_k(k: int, num_classes: int) -> None:
    """A UserError when top-k is undefined: k below 1 or above the number of classes."""
    if k < 1 or k > num_classes:
        raise UserError(
            f"top-{k} error needs at least {k} classes but the scores have {num_classes}; "
            "evaluate on a set with more classes or report a smaller k"
        )


def true_class_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """0-based rank of each true class among (N, K) scores; a tie counts against the true class.

    Counting ties against it means a constant output (an untrained or collapsed net) scores
    as wrong rather than right, whatever order a sort would happen to leave tied classes in.
    """
    labels = torch.as_tensor(labels, dtype=torch.long, device=scores.device)
    true = scores.gather(1, labels.view(-1, 1))
    at_least = (scores >= true).sum(dim=1)
    return at_least - 1  # the true class itself is always >= itself
