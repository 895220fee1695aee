"""Where and how tensors run: device resolution and the precision → autocast dtype table.

The low module every stage uses (training, evaluation, predict, figures, bench); rank helpers for
several processes live beside it in `alexrepro.distributed`.
"""

from __future__ import annotations

import torch

from alexrepro.errors import UserError

# run.precision → autocast dtype (None: plain float32, as in the paper)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = tuple(AUTOCAST_DTYPES)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name (None for fp32); a UserError for an unknown name."""
    if precision not in AUTOCAST_DTYPES:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return AUTOCAST_DTYPES[precision]


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


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA); for timings only, never in the training step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
