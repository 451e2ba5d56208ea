"""The OpenAI-compatible HTTP API of ``unmask serve`` (Starlette; streams through sse-starlette).

``POST /v1/completions`` and ``/v1/chat/completions`` take OpenAI's fields (``max_tokens``, ``temperature``,
``seed``, ``stop``, ``n`` = 1, ``stream``, ``response_format`` with an inline JSON Schema) and unmask's own as
extra body fields (``policy``, ``stop_criterion``, ``cache``, ``constraint``, ``regex``, ``block_length``,
``unmask_steps``). A stream's text deltas are the newly settled prefix of the answer (tokens left of the
first open position), so any OpenAI client reads it; with ``unmask_steps`` an ``unmask.step`` event per step
carries the whole canvas. Errors are OpenAI-style JSON naming the field. A request is untrusted: it is held
to :class:`~unmask.contrib.serve.limits.Limits` before any work, never names a server path, and reaches the
model only through the Host, key and content-type checks of :class:`Guard` (docs/serve.md).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import time
import uuid
from importlib import resources
from typing import Any

import anyio
import attrs

from unmask.constraints.regex import refuses_recursion
from unmask.constraints.schema_grammar import schema_grammar
from unmask.contrib.serve.batching import Batcher, DeadlineExceeded, Job, QueueFull, Settings, StepUpdate
from unmask.contrib.serve.limits import ApiError, Limits, check_spec, compile_pattern, json_depth
from unmask.contrib.serve.metrics import Metrics
from unmask.core.plugins import create, registry
from unmask.core.spec import format_spec
from unmask.core.types import SEED_MAX

__all__ = ["ApiError", "ServeConfig", "build_app"]

MAX_STOPS = 4
# On Ctrl-C / SIGTERM a stream in flight gets this long to finish its decode before it is cut; the server
# itself waits a little longer (``SHUTDOWN_S``) so that the streams end first.
STREAM_GRACE_S = 55.0
SHUTDOWN_S = 60
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# OpenAI fields the server does not implement, taken only at the values that ask for nothing: a client that
# asks for more is told so (400) instead of believing it got it. An empty tuple: any value, as it asks the
# server for nothing (``user`` identifies the caller; usage always comes with the last chunk of a stream).
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False, 0), "top_logprobs": (None, 0), "echo": (None, False), "best_of": (None, 1),
    "suffix": (None, ""), "logit_bias": (None, {}), "top_p": (None, 1), "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0), "tools": (None, []), "tool_choice": (None, "none"), "user": (),
    "stream_options": (),
}
HONOURED = {"model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "seed", "stop",
            "n", "stream", "response_format", "policy", "stop_criterion", "cache", "constraint", "regex",
            "block_length", "unmask_steps"}
log = logging.getLogger("unmask.serve")


@attrs.frozen(kw_only=True)
class ServeConfig:
    """How a server runs: its defaults, batching, limits and who may reach it."""

    name: str = "unmask"
    defaults: Settings = Settings()
    chat: bool | None = None
    max_batch: int = 8
    wait_s: float = 0.01
    join_running: bool = False  # requests join running batches with their settings (continuous batching)
    limits: Limits = Limits()
    api_key: str | None = None  # clients send it as "Authorization: Bearer KEY"
    allowed_hosts: tuple[str, ...] = LOOPBACK  # Host headers served; "*": any
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to read answers


@attrs.frozen
class Request:
    prompt_ids: list[int]
    settings: Settings
    max_tokens: int
    stops: tuple[str, ...]
    stream: bool
    steps: bool  # unmask.step events


class Service:
    """The model, its tokenizer and the batcher, with the request rules of both endpoints."""

    def __init__(self, model: Any, tokenizer: Any, config: ServeConfig) -> None:
        self.model, self.tokenizer, self.config, self.limits = model, tokenizer, config, config.limits
        self.name, self.defaults, self.chat = config.name, config.defaults, config.chat
        self.batcher = Batcher(model, tokenizer, max_batch=config.max_batch, wait_s=config.wait_s,
                               max_queue=config.limits.max_queue, max_running=config.limits.max_running,
                               join_running=config.join_running)

    def parse(self, body: Any, chat: bool) -> Request:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        if json_depth(body) > self.limits.max_json_depth:
            raise ApiError(400, f"the request body nests deeper than {self.limits.max_json_depth} levels")
        _check_fields(body, chat)
        if body.get("model") not in (None, self.name):
            raise ApiError(404, f"the model {str(body['model'])[:100]!r} does not exist; this server has "
                           f"{self.name!r}", "model", "model_not_found")
        if body.get("n", 1) != 1:
            raise ApiError(400, "n must be 1", "n")
        prompt_ids = self._chat_ids(body) if chat else self._prompt_ids(body)
        settings = self._settings(body)
        field = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        max_tokens = _integer(body, field, self.defaults.gen_length, 1, self.limits.max_tokens)
        block = min(settings.block_length, max_tokens)
        gen_length = -(-max_tokens // block) * block  # rounded up to whole blocks, cut back after
        limit = self.batcher.info.max_positions
        if limit is not None and len(prompt_ids) + gen_length > limit:
            field = field if len(prompt_ids) < limit else ("messages" if chat else "prompt")
            raise ApiError(400, f"the prompt's {len(prompt_ids)} tokens and a canvas of {gen_length} exceed the "
                           f"model's {limit} positions", field)
        stops = body.get("stop") or ()
        stops = (stops,) if isinstance(stops, str) else stops
        if not isinstance(stops, (list, tuple)) or len(stops) > MAX_STOPS or not all(
                isinstance(s, str) and 0 < len(s) <= self.limits.max_stop_chars for s in stops):
            raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOPS} non-empty strings of at "
                           f"most {self.limits.max_stop_chars} characters", "stop")
        return Request(prompt_ids=list(prompt_ids), settings=attrs.evolve(settings, gen_length=gen_length,
                                                                           block_length=block),
                       max_tokens=max_tokens, stops=tuple(stops), stream=_flag(body, "stream"),
                       steps=_flag(body, "unmask_steps"))

    def _text(self, text: Any, field: str) -> str:
        """A prompt or message, held to its length in characters before anything tokenizes it."""
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, f"{field} must be a non-blank string", field)
        if len(text) > self.limits.max_prompt_chars:
            raise ApiError(400, f"{field} is {len(text)} characters; the server takes at most "
                           f"{self.limits.max_prompt_chars}", field)
        return text

    def _prompt_ids(self, body: dict[str, Any]) -> list[int]:
        from unmask.contrib.models.transformers import encode_prompts

        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise ApiError(400, "prompt must be a string (or a list of one)", "prompt")
        return list(encode_prompts(self.tokenizer, [self._text(prompt, "prompt")], chat=False)[0])

    def _chat_ids(self, body: dict[str, Any]) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or len(messages) > self.limits.max_messages or not all(
                isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
                for m in messages):
            raise ApiError(400, f"messages must be a list of 1 to {self.limits.max_messages} {{role, content}} "
                           "objects with string content", "messages")
        self._text("".join(m["content"] for m in messages), "messages")
        if not getattr(self.tokenizer, "chat_template", None):
            if len(messages) != 1 or messages[0]["role"] != "user":
                raise ApiError(400, "this model has no chat template: send one user message", "messages")
            from unmask.contrib.models.transformers import encode_prompts

            return list(encode_prompts(self.tokenizer, [messages[0]["content"]], chat=False)[0])
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))

    def _settings(self, body: dict[str, Any]) -> Settings:
        temperature = body.get("temperature", self.defaults.temperature)
        if temperature is None:
            temperature = self.defaults.temperature
        top = self.limits.max_temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and 0 <= temperature <= top):
            raise ApiError(400, f"temperature must be a number in [0, {top:g}], got {str(temperature)[:40]}",
                           "temperature")
        specs = {}
        for field, kind, default in (("policy", "policies", self.defaults.policy),
                                     ("stop_criterion", "stops", self.defaults.stop),
                                     ("cache", "caches", self.defaults.cache),
                                     ("constraint", "constraints", self.defaults.constraint)):
            if body.get(field) is None:
                specs[field] = default  # the operator's own spec: trusted, checked at start
                continue
            specs[field] = spec = check_spec(kind, body[field], field, self.limits)
            if spec != "none" or kind == "policies":
                try:
                    create(kind, spec)
                except (ValueError, TypeError, KeyError, RecursionError) as error:
                    raise ApiError(400, f"{field}: {' '.join(str(error).split())[:500]}", field) from None
        inline = self._inline_constraint(body)
        if inline is not None:
            if body.get("constraint") is not None:
                raise ApiError(400, "give one of constraint, regex and response_format", "constraint")
            specs["constraint"] = inline
        return Settings(policy=specs["policy"], stop=specs["stop_criterion"], cache=specs["cache"],
                        constraint=specs["constraint"], gen_length=self.defaults.gen_length,
                        block_length=_integer(body, "block_length", self.defaults.block_length, 1,
                                              self.limits.max_tokens),
                        temperature=float(temperature), seed=_integer(body, "seed", self.defaults.seed, 0, SEED_MAX))

    def _inline_constraint(self, body: dict[str, Any]) -> str | None:
        """A ``regex`` field or an OpenAI ``response_format`` with an inline JSON Schema, compiled under the
        budget, as a regex constraint spec (None: neither was given)."""
        regex, form = body.get("regex"), body.get("response_format")
        if regex is not None and form is not None:
            raise ApiError(400, "give one of constraint, regex and response_format", "regex")
        if regex is not None:
            if not isinstance(regex, str) or not regex:
                raise ApiError(400, "regex must be a non-empty regular expression", "regex")
            return compile_pattern({"pattern": regex}, "regex", self.limits)
        if form is None:
            return None
        kind = form.get("type") if isinstance(form, dict) else None
        if kind == "text":
            return None
        if kind == "grammar":
            return self._grammar(form.get("grammar"))
        if kind != "json_schema":
            raise ApiError(400, "response_format must be {\"type\": \"json_schema\", \"json_schema\": {\"name\": ..., "
                           "\"schema\": {...}}}, {\"type\": \"grammar\", \"grammar\": \"<Lark EBNF>\"} or "
                           "{\"type\": \"text\"} (json_object is not supported: give its schema)", "response_format")
        inner = form.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format.json_schema.schema must be a JSON Schema object", "response_format")
        try:
            return compile_pattern({"schema": json.dumps(schema)}, "response_format", self.limits)
        except ApiError as error:
            if not refuses_recursion(error.message):  # such a schema takes the grammar route
                raise
        try:
            grammar = schema_grammar(schema)
        except (ValueError, RecursionError) as error:
            raise ApiError(400, f"response_format: {' '.join(str(error).split())[:500]}", "response_format") from None
        return self._grammar(grammar, "response_format.json_schema.schema")

    def _grammar(self, text: Any, field: str = "response_format.grammar") -> str:
        """An inline grammar compiled now for the model's vocabulary, its automaton held to the server's state
        budget (the build stops there), as a ``grammar`` spec; the compiled automaton stays cached."""
        from unmask.constraints.grammar import GrammarConstraint
        from unmask.core.constraints import vocabulary_of

        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, f"{field} must be a non-empty grammar in Lark's EBNF", "response_format")
        if len(text) > self.limits.max_pattern_chars:
            raise ApiError(400, f"{field} is {len(text)} characters; the server takes at most "
                           f"{self.limits.max_pattern_chars}", "response_format")
        params = {"grammar": text, "max_states": self.limits.max_constraint_states}
        try:
            constraint = GrammarConstraint(**params)
            constraint.prepare(vocabulary_of(self.tokenizer, self.model.vocab_size, self.model.eos_token_id,
                                             self.model.mask_token_id), 0)
        except (ValueError, RecursionError) as error:
            raise ApiError(400, f"response_format: {' '.join(str(error).split())[:500]}", "response_format") from None
        return format_spec("grammar", params)

    def text(self, tokens: list[int], max_tokens: int, stops: tuple[str, ...], final: bool) -> tuple[str, str | None]:
        """The answer's text so far (tokens left of the first open position; all of them when ``final``) and
        its finish reason once it has one."""
        mask, eos = self.model.mask_token_id, self.model.eos_token_id
        tokens = tokens[:max_tokens]
        settled = tokens if final else tokens[:tokens.index(mask)] if mask in tokens else tokens
        reason = None
        if eos in settled:
            settled, reason = settled[:settled.index(eos)], "stop"
        elif final or len(settled) == len(tokens):
            reason = "length"
        text = self.tokenizer.decode(settled, skip_special_tokens=True)
        for stop in stops:
            if stop in text:
                text, reason = text[:text.index(stop)], "stop"
        return text, reason

    def usage(self, request: Request, result: dict[str, Any]) -> dict[str, int]:
        completion = min(result["answer_length"], request.max_tokens)
        return {"prompt_tokens": len(request.prompt_ids), "completion_tokens": completion,
                "total_tokens": len(request.prompt_ids) + completion, "forwards": result["nfe"]}


def _integer(body: dict[str, Any], field: str, default: int, minimum: int, maximum: int) -> int:
    value = body.get(field, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ApiError(400, f"{field} must be an integer in [{minimum}, {maximum}], got {str(value)[:40]}", field)
    return value


def _check_fields(body: dict[str, Any], chat: bool) -> None:
    """Every field is one the server honours, or an unimplemented one at its neutral value."""
    for field, value in body.items():
        if field in HONOURED:
            continue
        if field not in NEUTRAL:
            raise ApiError(400, f"unknown field {str(field)[:60]!r}; this server takes "
                           f"{', '.join(sorted(HONOURED - {'prompt' if chat else 'messages'}))}", str(field)[:60])
        if NEUTRAL[field] and not any(value == neutral and isinstance(value, bool) == isinstance(neutral, bool)
                                      for neutral in NEUTRAL[field]):
            raise ApiError(400, f"{field} is not supported by this server (only {NEUTRAL[field][1]!r} or null)", field)


def _flag(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{field} must be true or false", field)
    return value


def build_app(model: Any, tokenizer: Any, config: ServeConfig = ServeConfig()) -> Any:
    from contextlib import asynccontextmanager

    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware
    from starlette.requests import Request as HttpRequest
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    service = Service(model, tokenizer, config)
    metrics = Metrics(service.batcher)
    limits, name = config.limits, config.name

    def refuse(error: ApiError) -> JSONResponse:
        metrics.rejected(error.status)
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def models(_: HttpRequest) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                          "owned_by": "unmask"}]})

    async def components(_: HttpRequest) -> JSONResponse:
        found = registry()
        return JSONResponse({kind: [e.name for e in found.entries(kind)]
                             for kind in ("policies", "stops", "caches", "constraints")})

    async def page(_: HttpRequest) -> HTMLResponse:
        return HTMLResponse(resources.files("unmask.contrib.serve").joinpath("index.html").read_text("utf-8"))

    async def health(_: HttpRequest) -> JSONResponse:
        return JSONResponse({"status": "ok", "queue": service.batcher.queue_depth,
                             "rows_in_flight": service.batcher.rows_in_flight})

    async def metrics_page(_: HttpRequest) -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def read_request(http: HttpRequest, chat: bool) -> Request:
        """The request's body within its budget, parsed and checked (off the event loop: tokenizing and
        compiling a constraint take time)."""
        if http.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise ApiError(415, "the request body must be sent as Content-Type: application/json")
        declared = http.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            raise ApiError(413, f"the request body is {declared} bytes; the server takes at most "
                           f"{limits.max_body_bytes} (--max-body-bytes)")
        data = bytearray()
        async for chunk in http.stream():
            data += chunk
            if len(data) > limits.max_body_bytes:
                raise ApiError(413, f"the request body exceeds the server's {limits.max_body_bytes} bytes "
                               "(--max-body-bytes)")
        try:
            body = json.loads(data)
        except RecursionError:
            raise ApiError(400, f"the request body nests deeper than {limits.max_json_depth} levels") from None
        except ValueError as error:  # malformed JSON, bad UTF-8, an integer of thousands of digits
            raise ApiError(400, f"the request body is not valid JSON: {' '.join(str(error).split())[:200]}") from None
        return await asyncio.to_thread(service.parse, body, chat)

    def submit(job: Job) -> Any:
        try:
            return service.batcher.submit(job)
        except QueueFull as error:
            raise ApiError(429, str(error), code="queue_full", headers={"Retry-After": "1"}) from None
        except RuntimeError as error:  # shutting down
            raise ApiError(503, str(error), code="shutting_down") from None

    def endpoint(chat: bool) -> Any:
        async def handle(http: HttpRequest) -> Any:
            try:
                request = await read_request(http, chat)
                identity = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
                if request.stream:  # submitted before the answer starts, so a full queue is still a 429
                    loop, updates = asyncio.get_running_loop(), asyncio.Queue()
                    job = Job(prompt_ids=request.prompt_ids, settings=request.settings,
                              on_step=lambda update: loop.call_soon_threadsafe(updates.put_nowait, update),
                              timeout_s=limits.request_timeout_s)
                    future = asyncio.wrap_future(submit(job))
                    return EventSourceResponse(_stream(service, metrics, request, job, future, updates, identity, chat),
                                               ping=15, shutdown_event=anyio.Event(),
                                               shutdown_grace_period=STREAM_GRACE_S)
                job = Job(prompt_ids=request.prompt_ids, settings=request.settings, timeout_s=limits.request_timeout_s)
                try:
                    result = await _wait(submit(job), job, http)
                except ValueError as error:  # bad input found while decoding (a constraint with no answer)
                    raise ApiError(400, str(error)) from None
                except DeadlineExceeded as error:
                    raise ApiError(504, f"{error} (--request-timeout-s)", code="timeout") from None
            except ApiError as error:
                return refuse(error)
            if result is None:
                return JSONResponse({}, status_code=499)
            text, reason = service.text(result["tokens"], request.max_tokens, request.stops, final=True)
            usage = service.usage(request, result)
            metrics.completed(usage)
            return JSONResponse({**_envelope(identity, name, chat, final=True),
                                 "choices": [_choice(chat, text, reason, final=True)], "usage": usage})
        return handle

    async def internal_error(_: HttpRequest, error: Exception) -> JSONResponse:
        log.exception("unmask serve: a request failed", exc_info=error)
        metrics.rejected(500)
        return JSONResponse(ApiError(500, "the server failed on this request; its log has the details").body(),
                            status_code=500)

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        await asyncio.to_thread(service.batcher.close)  # in-flight requests finish first

    middleware = [Middleware(Guard, config=config, metrics=metrics)]
    if config.cors_origins:  # outside the guard: a browser's preflight carries no key
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                        allow_methods=["GET", "POST"],
                                        allow_headers=["Authorization", "Content-Type"]))
    app = Starlette(routes=[Route("/", page), Route("/health", health), Route("/metrics", metrics_page),
                            Route("/v1/models", models), Route("/v1/components", components),
                            Route("/v1/completions", endpoint(False), methods=["POST"]),
                            Route("/v1/chat/completions", endpoint(True), methods=["POST"])],
                    middleware=middleware, exception_handlers={Exception: internal_error}, lifespan=lifespan)
    app.state.service = service
    return app


class Guard:
    """ASGI middleware in front of every route: the Host header must be one the server serves (a page on
    another site cannot reach it through DNS rebinding), and with an API key every route but the page and
    ``/health`` needs ``Authorization: Bearer KEY`` (compared in constant time)."""

    OPEN = ("/", "/health")

    def __init__(self, app: Any, config: ServeConfig, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self.hosts = {host.lower().strip("[]") for host in config.allowed_hosts}
        self.key = None if config.api_key is None else f"Bearer {config.api_key}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1").lower()
        host = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rsplit(":", 1)[0]
        error = None
        if "*" not in self.hosts and host not in self.hosts:
            error = ApiError(400, "this server does not serve that Host header (--allowed-host)", code="bad_host")
        elif self.key is not None and scope["path"] not in self.OPEN and not (
                hmac.compare_digest(headers.get(b"authorization", b""), self.key)):
            error = ApiError(401, "a missing or wrong API key: send Authorization: Bearer KEY", code="invalid_api_key")
        if error is None:
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse

        self.metrics.rejected(error.status)
        await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)


async def _wait(future: Any, job: Job, http: Any) -> dict[str, Any] | None:
    """The job's result, or None if the client went away first (its row is then freed)."""
    waiting = asyncio.wrap_future(future)
    try:
        while True:
            done, _ = await asyncio.wait({waiting}, timeout=0.25)
            if done:
                return waiting.result()
            if await http.is_disconnected():
                job.cancelled.set()
                return None
            if job.expired and not job.future.running():  # still queued: no decode will come in time
                job.cancelled.set()
                raise DeadlineExceeded("the request waited past its deadline")
    except asyncio.CancelledError:  # the server's graceful shutdown ran out of time: free the row too
        job.cancelled.set()
        raise


def _envelope(identity: str, model: str, chat: bool, final: bool) -> dict[str, Any]:
    kind = ("chat.completion" if final else "chat.completion.chunk") if chat else "text_completion"
    return {"id": identity, "object": kind, "created": int(time.time()), "model": model}


def _choice(chat: bool, text: str, reason: str | None, final: bool) -> dict[str, Any]:
    if not chat:
        return {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
    if final:
        return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
    return {"index": 0, "delta": {"content": text}, "finish_reason": reason}


async def _stream(service: Service, metrics: Metrics, request: Request, job: Job, future: Any,
                  updates: asyncio.Queue[StepUpdate], identity: str, chat: bool) -> Any:
    sent = ""

    def chunk(text: str, reason: str | None) -> dict[str, Any]:
        return {**_envelope(identity, service.name, chat, final=False),
                "choices": [_choice(chat, text, reason, final=False)]}

    try:
        if chat:
            yield {"data": json.dumps({**_envelope(identity, service.name, chat, final=False), "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})}
        while not (future.done() and updates.empty()):
            getter = asyncio.ensure_future(updates.get())
            await asyncio.wait({getter, future}, timeout=0.25, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                if job.expired and not job.future.running():  # still queued: no decode will come in time
                    failure = ApiError(504, "the request waited past its deadline (--request-timeout-s)")
                    metrics.rejected(failure.status)
                    yield {"event": "error", "data": json.dumps(failure.body())}
                    return
                continue
            update = getter.result()
            if request.steps:
                yield {"event": "unmask.step", "data": json.dumps(_step_event(service, update, request))}
            text, _ = service.text(update.tokens, request.max_tokens, request.stops, final=False)
            if text.startswith(sent) and len(text) > len(sent) and not text.endswith("\ufffd"):
                yield {"data": json.dumps(chunk(text[len(sent):], None))}
                sent = text
        try:
            result = future.result()
        except (ValueError, DeadlineExceeded) as error:
            failure = ApiError(504, f"{error} (--request-timeout-s)") if isinstance(error, DeadlineExceeded) \
                else ApiError(400, str(error))
            metrics.rejected(failure.status)
            yield {"event": "error", "data": json.dumps(failure.body())}
            return
        text, reason = service.text(result["tokens"], request.max_tokens, request.stops, final=True)
        tail = text[len(sent):] if text.startswith(sent) else ""
        usage = service.usage(request, result)
        metrics.completed(usage)
        yield {"data": json.dumps({**chunk(tail, reason), "usage": usage})}
        yield {"data": "[DONE]"}
    finally:
        job.cancelled.set()  # a client that went away frees its row (a finished job ignores it)


def _step_event(service: Service, update: StepUpdate, request: Request) -> dict[str, Any]:
    mask = service.model.mask_token_id
    tokens = update.tokens[:request.max_tokens]
    return {"step": update.step, "forwards": update.nfe, "positions": [
        {"token": token, "text": "" if token == mask else service.tokenizer.decode([token]),
         "step": step} for token, step in zip(tokens, update.commit_step)]}
