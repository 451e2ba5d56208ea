"""The request surface of ``unmask serve``: what one request may ask for and cost, checked before any work.

A request is untrusted. It never names a server path: a component parameter that is a string may be set by a
request only where the component declares it safe (``request_strings``), and a request's regular expression
or JSON Schema comes inline and is compiled in a child process under a memory, CPU and state budget. Every
limit is a field of :class:`Limits` with a flag of ``unmask serve`` (docs/serve.md lists them).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import attrs

from unmask.core.plugins import registry
from unmask.core.spec import SpecError, format_spec, parse_spec, split_combined

__all__ = ["ApiError", "Limits", "check_spec", "compile_pattern", "json_depth", "MAX_INTEGER"]

# Integers a spec parameter may hold in a request: beyond this no parameter of a decode means anything.
MAX_INTEGER = 2**31 - 1
_WORKER = Path(__file__).with_name("compile_worker.py")


class ApiError(Exception):
    """An OpenAI-style error answer: the status, a message naming the field and the rule."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error",
                503: "server_error", 504: "timeout_error"}.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _positive(_: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{attribute.name} must be a positive number, got {value!r}")


def _limit(default: float, help: str) -> Any:
    return attrs.field(default=default, validator=_positive, metadata={"help": help})


@attrs.frozen(kw_only=True)
class Limits:
    """Every bound a request is held to (each a flag of ``unmask serve``: ``max_body_bytes`` is
    ``--max-body-bytes``); the defaults suit the bundled model on a small machine."""

    max_body_bytes: int = _limit(1_000_000, "request body size in bytes (413 beyond)")
    max_json_depth: int = _limit(32, "how deeply a request body may nest lists and objects")
    max_prompt_chars: int = _limit(32_768, "a prompt's (or all messages') characters, checked before tokenizing")
    max_messages: int = _limit(64, "chat messages in one request")
    max_tokens: int = _limit(4096, "max_tokens a request may ask for (the model's positions may bound it lower)")
    max_spec_chars: int = _limit(256, "characters of a policy, stop_criterion, cache or constraint spec")
    max_spec_parts: int = _limit(8, "parts a spec may combine with '+'")
    max_pattern_chars: int = _limit(4096, "characters of a regex or of a response_format JSON Schema")
    max_constraint_states: int = _limit(2000, "states of a regex's or schema's automaton (over single characters)")
    compile_timeout_s: float = _limit(5.0, "seconds a regex or schema may take to compile (in a child process)")
    compile_memory_bytes: int = _limit(512 * 2**20, "memory in bytes the child process compiling it may use")
    max_temperature: float = _limit(2.0, "the highest temperature a request may ask for (OpenAI's cap)")
    max_stop_chars: int = _limit(256, "characters of one stop string")
    max_queue: int = _limit(64, "requests waiting for a batch; beyond it a request gets 429 at once")
    max_running: int = _limit(4, "batches decoding at once, taking turns a step each")
    request_timeout_s: float = _limit(600.0, "seconds from arrival after which a request is cut and answered 504")


def json_depth(value: Any) -> int:
    """How deeply ``value`` nests lists and objects (iteratively: a deep value cannot exhaust the stack)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_spec(kind: str, spec: Any, field: str, limits: Limits) -> str:
    """A request's component spec held to the request rules: a short string of few parts whose parameters are
    numbers, booleans or strings the component declares safe (``request_strings``). A component parameter
    declared ``"regex"`` is a regular expression and is compiled under the budget; one declared with a kind
    (``"trained_filters"``) must name a component of that kind registered in the server."""
    if not isinstance(spec, str) or not spec.strip():
        raise ApiError(400, f"{field} must be a non-empty spec string, e.g. 'threshold:tau=0.9'", field)
    if len(spec) > limits.max_spec_chars:
        raise ApiError(400, f"{field} is {len(spec)} characters; the server takes at most {limits.max_spec_chars}",
                       field)
    try:
        parts = split_combined(spec)
        if len(parts) > limits.max_spec_parts:
            raise ApiError(400, f"{field} combines {len(parts)} parts; the server takes at most "
                           f"{limits.max_spec_parts}", field)
        for part in parts:
            name, params = parse_spec(part)
            declared = getattr(registry().get(kind, name).factory, "request_strings", {})
            for key, value in params.items():
                _check_parameter(name, key, value, declared.get(key), field, limits)
    except SpecError as error:
        raise ApiError(400, f"{field}: {error}", field) from None
    return spec


def _check_parameter(name: str, key: str, value: Any, rule: str | None, field: str, limits: Limits) -> None:
    if isinstance(value, float) and not math.isfinite(value) or isinstance(value, int) and abs(value) > MAX_INTEGER:
        raise ApiError(400, f"{field}: {name}'s {key} must be a finite number of at most {MAX_INTEGER}", field)
    if not isinstance(value, str):
        return
    if rule is None:
        raise ApiError(400, f"{field}: {name}'s {key} is a string, and a request may not set it (it could name a "
                       "file on the server): the operator sets it when starting the server; a JSON schema goes "
                       "inline as response_format, a regular expression as regex", field)
    if rule == "regex":
        compile_pattern({"pattern": value}, field, limits)
    elif rule != "text" and value not in registry().names(rule):
        raise ApiError(400, f"{field}: {name}'s {key} must name one of the server's {rule} "
                       f"({', '.join(registry().names(rule)) or 'none'}), got {value!r}", field)


_COMPILES = threading.BoundedSemaphore(2)  # child compilers at once: each may use the whole memory budget


def compile_pattern(job: dict[str, str], field: str, limits: Limits) -> str:
    """The regular expression of ``{"pattern": ...}`` or ``{"schema": JSON text}``, once its automaton is known
    to fit the budget (compiled in a child process that cannot outgrow it); a ``regex:pattern=...`` spec."""
    source = job.get("pattern", job.get("schema", ""))
    if len(source) > limits.max_pattern_chars:
        raise ApiError(400, f"{field} is {len(source)} characters; the server takes at most "
                       f"{limits.max_pattern_chars}", field)
    outcome = _compiled(json.dumps(job, sort_keys=True), limits.compile_timeout_s, limits.compile_memory_bytes)
    if "error" in outcome:
        raise ApiError(400, f"{field}: {outcome['error']}", field)
    if outcome["states"] > limits.max_constraint_states:
        raise ApiError(400, f"{field}: its automaton has {outcome['states']} states; the server allows "
                       f"{limits.max_constraint_states} (--max-constraint-states)", field)
    return format_spec("regex", {"pattern": outcome["pattern"]})


@lru_cache(maxsize=256)
def _compiled(job: str, timeout_s: float, memory_bytes: int) -> dict[str, Any]:
    request = {**json.loads(job), "memory_bytes": memory_bytes, "cpu_s": max(1, math.ceil(timeout_s))}
    with _COMPILES:
        try:
            done = subprocess.run([sys.executable, "-I", str(_WORKER)], input=json.dumps(request), text=True,
                                  capture_output=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"compiling it ran past the server's budget of {timeout_s:g} s (--compile-timeout-s)"}
    if done.returncode != 0 or not done.stdout.strip():
        return {"error": f"compiling it needs more than the server's budget of {memory_bytes // 2**20} MiB "
                "or its CPU time (its automaton is too large)"}
    return json.loads(done.stdout)
