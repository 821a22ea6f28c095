"""Strict dataclass <-> dict conversion: unknown keys and wrong types are errors naming the key."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints


from .errors import UserError


class ConfigError(UserError):
    """A configuration value or key is invalid; the message names it (and the file, when known)."""


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from plain data, checking every key and type."""
    return _convert(cls, data, where or cls.__name__)


def check_partial(cls: type, data: Any, where: str) -> dict:
    """Check the keys and value types of a mapping holding some of dataclass `cls`'s fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(fields))})")
    return {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}


def _convert(kind: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(kind), get_args(kind)
    if dataclasses.is_dataclass(kind):
        values = check_partial(kind, value, where)
        required = [f.name for f in dataclasses.fields(kind) if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in value]
        if missing:
            raise ConfigError(f"{where}: missing key {missing[0]!r} (required: {', '.join(required)})")
        try:
            return kind(**values)
        except ConfigError as error:
            raise ConfigError(f"{where}.{error}") from None
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of the allowed types")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        items = [_convert(args[0], item, f"{where}[{i}]") for i, item in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return {_convert(args[0], k, where): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and not (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
        raise ConfigError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) for a dataclass tree."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(item) for item in obj]
    if isinstance(obj, dict):
        return {key: to_dict(item) for key, item in obj.items()}
    return obj


RESOURCE = {"resource": True}  # field metadata: where a job runs (workers, CPUs, GPUs), not what it computes


def resource(default: Any) -> Any:
    """A config field describing resources: left out of `non_default`, so of every hash."""
    return dataclasses.field(default=default, metadata=RESOURCE)


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def non_default(obj: Any) -> Any:
    """Plain data keeping only the fields that differ from their defaults (recursively), as in
    open_lth's hparams strings: a field added later with a default leaves existing hashes unchanged. Resource
    fields (`resource`) are left out: they change where a job runs, not its result, so never a hash."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            if f.metadata.get("resource"):
                continue
            value, default = getattr(obj, f.name), _default_of(f)
            if default is not dataclasses.MISSING and to_dict(value) == to_dict(default):
                continue
            out[f.name] = non_default(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [non_default(item) for item in obj]
    if isinstance(obj, dict):
        return {key: non_default(item) for key, item in obj.items()}
    return obj


def canonical_json(data: Any) -> str:
    return json.dumps(to_dict(data), sort_keys=True, separators=(",", ":"))


def content_hash(*parts: Any) -> str:
    """A short, stable hash of plain data (used to address stage outputs)."""
    return hashlib.sha256("\n".join(canonical_json(p) for p in parts).encode()).hexdigest()[:16]


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested mappings: {'a': {'b': 1}} -> {'a.b': 1} (lists stay values)."""
    data = to_dict(data)
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        flat.update(flatten(value, dotted) if isinstance(value, dict) else {dotted: value})
    return flat


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested plain data, creating mappings on the way."""
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {key!r} is not a mapping")
    node[leaf] = value


def check(condition: bool, key: str, message: str) -> None:
    """Field validation for __post_init__: raises ConfigError('key: message')."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


__all__ = ["ConfigError", "check_partial", "resource", "from_dict", "to_dict", "non_default", "canonical_json", "content_hash", "flatten", "set_dotted", "check"]
