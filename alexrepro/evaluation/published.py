"""Imported weights beside their published accuracy: the row `eval` shows for a checkpoint of `alexrepro import`.

The published figures are accuracies on ILSVRC-2012 val with one protocol each (Caffe's bvlc_alexnet:
57.1% / 80.2%, the centre 227 crop of images warped to 256×256; torchvision's alexnet: 56.522% /
79.066%, Resize 256 + CenterCrop 224); the checkpoint carries them in its origin. Errors are 100 minus
them, as the paper prints error rates. A difference is stated only between the same protocol: an
evaluation with the ten crops of §4.1 is shown as ours alone. The resize that prepared the set (prep
--resize) is stated beside the one the published protocol used, since it moves the result.
"""

from __future__ import annotations

from typing import Any

RESIZE_WORDS = {"shorter-side": "the shorter side to 256, then the central crop, as §2", "warp": "warped to 256×256"}


def _error(accuracy_pct: float | None) -> float | None:
    return None if accuracy_pct is None else round(100.0 - float(accuracy_pct), 4)


def _diff(ours: float | None, theirs: float | None) -> float | None:
    return None if ours is None or theirs is None else round(ours - theirs, 4)


def published_row(
    origin: Any, crops: int, top1_error_pct: float | None, top5_error_pct: float | None, set_resize: str
) -> dict[str, Any] | None:
    """The published row of imported weights beside this evaluation, or None for a trained net.

    origin: the checkpoint's `Origin` (None for a trained net); crops: 1 or 10, this evaluation's;
    the error rates are this evaluation's (percent); set_resize: the prepared set's prep --resize.
    """
    if origin is None or not origin.published:
        return None
    pub = origin.published
    top1, top5 = _error(pub.get("top1_acc")), _error(pub.get("top5_acc"))
    same_protocol = crops == int(pub.get("crops", 1))
    resize = str(pub.get("resize", "shorter-side"))
    return {
        "weights": origin.file,
        "format": origin.format,
        "sha256": origin.sha256,
        "reference": pub.get("reference", ""),
        "protocol": pub.get("protocol", ""),
        "crops": int(pub.get("crops", 1)),
        "top1_acc_pct": pub.get("top1_acc"),
        "top5_acc_pct": pub.get("top5_acc"),
        "top1_error_pct": top1,
        "top5_error_pct": top5,
        "same_protocol": same_protocol,  # the Δ below only when this evaluation used the published crops
        "top1_diff_pct": _diff(top1_error_pct, top1) if same_protocol else None,
        "top5_diff_pct": _diff(top5_error_pct, top5) if same_protocol else None,
        "resize": {"published": resize, "this_set": set_resize, "same": resize == set_resize},
        "notes": protocol_notes(crops, int(pub.get("crops", 1)), resize, set_resize),
    }


def protocol_notes(crops: int, published_crops: int, published_resize: str, set_resize: str) -> list[str]:
    """One line per way this evaluation's protocol differs from the published one (empty when it does not)."""
    notes = []
    if crops != published_crops:
        notes.append(
            f"the published figure is for {_crops(published_crops)}; this evaluation used {_crops(crops)}, "
            f"so it is shown as ours only (eval --crops {published_crops} to compare)"
        )
    if set_resize != published_resize:
        notes.append(
            f"this set was prepared with --resize {set_resize} ({RESIZE_WORDS.get(set_resize, set_resize)}); "
            f"the published protocol used {published_resize} ({RESIZE_WORDS.get(published_resize, published_resize)}): "
            f"prep the val split with --resize {published_resize} to match it"
        )
    return notes


def _crops(n: int) -> str:
    return "the centre crop" if n == 1 else f"{n} crops"
