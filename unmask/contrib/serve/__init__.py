"""``unmask serve``: an OpenAI-compatible server (``pip install 'unmask[serve]'``)."""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial
from typing import Any

import attrs

__all__ = ["build_app", "serve", "add_arguments", "config_from_args"]


def build_app(*args: Any, **kwargs: Any) -> Any:
    from unmask.contrib.serve.app import build_app as build

    return build(*args, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The server's own flags: where it listens, who may reach it, and every limit on a request."""
    from unmask.contrib.arguments import finite_float, positive_float, positive_int
    from unmask.contrib.serve.limits import Limits

    access = parser.add_argument_group("access (docs/serve.md: the threat model)")
    access.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                        "only; another address opens the server to the network: set --api-key)")
    access.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0: any free port)")
    access.add_argument("--api-key", default=os.environ.get("UNMASK_API_KEY"), help="require 'Authorization: "
                        "Bearer KEY' on every route but the page and /health (default: $UNMASK_API_KEY, else none)")
    access.add_argument("--allowed-host", action="append", default=[], metavar="HOST",
                        help="a Host header to serve besides the listening address and loopback names (repeat; "
                        "'*': any); other Host headers get 400, which stops DNS rebinding")
    access.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="a browser origin allowed to read answers, e.g. https://app.example (repeat; "
                        "default: none)")
    access.add_argument("--filter", action="append", default=[], metavar="NAME=DIR",
                        help="a trained Learn2PD filter that requests may pick as learn2pd:filter=NAME (repeat); "
                        "a request never names a folder")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-batch", type=positive_int, default=8, help="requests decoded together (default: 8)")
    batching.add_argument("--batch-wait-ms", type=finite_float, default=10.0,
                          help="how long the first request waits for others to batch with (default: 10)")
    batching.add_argument("--join-running", action="store_true", help="a request joins a running batch with its "
                          "settings at the batch's next block boundary (continuous batching; docs/serve.md: when "
                          "it pays)")
    limits = parser.add_argument_group("limits on one request")
    for field in attrs.fields(Limits):  # each limit is a flag: max_body_bytes is --max-body-bytes
        limits.add_argument("--" + field.name.replace("_", "-"), metavar="N", default=field.default,
                            type=positive_int if field.type == "int" else positive_float,
                            help=f"{field.metadata['help']} (default: {field.default})")


def config_from_args(args: argparse.Namespace, model: Any) -> Any:
    """The server's configuration from its command line, with the operator's components checked now."""
    from unmask.contrib.serve.app import LOOPBACK, ServeConfig
    from unmask.contrib.serve.batching import Settings
    from unmask.contrib.serve.limits import Limits
    from unmask.core.engine import own_cache
    from unmask.core.plugins import create

    _register_filters(args.filter)
    defaults = Settings(policy=args.policy, stop=args.stop or "none", cache=args.cache or own_cache(model),
                        constraint=args.constraint or "none", gen_length=args.gen_length,
                        block_length=args.block_length, temperature=args.temperature, seed=args.decode_seed)
    for kind, spec in (("policies", defaults.policy), ("stops", defaults.stop), ("caches", defaults.cache),
                       ("constraints", defaults.constraint)):
        if spec != "none" or kind == "policies":
            create(kind, spec)  # a bad default fails at start, not on the first request
    listening = () if args.host in ("0.0.0.0", "::") else (args.host,)  # any address: name it with --allowed-host
    hosts = tuple(dict.fromkeys(LOOPBACK + tuple(args.allowed_host) + listening))
    return ServeConfig(name=args.model or "reference", defaults=defaults, chat=args.chat, max_batch=args.max_batch,
                       wait_s=args.batch_wait_ms / 1000, join_running=args.join_running,
                       api_key=args.api_key or None, allowed_hosts=hosts,
                       cors_origins=tuple(args.cors_origin),
                       limits=Limits(**{f.name: getattr(args, f.name) for f in attrs.fields(Limits)}))


def _register_filters(named: list[str]) -> None:
    """``NAME=DIR`` filters, registered as trained filters so that requests can pick them by name."""
    from unmask.core.plugins import hookimpl, register_plugin
    from unmask.filters.store import load_filter

    filters = {}
    for item in named:
        name, _, path = item.partition("=")
        if not name or not path:
            raise ValueError(f"--filter must be NAME=DIR, got {item!r}")
        load_filter(os.path.abspath(path))  # a missing or damaged filter fails at start
        filters[name] = os.path.abspath(path)

    class OperatorFilters:
        @hookimpl
        def unmask_register_trained_filters(self, registry: Any) -> None:
            for name, path in filters.items():
                registry.add(name, partial(load_filter, path))

    if filters:
        register_plugin(OperatorFilters(), name="unmask-serve-filters")


def serve(model: Any, tokenizer: Any, config: Any, *, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Run the server until Ctrl-C or SIGTERM; in-flight requests finish first."""
    try:
        import uvicorn
    except ImportError as error:
        raise ImportError("unmask serve needs starlette, uvicorn, sse-starlette and prometheus-client: "
                          "pip install 'unmask[serve]'") from error
    from unmask.contrib.serve.app import LOOPBACK, SHUTDOWN_S

    reach = ("this machine only (loopback)" if host in LOOPBACK else
             f"the network: {'an API key is required' if config.api_key else 'NO API key: anyone who can reach it'}")
    print(f"unmask serve: http://{host}:{port} reachable from {reach}; Host headers served: "
          f"{', '.join(config.allowed_hosts)}", file=sys.stderr)
    app = build_app(model, tokenizer, config)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=SHUTDOWN_S)
    return 0
