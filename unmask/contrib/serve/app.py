"""The OpenAI-compatible HTTP API of ``unmask serve`` (Starlette; streams through sse-starlette).

``POST /v1/completions`` and ``/v1/chat/completions`` take OpenAI's fields (``max_tokens``, ``temperature``,
``seed``, ``stop``, ``n`` = 1, ``stream``) and unmask's own as extra body fields (``policy``,
``stop_criterion``, ``cache``, ``block_length``, ``constraint``, ``unmask_steps``). A stream's text deltas
are the newly settled prefix of the answer (tokens left of the first open position), so any OpenAI client
reads it; with ``unmask_steps`` an ``unmask.step`` event per step carries the whole canvas. Errors are
OpenAI-style JSON naming the field.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from importlib import resources
from typing import Any

import anyio
import attrs

from unmask.contrib.serve.batching import Batcher, Job, Settings, StepUpdate
from unmask.core.plugins import create, registry

__all__ = ["ApiError", "build_app"]

MAX_STOPS = 4
# On Ctrl-C / SIGTERM a stream in flight gets this long to finish its decode before it is cut; the server
# itself waits a little longer (``SHUTDOWN_S``) so that the streams end first.
STREAM_GRACE_S = 55.0
SHUTDOWN_S = 60


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = "not_found_error" if self.status == 404 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


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

    def __init__(self, model: Any, tokenizer: Any, *, name: str, defaults: Settings, max_batch: int, wait_s: float,
                 chat: bool | None) -> None:
        self.model, self.tokenizer, self.name, self.defaults, self.chat = model, tokenizer, name, defaults, chat
        self.batcher = Batcher(model, tokenizer, max_batch=max_batch, wait_s=wait_s)

    def parse(self, body: Any, chat: bool) -> Request:
        from unmask.contrib.models.transformers import encode_prompts

        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object")
        if body.get("model") not in (None, self.name):
            raise ApiError(404, f"the model {body['model']!r} does not exist; this server has {self.name!r}",
                           "model", "model_not_found")
        if body.get("n", 1) != 1:
            raise ApiError(400, "n must be 1", "n")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) and isinstance(m.get("role"), str)
                    for m in messages):
                raise ApiError(400, "messages must be a non-empty list of {role, content} objects with string "
                               "content", "messages")
            prompt_ids = self._chat_ids(messages)
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str):
                raise ApiError(400, "prompt must be a string (or a list of one)", "prompt")
            prompt_ids = encode_prompts(self.tokenizer, [prompt], chat=False)[0]
        settings = self._settings(body)
        max_tokens = _integer(body, "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens",
                              self.defaults.gen_length, minimum=1)
        block = min(settings.block_length, max_tokens)
        gen_length = -(-max_tokens // block) * block  # rounded up to whole blocks, cut back after
        limit = getattr(self.model, "max_positions", None)
        if limit is not None and len(prompt_ids) + gen_length > limit:
            field = "max_tokens" if len(prompt_ids) < limit else ("messages" if chat else "prompt")
            raise ApiError(400, f"the prompt's {len(prompt_ids)} tokens and a canvas of {gen_length} exceed the "
                           f"model's {limit} positions", field)
        stops = body.get("stop") or ()
        stops = (stops,) if isinstance(stops, str) else stops
        if not isinstance(stops, (list, tuple)) or len(stops) > MAX_STOPS or not all(
                isinstance(s, str) and s for s in stops):
            raise ApiError(400, f"stop must be a string or a list of at most {MAX_STOPS} non-empty strings", "stop")
        return Request(prompt_ids=list(prompt_ids), settings=attrs.evolve(settings, gen_length=gen_length,
                                                                           block_length=block),
                       max_tokens=max_tokens, stops=tuple(stops), stream=_flag(body, "stream"),
                       steps=_flag(body, "unmask_steps"))

    def _chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            if len(messages) != 1 or messages[0]["role"] != "user":
                raise ApiError(400, "this model has no chat template: send one user message", "messages")
            from unmask.contrib.models.transformers import encode_prompts

            return encode_prompts(self.tokenizer, [messages[0]["content"]], chat=False)[0]
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))

    def _settings(self, body: dict[str, Any]) -> Settings:
        temperature = body.get("temperature", self.defaults.temperature)
        if temperature is None:
            temperature = self.defaults.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(
                temperature) or temperature < 0:
            raise ApiError(400, f"temperature must be a finite number >= 0, got {temperature!r}", "temperature")
        specs = {}
        for field, kind, default in (("policy", "policies", self.defaults.policy),
                                     ("stop_criterion", "stops", self.defaults.stop),
                                     ("cache", "caches", self.defaults.cache),
                                     ("constraint", "constraints", self.defaults.constraint)):
            spec = body.get(field) or default
            if not isinstance(spec, str):
                raise ApiError(400, f"{field} must be a spec string, e.g. 'threshold:tau=0.9'", field)
            if spec != "none" or kind in ("policies",):
                try:
                    create(kind, spec)
                except (ValueError, TypeError, KeyError) as error:
                    raise ApiError(400, f"{field}: {error}", field) from None
            specs[field] = spec
        return Settings(policy=specs["policy"], stop=specs["stop_criterion"], cache=specs["cache"],
                        constraint=specs["constraint"], gen_length=self.defaults.gen_length,
                        block_length=_integer(body, "block_length", self.defaults.block_length, minimum=1),
                        temperature=float(temperature), seed=_integer(body, "seed", self.defaults.seed, minimum=0))

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


def _integer(body: dict[str, Any], field: str, default: int, minimum: int) -> int:
    value = body.get(field, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ApiError(400, f"{field} must be an integer >= {minimum}, got {value!r}", field)
    return value


def _flag(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise ApiError(400, f"{field} must be true or false", field)
    return value


def build_app(model: Any, tokenizer: Any, *, name: str = "unmask", defaults: Settings = Settings(),
              max_batch: int = 8, wait_s: float = 0.01, chat: bool | None = None) -> Any:
    from contextlib import asynccontextmanager

    from sse_starlette.sse import EventSourceResponse
    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    service = Service(model, tokenizer, name=name, defaults=defaults, max_batch=max_batch, wait_s=wait_s, chat=chat)

    async def models(_: HttpRequest) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0,
                                                          "owned_by": "unmask"}]})

    async def components(_: HttpRequest) -> JSONResponse:
        found = registry()
        return JSONResponse({kind: [e.name for e in found.entries(kind)]
                             for kind in ("policies", "stops", "caches", "constraints")})

    async def page(_: HttpRequest) -> HTMLResponse:
        return HTMLResponse(resources.files("unmask.contrib.serve").joinpath("index.html").read_text("utf-8"))

    def endpoint(chat: bool) -> Any:
        async def handle(http: HttpRequest) -> Any:
            try:
                try:
                    body = json.loads(await http.body())
                except (json.JSONDecodeError, UnicodeDecodeError) as error:
                    raise ApiError(400, f"the request body is not valid JSON: {error}") from None
                request = service.parse(body, chat)
            except ApiError as error:
                return JSONResponse(error.body(), status_code=error.status)
            identity = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
            if request.stream:
                return EventSourceResponse(_stream(service, request, identity, chat, http), ping=15,
                                           shutdown_event=anyio.Event(), shutdown_grace_period=STREAM_GRACE_S)
            job = Job(prompt_ids=request.prompt_ids, settings=request.settings)
            try:
                result = await _wait(service.batcher.submit(job), job, http)
            except ValueError as error:  # bad input found while decoding (a constraint with no answer)
                return JSONResponse(ApiError(400, str(error)).body(), status_code=400)
            if result is None:
                return JSONResponse({}, status_code=499)
            text, reason = service.text(result["tokens"], request.max_tokens, request.stops, final=True)
            return JSONResponse({**_envelope(identity, name, chat, final=True),
                                 "choices": [_choice(chat, text, reason, final=True)],
                                 "usage": service.usage(request, result)})
        return handle

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        await asyncio.to_thread(service.batcher.close)  # in-flight requests finish first

    app = Starlette(routes=[Route("/", page), Route("/v1/models", models), Route("/v1/components", components),
                            Route("/v1/completions", endpoint(False), methods=["POST"]),
                            Route("/v1/chat/completions", endpoint(True), methods=["POST"])],
                    lifespan=lifespan)
    app.state.service = service
    return app


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


async def _stream(service: Service, request: Request, identity: str, chat: bool, http: Any) -> Any:
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue[StepUpdate] = asyncio.Queue()
    job = Job(prompt_ids=request.prompt_ids, settings=request.settings,
              on_step=lambda update: loop.call_soon_threadsafe(updates.put_nowait, update))
    future = asyncio.wrap_future(service.batcher.submit(job))
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
            await asyncio.wait({getter, future}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
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
        except ValueError as error:
            yield {"event": "error", "data": json.dumps(ApiError(400, str(error)).body())}
            return
        text, reason = service.text(result["tokens"], request.max_tokens, request.stops, final=True)
        tail = text[len(sent):] if text.startswith(sent) else ""
        yield {"data": json.dumps({**chunk(tail, reason), "usage": service.usage(request, result)})}
        yield {"data": "[DONE]"}
    finally:
        job.cancelled.set()  # a client that went away frees its row (a finished job ignores it)


def _step_event(service: Service, update: StepUpdate, request: Request) -> dict[str, Any]:
    mask = service.model.mask_token_id
    tokens = update.tokens[:request.max_tokens]
    return {"step": update.step, "forwards": update.nfe, "positions": [
        {"token": token, "text": "" if token == mask else service.tokenizer.decode([token]),
         "step": step} for token, step in zip(tokens, update.commit_step)]}
