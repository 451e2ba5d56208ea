"""attrs validators shared by every component, with messages that name the argument and its rule.

``attrs.validators.optional`` and ``in_`` serve as they are; numbers get their own because attrs' ``gt`` and
``instance_of(int)`` accept ``True`` and NaN, which no component's parameter means.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs

__all__ = ["integer", "number", "one_of", "optional", "Validator"]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]
optional = attrs.validators.optional


def integer(*, minimum: int, maximum: int | None = None, what: str | None = None) -> Validator:
    """An int (not a bool) of at least ``minimum`` (and at most ``maximum``)."""
    rule = what or ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
    if maximum is not None and what is None:
        rule += f" and < 2**{maximum.bit_length()}" if maximum == 2 ** maximum.bit_length() - 1 else f" and <= {maximum}"

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
                maximum is not None and value > maximum):
            raise ValueError(f"{attribute.name} must be {rule}, got {value!r}")

    return check


def number(*, minimum: float, maximum: float | None = None) -> Validator:
    """A finite int or float (not a bool) in ``[minimum, maximum]``."""

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{attribute.name} must be a number, got {value!r}")
        if maximum is not None and not minimum <= value <= maximum:  # also refuses NaN
            raise ValueError(f"{attribute.name} must lie in [{minimum:g}, {maximum:g}], got {value}")
        if not (math.isfinite(value) and value >= minimum):
            raise ValueError(f"{attribute.name} must be a finite number >= {minimum:g}, got {value}")

    return check


def one_of(*choices: Any) -> Validator:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {', '.join(map(str, choices))}, got {value!r}")

    return check
