"""The checkpoints an evaluation scores: each loaded as a `Member`, and checked against the others and the set."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alexrepro.errors import UserError
from alexrepro.evaluation.classes import class_ids, same_classes


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
