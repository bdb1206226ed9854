"""Typed fields: check a value against a type annotation and build a dataclass from a mapping, with errors that
name the key, the value and what was expected. Used by the run config (``seqzoo.config``), the layer settings of
the architectures and the model configs. Imports nothing from seqzoo but ``seqzoo.common``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Literal, Union

from .common import ConfigError, did_you_mean


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"a list of {type_name(args[0])}" if args else "a list"
    if origin is dict:
        args = typing.get_args(tp)
        return f"a mapping of {type_name(args[0])} to {type_name(args[1])}" if args else "a mapping"
    return getattr(tp, "__name__", str(tp))


def check_type(key: str, value: Any, tp: Any) -> Any:
    """Return ``value`` converted to ``tp`` where that is lossless (int -> float, "1e-3" -> 1e-3, a scalar to a
    one-element list), else raise :class:`ConfigError` naming ``key``."""

    def fail():
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r} ({type(value).__name__})")

    if tp is Any or tp is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            fail()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return check_type(key, value, arg)
            except ConfigError:
                continue
        fail()
    if tp is type(None):
        if value is not None:
            fail()
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        fail()
    if tp is float:
        if isinstance(value, bool):
            fail()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                fail()
        fail()
    if tp is str:
        if isinstance(value, str):
            return value
        fail()
    if origin in (list, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            items = list(value)
        else:
            fail()
        if args:
            items = [check_type(f"{key}[{i}]", v, args[0]) for i, v in enumerate(items)]
        return items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            fail()
        args = typing.get_args(tp)
        if args:
            return {check_type(f"{key} (a key)", k, args[0]): check_type(f"{key}.{k}", v, args[1])
                    for k, v in value.items()}
        return dict(value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        fail()
    return value


def unknown_key_error(key: str, valid: typing.Iterable[str]) -> ConfigError:
    valid = sorted(valid)
    hint = did_you_mean(key.rsplit(".", 1)[-1], valid)
    return ConfigError(f"unknown key {key!r}{hint}; valid keys: {', '.join(valid)}")


def dataclass_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def build_dataclass(cls: type, values: dict | None, section: str):
    """Instantiate dataclass ``cls`` from ``values``, checking every key and type; errors name ``section.key``."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping, got {values!r}")
    types_ = dataclass_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types_:
            raise unknown_key_error(f"{section}.{key}", types_)
        kwargs[key] = check_type(f"{section}.{key}", value, types_[key])
    return cls(**kwargs)
