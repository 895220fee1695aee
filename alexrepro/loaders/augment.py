"""§2/§4.1 augmentation, defined once: the one sampler of crop/flip/lighting draws, and the pure maths.

Both loader backends (PyTorch and DALI) take their parameters from `draw_train_params` (training)
or the test-time preset (`alexrepro.loaders.presets`: centre / ten crops, built on `view_params`),
cut and flip the uint8 image with them, and hand the uint8 crops to `finish_batch`, the one function
that does the float maths (mean subtraction, lighting, NCHW) on the target device. So for the same
draws the two backends give the same tensor. §4.1's lighting shift is `lighting_shift`; the magnitudes it
scales the eigenvectors by are the statistics' (`alexrepro.data.stats.lighting_magnitudes`, by convention).

Coordinates: a view (y, x, flip) means "take the crop_size × crop_size patch whose top-left corner
is (y, x) in the (image_size × image_size) image, then mirror it left-right if flip". The mean
image is cut and mirrored at the same view, so the subtraction stays per-pixel (§2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from alexrepro.data.shards import IMAGE_SIZE

if TYPE_CHECKING:  # torch is imported lazily so that DALI's worker processes stay light
    import torch

    from alexrepro.recipe import DataConfig

View = tuple[int, int, bool]  # (y, x, flip): see "Coordinates" above


@dataclass(frozen=True)
class CropParams:
    """Per-sample augmentation parameters: crop corner (y, x), mirror flag, lighting α (n×3)."""

    y: np.ndarray  # int64 (n,)
    x: np.ndarray  # int64 (n,)
    flip: np.ndarray  # bool (n,)
    alpha: np.ndarray  # float64 (n, 3): §4.1's α_i, zero where lighting is off

    def __len__(self) -> int:
        return len(self.y)

    def take(self, lo: int, hi: int) -> CropParams:
        """The parameters of samples lo..hi-1 (a rank's slice of a global batch)."""
        return CropParams(self.y[lo:hi], self.x[lo:hi], self.flip[lo:hi], self.alpha[lo:hi])


DRAW_TAG = 2  # see draw_train_params; loaders.order uses ORDER_TAG = 1


def draw_train_params(data: DataConfig, seed: int, epoch: int, batch: int, n: int) -> CropParams:
    """THE sampler (one for both backends): §4.1's draws for the n images of one GLOBAL batch.

    A pure function of (seed, epoch, global batch index): every rank draws the whole global batch
    and takes its slice, so N ranks see exactly what one process sees, and a resumed run draws the
    same. Crops are uniform over all (S - c + 1)² corners, flips have probability ½, α ~ N(0, σ).
    Every stream is always drawn, so switching mirror or lighting off does not move the crops.
    """
    # The trailing tag keeps this stream apart from the epoch order's ([seed, epoch, ORDER_TAG]): numpy
    # ignores trailing zeros in a seed list, so [seed, epoch, 0] alone would equal [seed, epoch].
    rng = np.random.default_rng([seed, epoch, batch, DRAW_TAG])
    # §4.1 counts "a factor of 2048" = 32·32·2, i.e. 32 offsets per axis; a 256 image has 256 − 224 + 1 = 33
    # positions per axis, and we draw from all 33 (every one of the 33×33 positions): 2178 views
    # (docs/FAITHFULNESS.md).
    span = data.image_size - data.crop_size + 1
    y = rng.integers(0, span, size=n, dtype=np.int64)
    x = rng.integers(0, span, size=n, dtype=np.int64)
    flip = rng.random(n) < 0.5  # §4.1: horizontal reflection with probability ½
    alpha = rng.normal(0.0, data.lighting_std, size=(n, 3))  # §4.1: α_i ~ N(0, 0.1)
    if not data.mirror:
        flip[:] = False
    if not data.lighting:
        alpha[:] = 0.0
    return CropParams(y, x, flip, alpha)


def center_offset(image_size: int, crop_size: int) -> int:
    """Top/left offset of the centre crop, rounded as torchvision's center_crop rounds it."""
    return int(round((image_size - crop_size) / 2.0))


def center_views(image_size: int, crop_size: int) -> list[View]:
    """The one centre view, unflipped (the single-patch test of §6's Table 1)."""
    c = center_offset(image_size, crop_size)
    return [(c, c, False)]


def ten_crop_views(image_size: int, crop_size: int) -> list[View]:
    """§4.1's ten test patches as (y, x, flip) on the unflipped image, in torchvision's TenCrop order.

    Order: top-left, top-right, bottom-left, bottom-right, centre of the image, then the same five
    of its horizontal reflection. A patch of the mirrored image at left offset x' is the mirror of
    the patch of the original at x = S - c - x', hence the swapped corners in the second half.
    """
    far = image_size - crop_size
    cy = center_offset(image_size, crop_size)
    five = [(0, 0), (0, far), (far, 0), (far, far), (cy, cy)]
    return [(y, x, False) for y, x in five] + [(y, far - x, True) for y, x in five]


def view_params(views: list[View], n: int) -> CropParams:
    """The same views of each of n images, flattened image-major (n·len(views) entries; no lighting)."""
    y = np.array([v[0] for v in views] * n, dtype=np.int64)
    x = np.array([v[1] for v in views] * n, dtype=np.int64)
    flip = np.array([v[2] for v in views] * n, dtype=bool)
    return CropParams(y, x, flip, np.zeros((len(views) * n, 3)))


def eval_params(n: int, image_size: int, crop_size: int) -> CropParams:
    """Centre-crop parameters for n images (no flip, no lighting)."""
    return view_params(center_views(image_size, crop_size), n)


def crop_flip(image: np.ndarray, y: int, x: int, crop_size: int, flip: bool) -> np.ndarray:
    """The crop_size² patch at (y, x) of an H×W×C image, mirrored left-right if flip (contiguous)."""
    patch = image[y : y + crop_size, x : x + crop_size]
    if flip:
        patch = patch[:, ::-1]
    return np.ascontiguousarray(patch)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 H×W×3 image to size×size, antialiased (PIL's bilinear, a triangle filter)."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mean(mean: np.ndarray, size: int) -> np.ndarray:
    """Resize the float mean image with the same antialiased filter as the images (per channel)."""
    if mean.shape[0] == size and mean.shape[1] == size:
        return np.asarray(mean, dtype=np.float32)
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(mean[..., k], dtype=np.float32), mode="F")
                   .resize((size, size), Image.BILINEAR))
        for k in range(mean.shape[2])
    ]
    return np.stack(chans, axis=-1).astype(np.float32)


def mean_image_for(mean: np.ndarray, channel_mean: np.ndarray, data: DataConfig) -> np.ndarray:
    """The S×S×3 image to subtract (§2): the per-pixel mean image, or a channel mean everywhere (the set's,
    or torchvision's 255·mean_rgb for "channel-std")."""
    size = data.image_size
    if data.mean == "channel-std":  # torchvision's constant channel mean; the set's statistics are not used
        m, _ = channel_std_mean_and_scale(data.mean_rgb, data.std_rgb)
        return np.broadcast_to(m, (size, size, 3)).copy()
    if data.mean == "channel":
        return np.broadcast_to(np.asarray(channel_mean, np.float32), (size, size, 3)).copy()
    if mean.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"mean image must be {IMAGE_SIZE}×{IMAGE_SIZE}×3, got {mean.shape}")
    return resize_mean(mean, size)


# torchvision's normalisation (data.mean = "channel-std"): RGB on 0–1, minus a channel mean, over a channel
# std. On our 0–255 pixels that is the subtraction of 255·mean_rgb, then a per-channel scale 1 / (255·std_rgb).
def channel_std_mean_and_scale(
    mean_rgb: Sequence[float], std_rgb: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(m, s) on the 0–255 scale with (x − m)·s = (x / 255 − mean_rgb) / std_rgb: m = 255·mean, s = 1 / (255·std)."""
    mean = np.asarray(mean_rgb, np.float64) * 255.0
    scale = 1.0 / (np.asarray(std_rgb, np.float64) * 255.0)
    return mean.astype(np.float32), scale.astype(np.float32)


def lighting_shift(alpha: np.ndarray, eigvec: np.ndarray, magnitudes: np.ndarray) -> np.ndarray:
    """§4.1: the RGB shift [p1 p2 p3][α1 m1, α2 m2, α3 m3]ᵀ of each image; alpha n×3 → n×3."""
    return (np.asarray(alpha, np.float64) * np.asarray(magnitudes, np.float64)) @ np.asarray(eigvec).T


@dataclass(frozen=True)
class Colour:
    """What `finish_batch` subtracts, adds and scales by: the S×S×3 mean on the device, the lighting basis,
    and the per-channel scale of "channel-std" (None: pixels stay on the 0–255 scale, as §2)."""

    mean: torch.Tensor  # float32 S×S×3 on the target device
    eigvec: np.ndarray | None  # 3×3, columns p_i; None when lighting is off
    magnitudes: np.ndarray | None  # (3,) m from alexrepro.data.stats.lighting_magnitudes
    scale: torch.Tensor | None = None  # float32 (3,) on the target device: 1 / (255·std_rgb)


def to_device(device: torch.device, *arrays: np.ndarray) -> list[torch.Tensor]:
    """Small per-batch arrays onto the device without stalling it.

    A copy from pageable host memory makes the host wait for the GPU to finish queued work; from
    pinned memory, non_blocking, it is queued behind that work instead, so the next step's launches
    overlap the current step's kernels.
    """
    import torch

    out = []
    for a in arrays:
        t = torch.as_tensor(a)
        if device.type == "cuda":
            t = t.pin_memory().to(device, non_blocking=True)
        else:
            t = t.to(device)
        out.append(t)
    return out


def mean_crops(mean: torch.Tensor, params: CropParams, crop_size: int) -> torch.Tensor:
    """The mean image cut and mirrored at each sample's view: N×c×c×3, one gather on mean's device."""
    import torch

    dev = mean.device
    ar = torch.arange(crop_size, device=dev)
    y, x, flip = (t[:, None] for t in to_device(dev, params.y, params.x, params.flip))
    rows = y + ar
    cols = torch.where(flip, x + (crop_size - 1) - ar, x + ar)
    return mean[rows[:, :, None], cols[:, None, :]]


def finish_batch(
    crops: torch.Tensor,
    params: CropParams,
    colour: Colour,
    device: torch.device,
    channels_last: bool = False,
) -> torch.Tensor:
    """The one float step of both backends: uint8 N×c×c×3 (or N×V×c×c×3) crops → float32 NCHW.

    out = crop - mean crop + lighting shift, on the 0–255 scale, centred (§2), on `device`; with a colour
    scale ("channel-std") that sum is then multiplied per channel, giving torchvision's (x/255 − m)/s.
    Several views per image (ten crops: V = 10) give N×V×3×c×c (params then hold N·V views, image-major).
    """
    import torch

    views = crops.dim() == 5
    c = crops.shape[-2]
    flat = crops.reshape(-1, c, c, crops.shape[-1]) if views else crops
    if len(params) != flat.shape[0]:
        raise ValueError(f"{len(params)} views for {flat.shape[0]} crops")
    x = flat.to(device, non_blocking=True).to(torch.float32)
    x = x - mean_crops(colour.mean, params, c)
    if colour.eigvec is not None and colour.magnitudes is not None and np.any(params.alpha):
        shift = lighting_shift(params.alpha, colour.eigvec, colour.magnitudes)
        (shift_t,) = to_device(device, shift.astype(np.float32))
        x = x + shift_t[:, None, None, :]
    if colour.scale is not None:
        x = x * colour.scale  # channels last here: one factor per RGB channel
    x = x.permute(0, 3, 1, 2)  # NHWC memory permuted to NCHW is already channels_last
    x = x if channels_last else x.contiguous()
    if views:
        x = x.view(crops.shape[0], crops.shape[1], *x.shape[1:])  # a view keeps either memory format
    return x
