"""One validator for typed settings: config values → a dataclass, checked once at the entry.

:func:`typed` refuses unknown keys (naming the known ones) and values of the wrong type (naming the
value and a fix), then runs the dataclass's own meaning checks, its ``validate()`` method beside its
fields.  Every message is one line: ``<key>=<value> <what is wrong>; fix: <a valid override>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from trtsweep.errors import ConfigError

T = TypeVar("T")

#: annotation → (accepts a value?, what it must be)
_TYPES: dict[str, tuple[Any, str]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, Mapping), "a mapping (key: value, or +key.name=value)"),
    "list": (lambda v: isinstance(v, (list, tuple)), "a list ([a, b])"),
}


def typed(cls: type[T], values: Mapping[str, Any], where: str, owner: str | None = None) -> T:
    """``cls(**values)``, checked: ``where`` prefixes the keys in messages (``measure``, ``engine``);
    ``owner`` names what the keys belong to (``engine=tflite``), when more than ``where`` says."""
    known = sorted(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        what = f"a parameter of {owner}" if owner else "a known setting"
        raise ConfigError(f"{where}.{unknown[0]} is not {what}; fix: use one of {', '.join(known) or '(none)'}")
    try:
        obj = cls(**dict(values))
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        problem = _type_problem(f, getattr(obj, f.name))
        if problem:
            key = f"{where}.{f.name}"
            raise ConfigError(f"{key}{problem}{f' ({owner})' if owner else ''}; fix: {key}={_example(f)}")
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def _type_problem(f: dataclasses.Field, value: Any) -> str | None:
    annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    parts = [p.strip() for p in annotation.split("|")]
    if value is None:
        return None if "None" in parts else " must be set (got null)"
    accepts, what = _TYPES.get(parts[0], (None, ""))
    if accepts is not None and not accepts(value):
        return f"={value!r} must be {what}"
    return None


def _example(f: dataclasses.Field) -> str:
    """The field's default as override text, else a placeholder of its type."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "<value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def positive(key: str, value: float, fix: str, allow_zero: bool = False) -> None:
    """``value`` > 0 (or ≥ 0 with ``allow_zero``), else a ConfigError naming ``key`` and ``fix``."""
    if value < 0 or (value == 0 and not allow_zero):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} is invalid: must be {bound}; fix: {fix}")
