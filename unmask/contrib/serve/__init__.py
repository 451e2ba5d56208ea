"""``unmask serve``: an OpenAI-compatible server (``pip install 'unmask[serve]'``)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["build_app", "serve"]


def build_app(*args: Any, **kwargs: Any) -> Any:
    from unmask.contrib.serve.app import build_app as build

    return build(*args, **kwargs)


def serve(model: Any, tokenizer: Any, args: argparse.Namespace) -> int:
    """Run the server until Ctrl-C or SIGTERM; in-flight requests finish first."""
    try:
        import uvicorn
    except ImportError as error:
        raise ImportError("unmask serve needs starlette, uvicorn and sse-starlette: pip install 'unmask[serve]'") from error
    from unmask.contrib.serve.app import SHUTDOWN_S
    from unmask.contrib.serve.batching import Settings
    from unmask.core.engine import own_cache

    defaults = Settings(policy=args.policy, stop=args.stop or "none", cache=args.cache or own_cache(model),
                        constraint=args.constraint or "none", gen_length=args.gen_length,
                        block_length=args.block_length, temperature=args.temperature, seed=args.decode_seed)
    app = build_app(model, tokenizer, name=args.model or "reference", defaults=defaults, max_batch=args.max_batch,
                    wait_s=args.batch_wait_ms / 1000, chat=args.chat)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=SHUTDOWN_S)
    return 0
