"""Recipes: TOML files in recipes/ loaded into typed dataclasses, the one schema for every run.

A recipe file has the sections below ([model], [data], [optim], [schedule], [run]); every key is
a field of the matching dataclass, and a file may start from another with `extends = "NAME"`.
Unknown sections or keys, and values of the wrong type, are errors that name the key and the
valid choices. `--set section.key=value` overrides a loaded recipe with type coercion.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from alexrepro.errors import UserError
from alexrepro.loaders import KINDS
from alexrepro.nets import NETS

# The valid names come from the registries (alexrepro.nets.NETS, alexrepro.loaders.BACKENDS), so a new
# net or loader backend is a valid recipe value as soon as it is registered. Loader kinds are listed
# sorted, as recipe errors have always listed them.
NetName = Literal[tuple(NETS)]  # type: ignore[valid-type]
LoaderKind = Literal[tuple(sorted(KINDS))]  # type: ignore[valid-type]


@dataclass
class ModelConfig:
    """The net of §3: which layout, how wide, and every ambiguity named."""

    # Which net: "alexnet" is the paper's net of §3, which every other key here describes;
    # "torchvision-alexnet" is torchvision's "one weird trick" variant (64-192-384-256-256 kernels,
    # no LRN, no groups, 6×6 adaptive pooling), for its published weights; it reads only
    # num_classes, width, fc_width and dropout. Recipes and checkpoints without it mean "alexnet";
    # the names are those of alexrepro.nets.NETS.
    arch: NetName = "alexnet"
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
    loader: LoaderKind = "auto"  # alexrepro.loaders.KINDS
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


def recipes_dir() -> Path:
    """Where the shipped recipes live: recipes/ beside the package in a checkout, inside it when installed."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "recipes", here.parent / "recipes"):
        if candidate.is_dir():
            return candidate
    raise UserError("the shipped recipes folder is missing; reinstall alexrepro (pip install -e .)")


def list_recipes() -> list[tuple[str, str]]:
    """(name, description) of every shipped recipe, sorted by name."""
    out = []
    for p in sorted(recipes_dir().glob("*.toml")):
        raw = _read_toml(p)
        out.append((p.stem, str(raw.get("description", ""))))
    return out


def load_recipe(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a shipped recipe by name or a TOML file by path, then apply `section.key=value` overrides."""
    raw, name = _resolve(str(name_or_path), seen=())
    recipe = recipe_from_dict(raw, name=name)
    return apply_overrides(recipe, overrides)


def recipe_from_dict(raw: dict[str, Any], name: str = "custom") -> Recipe:
    """Build a Recipe from nested sections, checking every key and type."""
    unknown = [k for k in raw if k not in SECTIONS and k not in TOP_LEVEL_KEYS]
    if unknown:
        raise UserError(_unknown_msg("section", unknown[0], list(SECTIONS) + list(TOP_LEVEL_KEYS)))
    sections = {}
    for sec, cls in SECTIONS.items():
        values = raw.get(sec, {})
        if not isinstance(values, dict):
            raise UserError(f"recipe: [{sec}] must be a table of keys, got {values!r}")
        sections[sec] = _build_section(sec, cls, values)
    recipe = Recipe(name=name, description=str(raw.get("description", "")), **sections)
    validate(recipe)
    return recipe


def apply_overrides(recipe: Recipe, overrides: list[str] | tuple[str, ...]) -> Recipe:
    """Return a copy of `recipe` with each `section.key=value` applied and type-coerced."""
    data = recipe.to_dict()
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set optim.lr=0.02")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        if len(parts) != 2:
            raise UserError(f"--set {item!r}: the key must be section.key, e.g. optim.lr")
        sec, key = parts
        if sec not in SECTIONS:
            raise UserError(_unknown_msg("section", sec, list(SECTIONS)))
        hints = _field_types(SECTIONS[sec])
        if key not in hints:
            raise UserError(_unknown_msg(f"[{sec}] key", key, list(hints)))
        data[sec][key] = _coerce_text(f"{sec}.{key}", value.strip(), hints[key])
    out = recipe_from_dict({**data, "description": recipe.description}, name=recipe.name)
    return out


def validate(recipe: Recipe) -> None:
    """Range checks that types alone do not express."""
    m, d, o, s, r = recipe.model, recipe.data, recipe.optim, recipe.schedule, recipe.run
    checks = [
        (m.num_classes >= 2, "model.num_classes must be at least 2"),
        (m.width > 0, "model.width must be positive"),
        (m.fc_width >= 1, "model.fc_width must be positive"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (m.lrn_size >= 1 and m.lrn_size % 2 == 1, "model.lrn_size must be a positive odd number"),
        (m.pool_size >= 1 and m.pool_stride >= 1, "model.pool_size and pool_stride must be positive"),
        (m.conv1_padding >= 0, "model.conv1_padding must be 0 or more"),
        (len(d.mean_rgb) == 3 and len(d.std_rgb) == 3, "data.mean_rgb and data.std_rgb need 3 values (R, G, B)"),
        (all(v > 0 for v in d.std_rgb), "data.std_rgb values must be positive"),
        (d.crop_size <= d.image_size, "data.crop_size must not exceed data.image_size"),
        (d.image_size <= 256, "data.image_size is at most 256, the size prep stores"),
        (d.workers >= 0, "data.workers must be 0 or more"),
        (o.lr > 0, "optim.lr must be positive"),
        (o.batch_size >= 1, "optim.batch_size must be at least 1"),
        (0.0 <= o.momentum < 1.0, "optim.momentum must be in [0, 1)"),
        (s.epochs >= 1, "schedule.epochs must be at least 1"),
        (0.0 < s.factor < 1.0, "schedule.factor must be in (0, 1)"),
        (list(s.milestones) == sorted(s.milestones), "schedule.milestones must be increasing"),
        (d.lighting_std >= 0, "data.lighting_std must be 0 or more"),
        (o.weight_decay >= 0, "optim.weight_decay must be 0 or more"),
        (o.bias_lr_mult > 0, "optim.bias_lr_mult must be positive"),
        (s.patience >= 0 and s.max_reductions >= 0, "schedule.patience and max_reductions must be 0 or more"),
        (0 <= r.seed < 2**32, "run.seed must be between 0 and 2**32 - 1"),
        (r.log_every >= 1, "run.log_every must be at least 1"),
        (r.checkpoint_every >= 0, "run.checkpoint_every must be 0 (epoch ends only) or more"),
        (r.keep_last >= 0, "run.keep_last must be 0 or more"),
        (r.stall_steps >= 0, "run.stall_steps must be 0 or more"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UserError(f"recipe {recipe.name!r}: {msg}")


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


# ---------------------------------------------------------------------------------------------
def _resolve(ref: str, seen: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    path = Path(ref)
    if path.suffix == ".toml" or path.exists():
        if path.is_dir():
            raise UserError(f"recipe {ref} is a folder; give a shipped name ({_names()}) or a .toml file")
        if not path.is_file():
            raise UserError(f"recipe file {ref} does not exist; give a shipped name ({_names()}) or a .toml path")
        name = path.stem
    else:
        path = recipes_dir() / f"{ref}.toml"
        if not path.is_file():
            raise UserError(_unknown_msg("recipe", ref, [n for n, _ in list_recipes()]))
        name = ref
    if name in seen:
        raise UserError(f"recipe {name!r} extends itself through {' -> '.join(seen)}")
    raw = _read_toml(path)
    parent = raw.get("extends")
    if parent is None:
        return raw, name
    if not isinstance(parent, str):
        raise UserError(f"recipe {path}: extends must be a recipe name")
    base, _ = _resolve(parent, seen + (name,))
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in raw.items():
        if k == "extends":
            continue
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    merged.pop("extends", None)
    return merged, name


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"recipe {path} is not valid TOML: {e}") from None


def _names() -> str:
    return ", ".join(n for n, _ in list_recipes())


def _unknown_msg(what: str, got: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(got, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {what} {got!r}{hint}; valid: {', '.join(valid)}"


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build_section(sec: str, cls: type, values: dict[str, Any]):
    hints = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise UserError(_unknown_msg(f"[{sec}] key", key, list(hints)))
        kwargs[key] = _check_type(f"{sec}.{key}", value, hints[key])
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {typing.get_args(tp)[0].__name__}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _check_type(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    bad = UserError(f"recipe key {key} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise bad
        return [_check_type(key, v, inner) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(tp, types.UnionType):  # pragma: no cover - no unions in the schema yet
        raise bad
    return value


def _coerce_text(key: str, text: str, tp: Any) -> Any:
    """Parse a --set value: TOML syntax first (1e-2, true, [30, 60]), then as a bare string."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    if typing.get_origin(tp) is list and isinstance(value, (str, int, float)):
        value = [_list_item(key, text, x.strip(), tp) for x in str(value).split(",") if x.strip()]
    if tp is str or (typing.get_origin(tp) is Literal and isinstance(value, (int, float, bool))):
        value = text
    return _check_type(key, value, tp)


def _list_item(key: str, text: str, item: str, tp: Any) -> Any:
    """One comma-separated item of a --set list value, as TOML (a bare word stays a string in a list of str)."""
    try:
        return tomllib.loads(f"v = {item}")["v"]
    except tomllib.TOMLDecodeError:
        if typing.get_args(tp) == (str,):
            return item
        raise UserError(f"--set {key}={text}: {item!r} is not {_type_name(typing.get_args(tp)[0])}; "
                        f"{key} must be {_type_name(tp)}, comma-separated (e.g. --set {key}=30,60)") from None


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
