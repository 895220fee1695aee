"""The test-time preset (as torchvision's ClassificationPresetEval): a stored image → its test views.

A stored image (uint8 256×256×3, as prep writes it) is resized to the recipe's image_size, cut at
each view of the variant (the centre patch, or §4.1's ten patches in torchvision's TenCrop order),
and after `finish_batch` has the mean image, cut at the same view, subtracted (§2; or torchvision's
channel mean and std for a recipe with mean = "channel-std", its imported weights' input). Both loader
backends, `alexrepro predict` and the figures take their views from `EvalPreset` and their colour
set-up (the mean image, and for training the lighting basis) from `alexrepro.loaders.colour.make_colour`,
so each sees the same tensor for the same image. A preset holds no tensor: the PyTorch backend's worker
processes receive it pickled.

A new test-time protocol: its views here (`VIEWS`), and how its softmaxes combine in
`alexrepro.evaluation.variants.TEST_TIME` under the same name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from alexrepro.errors import UserError
from alexrepro.loaders.augment import (
    Colour,
    CropParams,
    View,
    center_views,
    crop_flip,
    finish_batch,
    resize_image,
    ten_crop_views,
    view_params,
)

if TYPE_CHECKING:
    import torch

    from alexrepro.recipe import DataConfig

TEN_CROPS = 10  # §4.1: four corner patches, the centre patch, and their horizontal reflections
# The test-time variants by name: (image_size, crop_size) → the views of one image.
VIEWS: dict[str, Callable[[int, int], list[View]]] = {
    "center": center_views,  # one patch: N×3×c×c batches
    "ten": ten_crop_views,  # §4.1: N×10×3×c×c batches
}
CROPS_TO_VARIANT = {1: "center", TEN_CROPS: "ten"}  # --crops N → variant


def variant_for(crops: int) -> str:
    """The test-time variant's name for a crop count (1 → "center", 10 → "ten")."""
    if crops not in CROPS_TO_VARIANT:
        raise UserError(f"--crops must be 1 (centre patch) or 10 (§4.1's ten patches), got {crops}")
    return CROPS_TO_VARIANT[crops]


@dataclass(frozen=True)
class EvalPreset:
    """Stored images → the test views of one variant at the recipe's sizes (uint8 patches, then float)."""

    image_size: int
    crop_size: int
    variant: str = "center"

    def __post_init__(self) -> None:
        if self.variant not in VIEWS:
            raise UserError(f"crops must be one of {', '.join(VIEWS)}, got {self.variant!r}")

    @classmethod
    def for_data(cls, data: DataConfig, variant: str = "center") -> EvalPreset:
        """The preset for a recipe's [data] section."""
        return cls(data.image_size, data.crop_size, variant)

    @property
    def views(self) -> list[View]:
        """(y, x, flip) of each view on the resized image, in order."""
        return VIEWS[self.variant](self.image_size, self.crop_size)

    @property
    def view_axis(self) -> tuple[int, ...]:
        """The views' axis in a batch: () for a single view (N×3×c×c), (V,) for V views (N×V×3×c×c)."""
        n = len(self.views)
        return () if n == 1 else (n,)

    @property
    def crop_shape(self) -> tuple[int, ...]:
        """One image's uint8 patches: c×c×3 for a single view, V×c×c×3 for V views."""
        return (*self.view_axis, self.crop_size, self.crop_size, 3)

    def params(self, n: int) -> CropParams:
        """The views of n images as `finish_batch` takes them (image-major, no lighting)."""
        return view_params(self.views, n)

    def cut(self, image: np.ndarray) -> np.ndarray:
        """One stored image → its uint8 patches (`crop_shape`): resized to image_size, cut, mirrored."""
        image = resize_image(image, self.image_size)
        patches = [crop_flip(image, y, x, self.crop_size, flip) for y, x, flip in self.views]
        return patches[0] if len(patches) == 1 else np.stack(patches)

    def cut_all(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Stored images → N × `crop_shape` uint8 patches."""
        out = np.empty((len(images), *self.crop_shape), dtype=np.uint8)
        for k, image in enumerate(images):
            out[k] = self.cut(image)
        return out

    def finish(
        self, patches: torch.Tensor, colour: Colour, device: torch.device, channels_last: bool = False
    ) -> torch.Tensor:
        """uint8 patches (N × `crop_shape`) → float32 N×3×c×c (or N×V×3×c×c) minus the mean, on device."""
        return finish_batch(patches, self.params(patches.shape[0]), colour, device, channels_last)

    def __call__(self, images: Sequence[np.ndarray], colour: Colour, device: torch.device) -> torch.Tensor:
        """Stored images → the net's input for this variant, as the evaluation loader gives it."""
        import torch

        return self.finish(torch.from_numpy(self.cut_all(images)), colour, device)
