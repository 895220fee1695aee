"""The recipe's schema: the typed dataclasses every stage reads, one per section of a recipe file.

A recipe has the sections [model], [data], [optim], [schedule] and [run]; every key is a field of the
matching dataclass below, with the paper's value as its default and its § beside it. This module
imports nothing of alexrepro, so every stage can take its section's type from here; reading recipe
files, `--set` and every check (types, ranges, the names `model.arch` and `data.loader` take from the
registries) are `alexrepro.recipe_reader`'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class ModelConfig:
    """The net of §3: which layout, how wide, and every ambiguity named."""

    # Which net: "alexnet" is the paper's net of §3, which every other key here describes;
    # "torchvision-alexnet" is torchvision's "one weird trick" variant (64-192-384-256-256 kernels,
    # no LRN, no groups, 6×6 adaptive pooling), for its published weights; it reads only
    # num_classes, width, fc_width and dropout. Recipes and checkpoints without it mean "alexnet";
    # the names are those of alexrepro.nets.NETS (checked by alexrepro.recipe_reader).
    arch: str = "alexnet"
    num_classes: int = 1000  # §2: ILSVRC's 1000 classes
    layout: Literal["two-tower", "one-tower"] = "two-tower"  # §3.2 two-GPU net | §3.2's one-GPU ablation
    width: float = 1.0  # multiplier on the conv kernel counts (96, 256, 384, 384, 256)
    fc_width: int = 4096  # §3.5: fc6 and fc7 have 4096 neurons each
    activation: Literal["relu", "tanh"] = "relu"  # §3.1 ReLU; tanh for the ablation
    lrn: bool = True  # §3.3
    lrn_size: int = 5  # §3.3: n = 5 adjacent kernel maps
    lrn_k: float = 2.0  # §3.3: k = 2
    lrn_alpha: float = 1e-4  # §3.3: α = 1e-4
    lrn_beta: float = 0.75  # §3.3: β = 0.75
    # §3.3 as printed: α multiplies the sum of squares. "divided-by-n" is the reading of PyTorch,
    # Caffe and cuda-convnet (α/n multiplies the sum: an effective 2e-5).
    lrn_alpha_convention: Literal["printed", "divided-by-n"] = "printed"
    # §3.2/§3.3: each GPU normalises its own kernel maps. Caffe's LRN layer has no groups, so in
    # bvlc_alexnet the window of n maps crosses the towers' boundary (true for its imported weights).
    lrn_across_towers: bool = False
    # conv1's zero padding: 2 so that 224 crops give §3.5's 55×55 maps; Caffe's bvlc_alexnet uses
    # 227 crops and no padding (also 55×55).
    conv1_padding: int = 2
    pool_size: int = 3  # §3.4: overlapping pooling, z = 3
    pool_stride: int = 2  # §3.4: s = 2
    dropout: float = 0.5  # §4.2: fc6 and fc7
    # §5: N(0, 0.01) weights, biases 1 in conv2/4/5 and fc6/7. "caffe": the Caffe reference model's
    # fix for the stall at ln(1000) (std 0.005 for fc6/fc7, biases 0.1). "paper-scaled": §5's init with
    # each std scaled by sqrt(paper fan-in / fan-in), identical for the paper net, for reduced widths (tiny).
    init: Literal["paper", "caffe", "paper-scaled"] = "paper"


@dataclass
class DataConfig:
    """The input pipeline of §2 and the augmentation of §4.1."""

    image_size: int = 256  # §2: images stored 256×256; smaller values rescale them first (tiny)
    crop_size: int = 224  # §4.1: random 224×224 patches
    # §2 "image": subtract the per-pixel mean image; "channel": its per-channel mean; "channel-std":
    # torchvision's convention, RGB scaled to 0–1, minus mean_rgb, divided by std_rgb.
    mean: Literal["image", "channel", "channel-std"] = "image"
    mean_rgb: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])  # 0–1 scale; "channel-std" only
    std_rgb: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])  # 0–1 scale; "channel-std" only
    mirror: bool = True  # §4.1: horizontal reflections
    lighting: bool = True  # §4.1: PCA lighting
    lighting_std: float = 0.1  # §4.1: α_i ~ N(0, 0.1)
    # §4.1 (docs/FAITHFULNESS.md): "unit" applies the printed formula with pixels on [0, 1] (fb.resnet.torch);
    # "cuda-convnet" uses √λ on the 0–255 scale as Krizhevsky's released code did.
    lighting_scale: Literal["unit", "cuda-convnet"] = "unit"
    loader: str = "auto"  # a name of alexrepro.loaders.KINDS (checked by alexrepro.recipe_reader)
    workers: int = 4  # loader worker processes (or DALI threads)
    drop_last: bool = True  # drop the last partial training batch of each epoch


@dataclass
class OptimConfig:
    """§5: stochastic gradient descent with the paper's own update rule."""

    name: Literal["paper", "torch-sgd"] = "paper"  # §5's rule | torch.optim.SGD (differs after an lr change)
    lr: float = 0.01  # §5: initial learning rate
    momentum: float = 0.9  # §5
    weight_decay: float = 0.0005  # §5
    # §5 writes the rule for "weight w"; cuda-convnet and Caffe did not decay biases.
    weight_decay_on: Literal["weights", "all"] = "weights"
    # §5: one ε for every parameter; Caffe's reference models give biases 2ε (lr_mult: 2)
    bias_lr_mult: float = 1.0
    batch_size: int = 128  # §5: global batch


@dataclass
class ScheduleConfig:
    """§5: divide the learning rate by 10 when validation error stops improving, three times."""

    kind: Literal["plateau", "step"] = "plateau"
    epochs: int = 90  # §5: "roughly 90 cycles"
    factor: float = 0.1  # §5: divided by 10
    max_reductions: int = 3  # §5: "reduced three times prior to termination"
    patience: int = 5  # epochs without improvement before a reduction (not given in the paper)
    threshold: float = 0.001  # the smallest drop in top-1 error that counts as improvement (absolute)
    milestones: list[int] = field(default_factory=lambda: [30, 60, 80])  # epochs, for kind = "step"


@dataclass
class RunConfig:
    """How a run executes; none of it changes the maths of the recipe."""

    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # fp32 as in the paper
    channels_last: bool = False
    compile: bool = False
    # The LRN's implementation (the same function): "auto" = the fused Triton kernel on CUDA, the torch
    # path elsewhere; "triton" or "torch" forces one (alexrepro.nets.lrn.KERNELS).
    lrn_kernel: Literal["auto", "triton", "torch"] = "auto"
    # How conv2/4/5's towers run (the same function): "grouped" = one grouped convolution, "split" = one
    # convolution per tower, joined (alexrepro.nets.alexnet.CONV_FORMS; `alexrepro bench conv` times both).
    grouped_conv: Literal["grouped", "split"] = "grouped"
    log_every: int = 50  # steps between metrics.jsonl lines
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = only at epoch ends
    keep_last: int = 3  # per-epoch checkpoints kept besides last and best
    stall_steps: int = 2000  # steps after which a loss still near ln(classes) is reported as the init stall


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "run": RunConfig,
}
TOP_LEVEL_KEYS = ("extends", "description")


@dataclass
class Recipe:
    """A whole recipe: its name and description, and one dataclass per section."""

    name: str
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as plain sections (no name), the form stored in runs and checkpoints."""
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}


def diff_recipes(a: Recipe, b: Recipe) -> list[str]:
    """The `section.key` names whose values differ between two recipes."""
    da, db = a.to_dict(), b.to_dict()
    return [f"{s}.{k}" for s in SECTIONS for k in da[s] if da[s][k] != db[s].get(k)]


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe as a TOML document (what a run folder stores as recipe.toml)."""
    lines = [f"# resolved recipe {recipe.name!r}", f"description = {_toml_value(recipe.description)}"]
    for sec, values in recipe.to_dict().items():
        lines += ["", f"[{sec}]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'  # every other field is a str
