"""Strict construction of config dataclasses from plain data (YAML, JSON), and comparing them.

Unknown keys are errors that list the valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from types import SimpleNamespace
from typing import Any, TypeVar

from w2sdefense.config.schema import check_finite, to_dict
from w2sdefense.errors import UserError, cut, shown

T = TypeVar("T")



def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _build(tp: Any, value: Any, where: str) -> Any:
    """Convert YAML data `value` to type `tp`, naming `where` in any error."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise UserError(f"{where or 'config'} must be a mapping; got {shown(value)}")
        return from_dict(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{where} must be a list; got {shown(value)}")
        (item,) = typing.get_args(tp)
        return [_build(item, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where} must be a mapping; got {shown(value)}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "2e-5" as a string
        except ValueError:
            pass
    if tp is float:
        check_finite(where, value)  # .nan and .inf would pass every range check
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise UserError(f"{where} must be {_type_name(tp)}; got {shown(value)}")
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys are an error listing the valid ones."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls) if f.init]
    extra = getattr(cls, "EXTRA", None)
    if extra is not None:
        # Undeclared keys belong to the EXTRA mapping (a defense's own settings, checked by it).
        loose = {k: v for k, v in data.items() if k not in valid}
        data = {k: v for k, v in data.items() if k in valid}
        if loose:
            data[extra] = {**(data.get(extra) or {}), **loose}
    unknown = sorted(set(data) - set(valid), key=str)
    if unknown:
        prefix = f"{where}." if where else ""
        raise UserError(
            f"unknown setting {', '.join(cut(prefix + str(k)) for k in unknown)}; "
            f"valid keys{' under ' + where if where else ''}: {', '.join(valid)}"
        )
    defaults = {f.name: f.default_factory for f in dataclasses.fields(cls)
                if f.default_factory is not dataclasses.MISSING}
    kwargs = {}
    for key, value in data.items():
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict) and key in defaults:
            # A partial section overrides this field's own defaults (e.g. a defense's LoRA
            # training recipe), not the section class's generic ones.
            value = merge_dicts(_drop_exclusive(hints[key], to_dict(defaults[key]()), value), value)
        kwargs[key] = _build(hints[key], value, f"{where}.{key}" if where else key)
        if key == "seed":
            check_seed(f"{where}.{key}" if where else key, kwargs[key])
    return cls(**kwargs)


SEED_MAX = 2**32 - 1  # numpy's generators, which transformers.set_seed seeds, take 0..2**32-1


def check_seed(name: str, value: int | None) -> None:
    """Refuse a seed the random-number generators cannot take (every config's `seed` field)."""
    if value is not None and not 0 <= value <= SEED_MAX:
        raise UserError(f"{name} must be in 0..{SEED_MAX}; got {shown(value)}")


def _drop_exclusive(cls: Any, base: dict, update: dict) -> dict:
    """`base` without the settings that `update` replaces by setting one of their exclusive group."""
    base = dict(base)
    for group in getattr(cls, "EXCLUSIVE", ()):
        if any(update.get(key) is not None for key in group):
            for key in group:
                if key not in update:
                    base.pop(key, None)
    return base


def merge_dicts(base: dict, update: dict) -> dict:
    """Deep-merge `update` into a copy of `base` (mappings merge, anything else replaces)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def changed_settings(config: Any, default: Any = None) -> dict:
    """The settings of a config dataclass that differ from `default` (its class's defaults), nested.

    Stage keys hash this, so adding a new setting with a default does not invalidate finished
    stages; list items (defenses) are compared with their own class's defaults.
    """
    if default is None:
        try:
            default = type(config)()
        except UserError:  # a class with a required setting (e.g. fine-mixing's base_model): its field defaults
            default = SimpleNamespace(**{f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING
                                         else f.default for f in dataclasses.fields(config)})
    changed = {}
    for f in dataclasses.fields(config):
        value, base = getattr(config, f.name), getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            sub = changed_settings(value, base)
            if sub:
                changed[f.name] = sub
        elif isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            changed[f.name] = [changed_settings(item) for item in value]
        elif value != base:
            changed[f.name] = value
    return changed
