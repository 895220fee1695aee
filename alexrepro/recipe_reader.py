"""Reading recipes: TOML files in recipes/ (or any path), `extends`, `--set`, and every check of a recipe.

A recipe file has the sections of `alexrepro.recipe` ([model], [data], [optim], [schedule], [run]);
every key is a field of the matching dataclass, and a file may start from another with
`extends = "NAME"`. Unknown sections or keys, and values of the wrong type, are errors that name the
key and the valid choices. `--set section.key=value` overrides a loaded recipe with type coercion.
The names `model.arch` and `data.loader` accept are looked up in the registries (`alexrepro.nets.NETS`,
`alexrepro.loaders.KINDS`) here, where they are used, so a net or loader backend is a valid recipe value as
soon as it is registered.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from pathlib import Path
from typing import Any, Literal

import tomllib

from alexrepro.errors import UserError
from alexrepro.loaders import KINDS
from alexrepro.nets import NETS
from alexrepro.recipe import SECTIONS, TOP_LEVEL_KEYS, Recipe

# The fields that name a registry entry (typed str in the schema), as the choices they accept. Loader kinds
# are listed sorted, as recipe errors have always listed them.
REGISTERED: dict[tuple[str, str], Any] = {
    ("model", "arch"): Literal[tuple(NETS)],  # type: ignore[valid-type]
    ("data", "loader"): Literal[tuple(sorted(KINDS))],  # type: ignore[valid-type]
}


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
    raw, name = _resolve(str(name_or_path), seen=())  # seen: the files on the way, by path
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
        hints = _field_types(sec)
        if key not in hints:
            raise UserError(_unknown_msg(f"[{sec}] key", key, list(hints)))
        data[sec][key] = _coerce_text(f"{sec}.{key}", value.strip(), hints[key])
    out = recipe_from_dict({**data, "description": recipe.description}, name=recipe.name)
    return out


def validate(recipe: Recipe) -> None:
    """Range checks that types alone do not express; first, every float is a finite number."""
    check_finite(recipe)
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


def check_finite(recipe: Recipe) -> None:
    """A UserError naming the first float field (or list item) that is inf or nan: TOML and --set read `inf` and
    `nan` as numbers, which would pass the range checks and fail training steps later, far from the cause."""
    for sec, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value = getattr(getattr(recipe, sec), f.name)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(v, float) and not math.isfinite(v):
                    raise UserError(f"recipe {recipe.name!r}: {sec}.{f.name} must be a finite number, got {v}")


def _resolve(ref: str, seen: tuple[Path, ...]) -> tuple[dict[str, Any], str]:
    """(the recipe's sections, `extends` merged in, its name). A recipe is its file: a user's tiny.toml may
    extend the shipped "tiny"; only a file met again on the way is a cycle."""
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
    if path.resolve() in seen:
        chain = " -> ".join(str(p) for p in (*seen, path.resolve()))
        raise UserError(f"recipe {name!r} extends itself: {chain}")
    raw = _read_toml(path)
    parent = raw.get("extends")
    if parent is None:
        return raw, name
    if not isinstance(parent, str):
        raise UserError(f"recipe {path}: extends must be a recipe name")
    base, _ = _resolve(parent, seen + (path.resolve(),))
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


def _field_types(sec: str) -> dict[str, Any]:
    """Each field of a section with the type its values are checked against (a registry's names for REGISTERED)."""
    cls = SECTIONS[sec]
    hints = typing.get_type_hints(cls)
    return {f.name: REGISTERED.get((sec, f.name), hints[f.name]) for f in dataclasses.fields(cls)}


def _build_section(sec: str, cls: type, values: dict[str, Any]):
    hints = _field_types(sec)
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
