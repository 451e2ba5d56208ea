"""Component specs: one syntax for Python, the CLI and ablation grids.

``name`` or ``name:key=value,key=value``; ``a + b`` combines two specs with the kind's combinator
(``union`` for policies, ``any`` for stops). Values are read as int, float, bool, none or string.
"""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["Spec", "SpecError", "parse_spec", "split_combined", "format_spec"]

# A component by name: ``"threshold:tau=0.9"``, ``"topk + threshold"`` or ``("threshold", {"tau": 0.9})``.
Spec: TypeAlias = str | tuple[str, dict[str, Any]]


class SpecError(ValueError):
    """A spec string or its parameters do not fit the registered component."""


def split_combined(text: str) -> list[str]:
    return [part.strip() for part in text.split("+")]


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """Parse ``name:key=value,...`` into ``(name, params)``."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"a component spec must be a non-empty string, got {text!r}")
    name, _, rest = text.strip().partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"in spec {text!r}: parameter {item!r} must look like key=value")
        if key.strip() in params:
            raise SpecError(f"in spec {text!r}: parameter {key.strip()!r} is given twice")
        params[key.strip()] = _parse_value(value.strip())
    return name.strip(), params


def format_spec(name: str, params: dict[str, Any]) -> str:
    """The inverse of :func:`parse_spec` for scalar parameters."""
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={_format_value(v)}" for k, v in params.items())


def _parse_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for parse in (int, float):
        try:
            return parse(value)
        except ValueError:
            pass
    return value


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
