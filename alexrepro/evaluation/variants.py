"""The test-time variants as named functions chosen by name (as airbench does): views → softmax.

Each variant's views come from the preset of the same name (`alexrepro.loaders.presets.VIEWS`):
"center" scores the centre patch, "ten" averages the softmax over §4.1's ten patches; §6's
ensembles average each net's result (`predict_ensemble`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from alexrepro.evaluation.metrics import average_crops, average_ensemble, softmax


def predict_center(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, c, c) centre patches → (N, K) softmax."""
    return softmax(model(images))


def predict_ten_crop(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 10, 3, c, c) patches → (N, K): §4.1's softmax averaged over the ten patches."""
    n, crops = images.shape[:2]
    probs = softmax(model(images.reshape(n * crops, *images.shape[2:])))
    return average_crops(probs.view(n, crops, -1))


# The keys are the presets' variants; eval's and predict's JSON name the function ("test_time").
TEST_TIME: dict[str, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    "center": predict_center,
    "ten": predict_ten_crop,
}


def predict_ensemble(models: list[nn.Module], images: torch.Tensor, variant: str) -> torch.Tensor:
    """The softmax of each net under a test-time variant, averaged over the nets (§6)."""
    fn = TEST_TIME[variant]
    return average_ensemble([fn(m, images) for m in models])
