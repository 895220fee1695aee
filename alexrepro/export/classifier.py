"""`alexrepro.load(PATH)`: a trained net as a classifier for Python code, giving what `alexrepro predict` gives.

A `Classifier` is an `nn.Module` (calling it on input tensors gives the logits) that also carries the
net's input conventions from its checkpoint: `preprocess` takes a file path, a PIL image or a uint8 array
through prep's §2 path (RGB, shorter side 256, central 256×256) and the test-time preset (the recipe's
resize, the mean image or channel mean/std, the centre patch or §4.1's ten), with the same functions
`alexrepro predict` calls (`evaluation/predict.py`), so a file gives the same tensor, the same
probabilities and the same top-5 there and here. PATH is a checkpoint (trained or imported) or a
weight file of `alexrepro export safetensors`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from alexrepro.errors import UserError
from alexrepro.loaders.augment import Colour
from alexrepro.loaders.presets import TEN_CROPS, EvalPreset, MeanImage, make_colour, saved_mean, variant_for
from alexrepro.recipe import Recipe

ImageLike = str | os.PathLike | Image.Image | np.ndarray  # what preprocess, predict and features take
CENTER = 1  # crops: the centre patch


class Classifier(nn.Module):
    """A trained net with its classes and input conventions: `.net` (eval mode), `.preprocess`, `.classes`,
    `.predict`, `.features`; calling it on preprocessed N×3×c×c tensors gives the logits."""

    def __init__(self, net: nn.Module, recipe: Recipe, classes: list[dict[str, Any]], mean: MeanImage,
                 path: Path, origin: Any = None) -> None:
        super().__init__()
        self.net = net.eval()
        self.recipe = recipe
        self.classes = classes  # by index: {"index", "wnid", "name"} (imported weights may lack WNIDs)
        self.mean = mean  # the mean image and channel mean the input conventions need, and where from
        self.path = path
        self.origin = origin  # training.checkpoint.Origin of imported weights; None for a trained net
        self._colours: dict[str, Colour] = {}

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def crop_size(self) -> int:
        return self.recipe.data.crop_size

    def colour(self) -> Colour:
        """The recipe's colour set-up on the net's device (made once per device)."""
        key = str(self.device)
        if key not in self._colours:
            self._colours[key] = make_colour(self.mean, self.recipe.data, self.device)
        return self._colours[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of preprocessed inputs (N×3×c×c, as `preprocess` gives them)."""
        return self.net(x)

    def preprocess(self, image: ImageLike, crops: int = CENTER) -> torch.Tensor:
        """One image → the net's input on its device: 3×c×c (the centre patch), or 10×3×c×c with crops=10."""
        return self.inputs([stored_image(image)], crops)[0]

    def inputs(self, stored: Sequence[np.ndarray], crops: int = CENTER) -> torch.Tensor:
        """Stored images (uint8 256×256×3, as prep writes them) → a batch of the net's inputs."""
        preset = EvalPreset.for_data(self.recipe.data, variant_for(crops))
        return preset(list(stored), self.colour(), self.device)

    def predict(self, images: ImageLike | Sequence[ImageLike], topk: int = 5,
                crops: int = TEN_CROPS) -> list[list[dict[str, Any]]]:
        """Each image's `topk` classes, most probable first: {"index", "wnid", "name", "prob"}.

        As `alexrepro predict` (which prints the probabilities rounded to 6 digits): §4.1's ten patches by
        default (crops=1: the centre patch), one image at a time.
        """
        from alexrepro.evaluation.classes import class_fields
        from alexrepro.evaluation.metrics import topk_classes
        from alexrepro.evaluation.test_time import TEST_TIME

        if topk < 1:
            raise UserError(f"topk must be at least 1, got {topk}")
        variant = variant_for(crops)
        names = class_fields(self.classes)
        results = []
        for image in as_images(images):
            x = self.inputs([stored_image(image)], crops)
            with torch.inference_mode():
                probs = TEST_TIME[variant](self.net, x)
            vals, idx = topk_classes(probs, topk)
            top = []
            for p, i in zip(vals[0].tolist(), idx[0].tolist(), strict=True):
                wnid, name = names.get(i, ("", ""))
                top.append({"index": i, "wnid": wnid, "name": name, "prob": float(p)})
            results.append(top)
        return results

    def features(self, images: ImageLike | Sequence[ImageLike], layer: str = "fc7") -> torch.Tensor:
        """The layer's activations (after its ReLU; fc8: the logits) of each image's centre patch: N×D."""
        from alexrepro.nets.activations import check_layer

        check_layer(self.net, layer)  # before the images are read
        return self.stored_features([stored_image(im) for im in as_images(images)], layer)

    def stored_features(self, stored: Sequence[np.ndarray], layer: str = "fc7") -> torch.Tensor:
        """`features` of stored images (uint8 256×256×3), as `alexrepro features` reads them from a split."""
        from alexrepro.nets.activations import layer_activations

        with torch.inference_mode():
            return layer_activations(self.net, self.inputs(stored), layer)


def load(path: str | os.PathLike[str], device: str = "auto", data: str | os.PathLike[str] | None = None) -> Classifier:
    """A checkpoint (trained or imported) or a .safetensors weight file as a Classifier on `device`.

    `data` is the prepared set the net was trained on, read for its mean image only when the file carries
    none (checkpoints of alexrepro train and weight files carry it; a Caffe import without --mean may not).
    """
    from alexrepro.runtime import resolve_device
    from alexrepro.training.checkpoint import model_from_checkpoint
    from alexrepro.training.weight_file import read_net

    if data is not None and not Path(data).is_dir():
        raise UserError(f"data={data} is not a folder; give the prepared set's folder (the OUT of alexrepro prep)")
    dev = resolve_device(device)
    ckpt = read_net(path)
    net, recipe, classes = model_from_checkpoint(ckpt)
    mean = saved_mean(ckpt.stats, None if data is None else Path(data), recipe.data)
    return Classifier(net.to(dev), recipe, classes, mean, Path(path), ckpt.origin)


def as_images(images: ImageLike | Sequence[ImageLike]) -> list[ImageLike]:
    """One image or several as a list (a 4-D uint8 array is a batch of images)."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def stored_image(image: ImageLike) -> np.ndarray:
    """An image as prep stores it (uint8 256×256×3 RGB): a file exactly as `alexrepro predict` reads it, a PIL
    image or a uint8 H×W×3 (or H×W grey) array through the same conversion and §2 resize."""
    from alexrepro.data.imaging import BadImage, resample_rgb
    from alexrepro.data.shards import IMAGE_SIZE
    from alexrepro.evaluation.predict import load_image

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise UserError(f"image {path} {'is a folder' if path.is_dir() else 'does not exist'}; give image files")
        try:
            return load_image(path)
        except (BadImage, OSError) as e:
            raise UserError(f"image {path} cannot be read: {' '.join(str(e).split()) or type(e).__name__}") from None
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise UserError(f"an image array must be uint8 H×W×3 (RGB) or H×W, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise UserError(f"give an image as a file path, a PIL image or a uint8 array, not a {type(image).__name__}")
    try:
        return np.asarray(resample_rgb(image, IMAGE_SIZE), dtype=np.uint8)
    except BadImage as e:
        raise UserError(f"the image cannot be converted: {e}") from None
