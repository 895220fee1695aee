"""Class lists as manifests and checkpoints carry them (index, WNID, name): their identity and names."""

from __future__ import annotations

from typing import Any


def class_ids(classes: list[dict[str, Any]]) -> list[str]:
    """The WNIDs of a class list in index order (the identity of a label space)."""
    return [str(c.get("wnid", c.get("index"))) for c in sorted(classes, key=lambda c: int(c["index"]))]


def class_fields(classes: list[dict[str, Any]]) -> dict[int, tuple[str, str]]:
    """index → (WNID, name), empty strings where the list has none."""
    return {int(c["index"]): (str(c.get("wnid", "")), str(c.get("name", ""))) for c in classes}



def has_wnids(classes: list[dict[str, Any]]) -> bool:
    """Whether a class list names its classes by WNID (a prepared set's does; imported weights' names alone
    do not: their labels are indices in ILSVRC's sorted-WNID order)."""
    return any(c.get("wnid") for c in classes)


def same_classes(model_classes: list[dict[str, Any]], set_classes: list[dict[str, Any]]) -> bool:
    """Whether a net's classes are a prepared set's: the same WNIDs in the same order, or for imported
    weights without WNIDs, as many classes (the set's indices are its sorted WNIDs, as theirs are)."""
    if len(model_classes) != len(set_classes):
        return False
    return not has_wnids(model_classes) or class_ids(model_classes) == class_ids(set_classes)
