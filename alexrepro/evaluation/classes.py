"""Class lists as manifests and checkpoints carry them (index, WNID, name): their identity and names."""

from __future__ import annotations

from typing import Any


def class_ids(classes: list[dict[str, Any]]) -> list[str]:
    """The WNIDs of a class list in index order (the identity of a label space)."""
    return [str(c.get("wnid", c.get("index"))) for c in sorted(classes, key=lambda c: int(c["index"]))]


def class_fields(classes: list[dict[str, Any]]) -> dict[int, tuple[str, str]]:
    """index → (WNID, name), empty strings where the list has none."""
    return {int(c["index"]): (str(c.get("wnid", "")), str(c.get("name", ""))) for c in classes}

