"""Validation of the settings dataclasses (one frozen dataclass per stage).

Every config checks itself on construction (``__post_init__``) with :func:`check_fields`
and raises :class:`shared.errors.ConfigError` naming the field, its value and what it must
be; :func:`replace_fields` builds a config from ``name=value`` strings (the benchmarks'
``--set``, any future CLI option), refusing unknown names.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from numbers import Real
from typing import Any, TypeVar

from shared.errors import ConfigError

C = TypeVar("C")


def field_error(config: object, name: str, value: object, expected: str) -> ConfigError:
    """The error for field ``name`` of ``config`` holding ``value`` instead of ``expected``."""
    return ConfigError(f"{type(config).__name__}.{name} = {value!r}: must be {expected}", field=name)


def _number(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_fields(config: object, *, positive: Iterable[str] = (), non_negative: Iterable[str] = (),
                 unit: Iterable[str] = (), integers: Iterable[str] = (), unbounded: Iterable[str] = ()) -> None:
    """Check a dataclass instance's fields; raise :class:`ConfigError` on the first bad one.

    Every numeric field (and every element of a tuple of numbers) must be a finite real
    number (booleans are not numbers here), but ``unbounded`` ones may be +inf (a limit
    switched off); ``positive`` fields must be > 0, ``non_negative`` >= 0, ``unit`` within
    [0, 1] and ``integers`` whole numbers.
    """
    unbounded = set(unbounded)
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if _number(v) and not math.isfinite(float(v)) and not (f.name in unbounded and v == math.inf):
                raise field_error(config, f.name, value, "a finite number")
    rules = ((positive, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0"),
             (unit, lambda v: 0 <= v <= 1, "within [0, 1]"),
             (integers, lambda v: float(v).is_integer(), "a whole number"))
    for names, ok, expected in rules:
        for name in names:
            value = getattr(config, name)
            values = value if isinstance(value, tuple) else (value,)
            if not values or not all(_number(v) and ok(v) for v in values):
                raise field_error(config, name, value, f"a number {expected}" if expected[0] in "<>" else expected)


def parse_value(text: str) -> Any:
    """A ``--set`` value: JSON (``4``, ``0.5``, ``true``, ``[0.9, 1.1]``; a list becomes a
    tuple), or the text itself when it is not JSON."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return tuple(value) if isinstance(value, list) else value


def replace_fields(config: C, values: Mapping[str, Any]) -> C:
    """``config`` with the fields in ``values`` replaced (strings are parsed with
    :func:`parse_value`); an unknown name raises :class:`ConfigError` listing the known ones."""
    known = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{type(config).__name__} has no field {unknown[0]!r} (fields: {', '.join(sorted(known))})")
    parsed = {k: parse_value(v) if isinstance(v, str) else v for k, v in values.items()}
    try:
        return dataclasses.replace(config, **parsed)
    except TypeError as exc:  # a value the field's own checks could not even compare
        raise ConfigError(f"{type(config).__name__}: {exc}") from None
