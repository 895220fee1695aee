"""torchvision's `alexnet` state dict (the .pth torchvision caches) as our torchvision-alexnet net and its recipe.

torchvision's preprocessing for these weights (AlexNet_Weights.IMAGENET1K_V1.transforms()): resize the
shorter side to 256, centre-crop 224, RGB scaled to 0–1, minus the channel mean, divided by the channel
std. Our prepared images are the shorter side at 256 and the central 256×256 patch (§2), so a centre
224 crop of them is the same patch; the recipe says mean = "channel-std" with torchvision's values.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch

from alexrepro.errors import UserError
from alexrepro.imports.weights import ImportedWeights, bare_net, check_shape, read_weight_file, sha256
from alexrepro.recipe import DataConfig, ModelConfig

# torchvision's keys (features.N / classifier.N) → ours; the numbers are positions in its Sequentials.
KEYS = {
    "features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
    "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8",
}
MEAN_RGB = [0.485, 0.456, 0.406]  # torchvision's ImageNet normalisation, RGB on 0–1
STD_RGB = [0.229, 0.224, 0.225]
CROP, RESIZE = 224, 256  # torchvision's eval preset for these weights: Resize 256, CenterCrop 224
# AlexNet_Weights.IMAGENET1K_V1.meta["_metrics"] (shipped with torchvision), ILSVRC-2012 val.
PUBLISHED = {"top1_acc": 56.522, "top5_acc": 79.066, "crops": 1, "resize": "shorter-side",
             "protocol": "centre crop, Resize 256 + CenterCrop 224",
             "reference": "torchvision AlexNet_Weights.IMAGENET1K_V1"}
NET = "torchvision's alexnet"
GIVE = "give the alexnet .pth torchvision downloads (alexnet-owt-7be5be79.pth in ~/.cache/torch/hub/checkpoints)"


def import_torchvision(path: str | Path) -> ImportedWeights:
    """A torchvision alexnet state dict file as our torchvision-alexnet weights and torchvision's recipe."""
    p = Path(path)
    raw = read_weight_file(p, "torchvision weights (.pth)")
    state = _load_state_dict(raw, p)
    first_missing = next((f"{k}.{part}" for k in KEYS for part in ("weight", "bias")
                          if f"{k}.{part}" not in state), None)
    if first_missing is not None:
        raise UserError(f"{p}: no {first_missing}: not {NET}'s state dict (its keys are {_keys(state)})")
    extra = sorted(set(state) - {f"{k}.{part}" for k in KEYS for part in ("weight", "bias")})
    if extra:
        raise UserError(f"{p}: unexpected key {extra[0]}: the file holds another net than {NET}")
    fc6, fc8 = state["classifier.1.weight"], state["classifier.6.weight"]
    # fc8's classes (a fine-tuned alexnet may have other than 1000) and fc6's width (4096; narrower in
    # tests) are read from the file; every other shape must be torchvision's.
    model = torchvision_model_config(num_classes=int(fc8.shape[0]) if fc8.dim() == 2 else 1000,
                                     fc_width=int(fc6.shape[0]) if fc6.dim() == 2 else 4096)
    want = bare_net(model, CROP).state_dict()
    ours = {}
    for theirs, name in KEYS.items():
        for part in ("weight", "bias"):
            tensor = state[f"{theirs}.{part}"]
            check_shape(f"{theirs}.{part}", tuple(tensor.shape), tuple(want[f"{name}.{part}"].shape), p, NET)
            ours[f"{name}.{part}"] = tensor.detach().to(torch.float32).contiguous()
    source = {"format": "torchvision", "file": p.name, "sha256": sha256(raw), "net": "alexnet",
              "published": dict(PUBLISHED)}
    return ImportedWeights(ours, model, torchvision_data_config(), None, source)


def torchvision_model_config(num_classes: int = 1000, fc_width: int = 4096) -> ModelConfig:
    """[model] for torchvision's alexnet: its arch, classes, fc width and dropout (the LRN keys do not apply: off)."""
    return ModelConfig(arch="torchvision-alexnet", num_classes=num_classes, fc_width=fc_width, dropout=0.5,
                       lrn=False)


def torchvision_data_config() -> DataConfig:
    """[data] for torchvision's weights: 224 centre crops of the 256 images, channel mean/std on 0–1."""
    return DataConfig(image_size=RESIZE, crop_size=CROP, mean="channel-std", mean_rgb=list(MEAN_RGB),
                      std_rgb=list(STD_RGB), lighting=False)


def _load_state_dict(raw: bytes, path: Path) -> dict[str, torch.Tensor]:
    """torch.load with weights_only (no code runs from the file); anything else is a one-line error."""
    try:
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, KeyError,
            AttributeError, TypeError, IndexError, OSError):
        if raw[:4] == b"PK\x03\x04":  # torch.save's zip format
            why = "a zip archive that cannot be read (truncated or corrupt)"
        elif raw[:1] == b"\x80":  # a legacy torch.save pickle
            why = "a pickle that cannot be read as tensors (truncated, or it holds code)"
        else:
            why = "neither torch.save's zip format nor a pickle"
        raise UserError(f"{path} is not a PyTorch weights file: {why}; {GIVE}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors; {GIVE}")
    return obj


def _keys(state: dict[str, torch.Tensor]) -> str:
    keys = list(state)
    return ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
