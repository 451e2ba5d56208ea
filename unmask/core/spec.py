"""Component specs: one syntax for Python, the CLI and ablation grids.

``name`` or ``name:key=value,key=value``; ``a + b`` combines two specs with the kind's combinator
(``union`` for policies, ``any`` for stops). Values are read as int, float, bool, none or string. A value in
single or double quotes is a string taken as written, so it may hold ``,``, ``+``, ``:``, ``=``, spaces or
the other quote (``regex:pattern='[a-z]{1,3}'``); inside, a backslash escapes the quote or itself.
"""

from __future__ import annotations

from typing import Any, TypeAlias

__all__ = ["Spec", "SpecError", "parse_spec", "split_combined", "format_spec"]

# A component by name: ``"threshold:tau=0.9"``, ``"topk + threshold"`` or ``("threshold", {"tau": 0.9})``.
Spec: TypeAlias = str | tuple[str, dict[str, Any]]


class SpecError(ValueError):
    """A spec string or its parameters do not fit the registered component."""


QUOTES = "'\""


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    """``text`` split at each ``separator`` that is not inside a quoted value."""
    parts: list[str] = []
    current: list[str] = []
    quote: str | None = None
    index = 0
    while index < len(text):
        char = text[index]
        if quote is not None and char == "\\" and index + 1 < len(text):
            current.append(text[index:index + 2])
            index += 2
            continue
        if quote is not None:
            quote = None if char == quote else quote
        elif char in QUOTES:
            quote = char
        elif char == separator:
            parts.append("".join(current))
            current = []
            index += 1
            continue
        current.append(char)
        index += 1
    if quote is not None:
        raise SpecError(f"in spec {text!r}: a quote {quote} is not closed")
    parts.append("".join(current))
    return parts


def split_combined(text: str) -> list[str]:
    return [part.strip() for part in _split_outside_quotes(text, "+")]


def parse_spec(text: str) -> tuple[str, dict[str, Any]]:
    """Parse ``name:key=value,...`` into ``(name, params)``."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"a component spec must be a non-empty string, got {text!r}")
    name, _, rest = text.strip().partition(":")
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in _split_outside_quotes(rest, ","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or any(quote in key for quote in QUOTES):
            raise SpecError(f"in spec {text!r}: parameter {item!r} must look like key=value")
        if key.strip() in params:
            raise SpecError(f"in spec {text!r}: parameter {key.strip()!r} is given twice")
        params[key.strip()] = _parse_value(value.strip(), text)
    return name.strip(), params


def format_spec(name: str, params: dict[str, Any]) -> str:
    """The inverse of :func:`parse_spec` for scalar parameters (strings are quoted where they need it)."""
    if not params:
        return name
    return name + ":" + ",".join(f"{k}={_format_value(v)}" for k, v in params.items())


def _unquote(value: str, spec: str) -> str:
    quote = value[0]
    if len(value) < 2 or value[-1] != quote or (len(value) > 2 and _escapes_end(value)):
        raise SpecError(f"in spec {spec!r}: the quoted value {value!r} must end with its quote {quote}")
    body, text, index = value[1:-1], [], 0
    while index < len(body):
        if body[index] == "\\" and index + 1 < len(body):
            index += 1
        elif body[index] == quote:
            raise SpecError(f"in spec {spec!r}: the quoted value {value!r} holds an unescaped {quote}; write \\{quote}")
        text.append(body[index])
        index += 1
    return "".join(text)


def _escapes_end(value: str) -> bool:
    """Whether the closing quote of ``value`` is escaped (an odd run of backslashes before it)."""
    run = len(value[1:-1]) - len(value[1:-1].rstrip("\\"))
    return run % 2 == 1


def _parse_value(value: str, spec: str = "") -> Any:
    if value and value[0] in QUOTES:
        return _unquote(value, spec)
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
    text = str(value)
    if isinstance(value, str) and (any(char in text for char in ",+:='\"\\") or not text or text != text.strip()
                                   or _parse_value(text) != value):
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return text
