"""The net of §3: AlexNet's eight learned layers, its initialisation (§5) and the two-GPU model-parallel split.

`build_model(cfg, crop_size)` gives the grouped one-device form (conv2/conv4/conv5 with groups=2 stand for
the two towers); `model_parallel(model, devices)` gives the same function with each tower on its own device,
exchanging activations only where the paper's GPUs communicate, and the same state_dict keys and shapes.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from alexrepro.errors import UserError
from alexrepro.nets.lrn import LocalResponseNorm
from alexrepro.recipe import ModelConfig

# §3.5: kernels of the two-GPU net (both towers together), and the one-GPU net of the ablation:
# half the kernels in conv1-conv4, conv5 keeps 256.
TWO_TOWER_KERNELS = (96, 256, 384, 384, 256)
ONE_TOWER_KERNELS = (48, 128, 192, 192, 256)
# (kernel, stride, padding) per conv layer. §3.5: 11×11 stride 4, 5×5, 3×3; padding 2 on conv1 so that
# 224 inputs give §3.5's 55×55 maps (docs/FAITHFULNESS.md; the recipe's model.conv1_padding may change it; see
# conv_geometry), "same" padding on conv2-conv5.
CONV_GEOMETRY = {
    "conv1": (11, 4, 2),
    "conv2": (5, 1, 2),
    "conv3": (3, 1, 1),
    "conv4": (3, 1, 1),
    "conv5": (3, 1, 1),
}
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
GROUPED = ("conv2", "conv4", "conv5")  # §3.2: these see only the kernel maps on their own GPU
CONV_FORMS = ("grouped", "split")  # how a grouped layer runs (run.grouped_conv); see TowerConv2d
BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")  # §5: biases 1 here (to give ReLUs positive inputs)
INIT_SCHEMES = ("paper", "caffe", "paper-scaled")
# §3.5: each layer's fan-in in the paper's two-GPU net (kernel size × input maps on the same GPU).
PAPER_FAN_IN = {
    "conv1": 11 * 11 * 3, "conv2": 5 * 5 * 48, "conv3": 3 * 3 * 256, "conv4": 3 * 3 * 192,
    "conv5": 3 * 3 * 192, "fc6": 6 * 6 * 256, "fc7": 4096, "fc8": 4096,
}


def conv_channels(cfg: ModelConfig) -> tuple[int, ...]:
    """Kernel counts of conv1..conv5 for a layout and width, each rounded to an even number (towers split evenly)."""
    base = TWO_TOWER_KERNELS if cfg.layout == "two-tower" else ONE_TOWER_KERNELS
    return tuple(max(2, 2 * round(c * cfg.width / 2)) for c in base)


def conv_geometry(cfg: ModelConfig) -> dict[str, tuple[int, int, int]]:
    """(kernel, stride, padding) of conv1..conv5 for a recipe: CONV_GEOMETRY with conv1's padding from cfg."""
    k, stride, _ = CONV_GEOMETRY["conv1"]
    return {**CONV_GEOMETRY, "conv1": (k, stride, cfg.conv1_padding)}


def feature_sizes(cfg: ModelConfig, crop_size: int) -> dict[str, int]:
    """Spatial side of each stage's output for square `crop_size` inputs (224 → 55, 27, 27, 13, 13, 13, 13, 6)."""
    sizes: dict[str, int] = {}
    geometry = conv_geometry(cfg)
    s = crop_size
    for stage in ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5"):
        if stage.startswith("conv"):
            k, stride, pad = geometry[stage]
            s = (s + 2 * pad - k) // stride + 1
        elif s >= cfg.pool_size:
            s = (s - cfg.pool_size) // cfg.pool_stride + 1  # §3.4: max-pool z×z, stride s, no padding
        else:
            s = 0
        if s < 1:
            raise UserError(
                f"crop size {crop_size} is too small for this net: nothing is left after {stage}; "
                "use a larger data.crop_size (the tiny recipe uses 112)"
            )
        sizes[stage] = s
    return sizes


class AlexNet(nn.Module):
    """The eight-layer net of §3.5 on one device; conv2/4/5 grouped in two when the layout is two-tower."""

    def __init__(self, cfg: ModelConfig, crop_size: int) -> None:
        super().__init__()
        self.cfg = dataclasses.replace(cfg)  # a private copy: the recipe is never mutated through the model
        self.crop_size = crop_size
        c1, c2, c3, c4, c5 = conv_channels(cfg)
        towers = 2 if cfg.layout == "two-tower" else 1
        flat = c5 * feature_sizes(cfg, crop_size)["pool5"] ** 2
        geometry = conv_geometry(cfg)
        self.conv1 = _conv(geometry["conv1"], 3, c1)
        self.norm1 = _norm(cfg, towers)  # §3.3: LRN after the ReLU of conv1 and conv2, per tower
        self.pool1 = nn.MaxPool2d(cfg.pool_size, cfg.pool_stride)
        self.conv2 = _conv(geometry["conv2"], c1, c2, towers)
        self.norm2 = _norm(cfg, towers)
        self.pool2 = nn.MaxPool2d(cfg.pool_size, cfg.pool_stride)
        self.conv3 = _conv(geometry["conv3"], c2, c3)  # §3.5: conv3 sees all kernel maps of conv2
        self.conv4 = _conv(geometry["conv4"], c3, c4, towers)
        self.conv5 = _conv(geometry["conv5"], c4, c5, towers)
        self.pool5 = nn.MaxPool2d(cfg.pool_size, cfg.pool_stride)
        self.fc6 = nn.Linear(flat, cfg.fc_width)
        self.drop6 = nn.Dropout(cfg.dropout)  # §4.2: dropout on the outputs of fc6 and fc7
        self.fc7 = nn.Linear(cfg.fc_width, cfg.fc_width)
        self.drop7 = nn.Dropout(cfg.dropout)
        self.fc8 = nn.Linear(cfg.fc_width, cfg.num_classes)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The nonlinearity after every conv and hidden FC layer (§3.1: ReLU; tanh for the ablation)."""
        return F.relu(x) if self.cfg.activation == "relu" else torch.tanh(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fc7 activations after the nonlinearity (the 4096-d vectors of Figure 4's neighbours)."""
        x = self.pool1(self.norm1(self.act(self.conv1(x))))
        x = self.pool2(self.norm2(self.act(self.conv2(x))))
        x = self.act(self.conv3(x))
        x = self.act(self.conv4(x))
        x = self.pool5(self.act(self.conv5(x)))
        x = self.act(self.fc6(torch.flatten(x, 1)))
        return self.act(self.fc7(self.drop6(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores (logits; the softmax lives in the loss)."""
        return self.fc8(self.drop7(self.forward_features(x)))


class TowerConv2d(nn.Conv2d):
    """A convolution grouped by tower (§3.2: each output map sees only its own tower's input maps).

    form "grouped" runs it as one grouped convolution (groups = towers); "split" as one plain convolution
    per tower on that tower's maps, joined along the channels. The same function and the same parameters
    (one weight, one bias, the same state_dict): only the kernels differ, and with them the rounding.
    `alexrepro bench conv` times both (two_convs_vs_grouped_time).
    """

    form: str = "grouped"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "grouped" or self.groups == 1:
            return super().forward(x)
        xs, ws = x.chunk(self.groups, 1), self.weight.chunk(self.groups)
        bs = self.bias.chunk(self.groups) if self.bias is not None else [None] * self.groups
        return torch.cat([F.conv2d(xs[t], ws[t], bs[t], self.stride, self.padding, self.dilation)
                          for t in range(self.groups)], 1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, form={self.form!r}"


def set_grouped_conv(net: nn.Module, form: str) -> nn.Module:
    """Every TowerConv2d in `net` runs in `form` (CONV_FORMS; the recipe's run.grouped_conv). The same function
    and parameters, so weights, checkpoints and the recipe's maths do not change. Returns `net`."""
    if form not in CONV_FORMS:
        raise UserError(f"unknown grouped convolution form {form!r}; use one of {', '.join(CONV_FORMS)}")
    for module in net.modules():
        if isinstance(module, TowerConv2d):
            module.form = form
    return net


def _conv(geometry: tuple[int, int, int], c_in: int, c_out: int, groups: int = 1) -> nn.Conv2d:
    k, stride, pad = geometry
    return (TowerConv2d if groups > 1 else nn.Conv2d)(c_in, c_out, k, stride=stride, padding=pad, groups=groups)


def _norm(cfg: ModelConfig, groups: int) -> nn.Module:
    if not cfg.lrn:
        return nn.Identity()
    if cfg.lrn_across_towers:
        groups = 1  # Caffe's LRN layer: one window over all maps, across the towers' boundary
    return LocalResponseNorm(
        cfg.lrn_size, cfg.lrn_alpha, cfg.lrn_beta, cfg.lrn_k, cfg.lrn_alpha_convention, groups=groups
    )


def init_weights(model: AlexNet, scheme: str) -> None:
    """Initialise every learned layer in place: "paper" (§5), "caffe" (bvlc_alexnet) or "paper-scaled"."""
    if scheme not in INIT_SCHEMES:
        raise UserError(f"unknown init scheme {scheme!r}; use one of {', '.join(INIT_SCHEMES)}")
    with torch.no_grad():
        for name in LAYERS:
            layer = getattr(model, name)
            if scheme == "paper-scaled":
                # Not the paper's: §5's init with each std multiplied by sqrt(paper fan-in / this fan-in), so
                # a reduced-width net (the tiny recipe) keeps the full net's activation scale layer by layer.
                # A fixed 0.01 shrinks the signal through narrow layers and training stalls at ln(classes).
                # For the paper's own net every factor is 1 and this is exactly "paper".
                fan_in = layer.weight[0].numel()
                std = 0.01 * (PAPER_FAN_IN[name] / fan_in) ** 0.5
                layer.weight.normal_(0.0, std)
                layer.bias.fill_(1.0 if name in BIAS_ONE else 0.0)
                continue
            if scheme == "paper":
                # §5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7 and 0 in the rest.
                std, bias = 0.01, (1.0 if name in BIAS_ONE else 0.0)
            else:
                # Caffe's models/bvlc_alexnet/train_val.prototxt, the usual fix for the stall at ln 1000:
                # N(0, 0.01) except fc6/fc7 N(0, 0.005); biases 0.1 where the paper has 1, 0 elsewhere.
                # (bvlc_reference_caffenet has the same stds but keeps the paper's biases of 1.)
                std = 0.005 if name in ("fc6", "fc7") else 0.01
                bias = 0.1 if name in BIAS_ONE else 0.0
            layer.weight.normal_(0.0, std)
            layer.bias.fill_(bias)


def build_model(cfg: ModelConfig, crop_size: int) -> AlexNet:
    """The net a recipe's [model] section describes, for square crops of `crop_size`, initialised by cfg.init."""
    if crop_size < 1:
        raise UserError(f"crop size must be positive, got {crop_size}")
    model = AlexNet(cfg, crop_size)
    init_weights(model, cfg.init)
    return model


# --------------------------------------------------------------------------------------------- model parallel
class IncompatibleKeys(NamedTuple):
    """What load_state_dict returns, as torch's own: keys the model wanted but did not get, and the reverse."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _halves(n: int) -> tuple[int, int]:
    return (n - n // 2, n // 2)


class ModelParallelAlexNet(nn.Module):
    """The two-GPU net of §3.2: tower t's half of every layer on devices[t], exchanging where the GPUs talk.

    Every layer is split along its outputs: tower t holds the first or second half of the grouped model's
    kernels (and neurons), so its state_dict is the towers' tensors concatenated along dim 0, under the
    grouped model's keys. Activations cross devices only at conv3's, fc6's, fc7's and fc8's inputs.
    """

    def __init__(self, model: AlexNet, devices: tuple[torch.device, torch.device]) -> None:
        super().__init__()
        self.cfg = dataclasses.replace(model.cfg)
        self.crop_size = model.crop_size
        self.devices = (torch.device(devices[0]), torch.device(devices[1]))
        self.towers = nn.ModuleList(_tower_layers(model, t, dev) for t, dev in enumerate(self.devices))
        # Stateless layers shared by both towers; each tower normalises its own maps (§3.3: groups=1 inside it).
        self.norm = _norm(self.cfg, groups=1)
        self.pool = nn.MaxPool2d(self.cfg.pool_size, self.cfg.pool_stride)
        self.drop = nn.Dropout(self.cfg.dropout)
        self.load_state_dict(model.state_dict())

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """The nonlinearity after every conv and hidden FC layer."""
        return F.relu(x) if self.cfg.activation == "relu" else torch.tanh(x)

    def _exchange(self, halves: list[torch.Tensor]) -> list[torch.Tensor]:
        # Where the paper's GPUs communicate: each tower receives the other's half and sees all maps.
        return [torch.cat([h.to(dev) for h in halves], 1) for dev in self.devices]

    def _per_tower(self, fn, halves: list[torch.Tensor]) -> list[torch.Tensor]:
        # fn(tower_layers, activations) on each tower's own device; no data crosses devices here.
        return [fn(t, h) for t, h in zip(self.towers, halves, strict=True)]

    def _towers_fc7(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = [x.to(d) for d in self.devices]
        h = self._per_tower(lambda t, a: self.pool(self.norm(self.act(t["conv1"](a)))), h)
        h = self._per_tower(lambda t, a: self.pool(self.norm(self.act(t["conv2"](a)))), h)
        h = self._per_tower(lambda t, a: self.act(t["conv3"](a)), self._exchange(h))
        h = self._per_tower(lambda t, a: self.act(t["conv4"](a)), h)
        h = self._per_tower(lambda t, a: torch.flatten(self.pool(self.act(t["conv5"](a))), 1), h)
        h = self._per_tower(lambda t, a: self.drop(self.act(t["fc6"](a))), self._exchange(h))
        return self._per_tower(lambda t, a: self.act(t["fc7"](a)), self._exchange(h))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fc7 activations after the nonlinearity, on devices[0]."""
        return torch.cat([h.to(self.devices[0]) for h in self._towers_fc7(x)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores on devices[0]."""
        h = self._exchange([self.drop(a) for a in self._towers_fc7(x)])
        out = self._per_tower(lambda t, a: t["fc8"](a), h)
        return torch.cat([o.to(self.devices[0]) for o in out], 1)

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):  # type: ignore[override]
        """The grouped model's keys and shapes: each tensor the two towers' halves joined along dim 0."""
        out = OrderedDict() if destination is None else destination
        for name in LAYERS:
            for p in ("weight", "bias"):
                parts = [getattr(t[name], p) for t in self.towers]
                parts = [x if keep_vars else x.detach() for x in parts]
                out[f"{prefix}{name}.{p}"] = torch.cat([x.to(self.devices[0]) for x in parts], 0)
        return out

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):  # type: ignore[override]
        """Accept a grouped model's state_dict, splitting each tensor between the towers along dim 0."""
        del assign  # accepted for torch's signature; the towers' own tensors are always copied into
        expected = {f"{n}.{p}" for n in LAYERS for p in ("weight", "bias")}
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        if strict and (missing or unexpected):
            raise UserError(
                f"state_dict does not fit the two-tower AlexNet: missing {missing}, unexpected {unexpected}; "
                "load a checkpoint saved from the same recipe's model"
            )
        with torch.no_grad():
            for key in sorted(expected & set(state_dict)):
                name, p = key.split(".")
                targets = [getattr(t[name], p) for t in self.towers]
                want = (sum(x.shape[0] for x in targets), *targets[0].shape[1:])
                src = state_dict[key]
                if tuple(src.shape) != want:
                    raise UserError(
                        f"state_dict entry {key} has shape {tuple(src.shape)}, the model needs {want}; "
                        "load a checkpoint saved from the same recipe's model"
                    )
                for dst, part in zip(
                    targets, torch.split(src, [x.shape[0] for x in targets], 0), strict=True
                ):
                    dst.copy_(part)
        return IncompatibleKeys(missing, unexpected)


def _tower_layers(model: AlexNet, tower: int, device: torch.device) -> nn.ModuleDict:
    """Tower `tower`'s slice of every learned layer: its share of the outputs, the inputs it sees."""
    layers = {}
    geometry = conv_geometry(model.cfg)
    for name in LAYERS:
        w = getattr(model, name).weight  # conv: out × in/groups × k × k; linear: out × in
        n_out = _halves(w.shape[0])[tower]
        if name in geometry:
            k, stride, pad = geometry[name]
            layers[name] = nn.Conv2d(w.shape[1], n_out, k, stride=stride, padding=pad, device=device)
        else:
            layers[name] = nn.Linear(w.shape[1], n_out, device=device)
    return nn.ModuleDict(layers)


def model_parallel(model: AlexNet, devices: tuple[torch.device, torch.device]) -> ModelParallelAlexNet:
    """The §3.2 two-GPU split of a two-tower model: a new module with a copy of its weights, tower t on devices[t]."""
    if not isinstance(model, AlexNet):
        raise UserError(
            "model_parallel needs the AlexNet from build_model (unwrap DDP or torch.compile first)"
        )
    if model.cfg.layout != "two-tower":
        raise UserError(
            f"model parallelism splits the two-tower net; this model's layout is {model.cfg.layout!r}: "
            "use --set model.layout=two-tower or data parallelism"
        )
    if model.cfg.lrn and model.cfg.lrn_across_towers:
        raise UserError(
            "model parallelism normalises each tower's maps on its own GPU (§3.3); this model's LRN crosses "
            "the towers (model.lrn_across_towers, as Caffe's): use data parallelism"
        )
    if len(devices) != 2:
        raise UserError(f"model parallelism needs exactly two devices, got {len(devices)}")
    mp = ModelParallelAlexNet(model, devices)
    return mp.train(model.training)
