"""A JSON Schema as a grammar in Lark's EBNF: the route for schemas outlines-core refuses because they recurse
(``{"anyOf": [{"type": "integer"}, {"type": "array", "items": {"$ref": "#"}}]}``); the grammar constraint
bounds their nesting by its ``depth`` instead.

Covered: ``type`` (one or a list), ``properties`` with ``required`` (keys in the order given, no others),
``items``, ``enum``, ``const``, ``anyOf``, ``oneOf`` (as ``anyOf``: a grammar cannot say "exactly one"),
``$ref`` to ``#``, ``#/$defs/NAME`` and ``#/definitions/NAME``, and ``{}`` / ``true`` (any JSON value). Any
other keyword that narrows the language is refused by name rather than silently ignored.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["schema_grammar"]

IGNORED = {"title", "description", "$schema", "$id", "$defs", "definitions", "examples", "default", "$comment",
           "additionalProperties"}  # additionalProperties: only the listed keys are ever written
COMMON = r"""
STRING: /"([^"\\\x00-\x1f]|\\["\\\/bfnrt])*"/
INTEGER: /-?(0|[1-9][0-9]*)/
NUMBER: /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/
empty:
any: "{" [STRING ":" any ("," STRING ":" any)*] "}" | "[" [any ("," any)*] "]"
   | STRING | NUMBER | "true" | "false" | "null"
%ignore /[ \t\n]+/
"""
TYPES = {"string": "STRING", "integer": "INTEGER", "number": "NUMBER", "boolean": '"true" | "false"',
         "null": '"null"'}


def _literal(value: Any) -> str:
    """A JSON value as a Lark string literal of its compact text."""
    return json.dumps(json.dumps(value, separators=(",", ":")))


class _Writer:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}

    def rule(self, body: str) -> str:
        name = f"r{len(self.rules)}"
        self.rules[name] = body
        return name

    def schema(self, schema: Any) -> str:
        """A rule name for ``schema``."""
        if schema is True or schema == {}:
            return "any"
        if not isinstance(schema, dict):
            raise ValueError(f"json_schema: a schema must be an object or true, got {schema!r}")
        unknown = sorted(set(schema) - IGNORED - {"type", "properties", "required", "items", "enum", "const",
                                                   "anyOf", "oneOf", "$ref"})
        if unknown:
            raise ValueError(f"json_schema: the grammar route for recursive schemas does not support "
                             f"{', '.join(unknown)}")
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        if "const" in schema:
            return self.rule(_literal(schema["const"]))
        if "enum" in schema:
            return self.rule(" | ".join(map(_literal, schema["enum"])))
        if "anyOf" in schema or "oneOf" in schema:
            return self.rule(" | ".join(self.schema(s) for s in schema.get("anyOf", schema.get("oneOf"))))
        types = schema.get("type", ["object", "array", "string", "number", "boolean", "null"])
        alternatives = [self.typed(kind, schema) for kind in ([types] if isinstance(types, str) else types)]
        return self.rule(" | ".join(alternatives))

    def typed(self, kind: str, schema: dict[str, Any]) -> str:
        if kind in TYPES:
            return TYPES[kind]
        if kind == "array":
            item = self.schema(schema.get("items", True))
            return f'"[" [{item} ("," {item})*] "]"'
        if kind == "object":
            return self.object(schema.get("properties"), set(schema.get("required", ())))
        raise ValueError(f"json_schema: unknown type {kind!r}")

    def object(self, properties: dict[str, Any] | None, required: set[str]) -> str:
        if properties is None:
            return '"{" [STRING ":" any ("," STRING ":" any)*] "}"'
        pairs = [(f'{_literal(key)} ":" {self.schema(value)}', key in required) for key, value in properties.items()]
        # tail_k: the properties from k on after one was written (each after a comma); head_k: before any.
        tail = head = ""
        for pair, needed in reversed(pairs):
            tail, head = (self.rule(f'"," {pair} {tail}' if needed else f'("," {pair})? {tail}'),
                          self.rule(f"{pair} {tail}" if needed else f"{pair} {tail} | {head or 'empty'}"))
        return f'"{{" {head} "}}"'

    def ref(self, target: str) -> str:
        if target not in self.refs:
            if target == "#":
                schema = self.root
            else:
                parts = target.split("/")
                if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
                    raise ValueError(f"json_schema: $ref {target!r}: only '#', '#/$defs/NAME' and "
                                     "'#/definitions/NAME' are supported")
                schema = self.root.get(parts[1], {}).get(parts[2])
                if schema is None:
                    raise ValueError(f"json_schema: $ref {target!r} names no definition")
            self.refs[target] = name = f"ref{len(self.refs)}"
            self.rules[name] = self.schema(schema)
        return self.refs[target]


def schema_grammar(schema: dict[str, Any]) -> str:
    """The grammar (Lark's EBNF, start rule ``start``) of the JSON texts that ``schema`` describes."""
    writer = _Writer(schema)
    start = writer.schema(schema)
    lines = [f"start: {start}"] + [f"{name}: {body}" for name, body in writer.rules.items()]
    return "\n".join(lines) + "\n" + COMMON
