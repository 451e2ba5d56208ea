"""The ``unmask`` command line: ``list`` the registered components, ``generate`` text with a model."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from unmask.core.plugins import KINDS, registry

COMPONENT_HELP = "a registered name with optional parameters, e.g. 'threshold:tau=0.9'; 'a + b' combines"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, OSError) as error:
        print(f"unmask {args.command}: error: {error}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unmask", description="Decode diffusion language models with pluggable unmask policies."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="list registered components by kind, with their providers")
    listing.add_argument("--json", action="store_true", help="print JSON: kind -> name -> provider, version, summary")
    listing.set_defaults(run=run_list)

    generate = commands.add_parser("generate", help="decode an answer to a prompt")
    generate.add_argument("prompt", help="the prompt text (the tokenizer's chat template is applied if it has one)")
    add_model_arguments(generate)
    add_decode_arguments(generate)
    generate.add_argument("--json", action="store_true", help="print the answer with NFE, timing and components")
    generate.set_defaults(run=run_generate)

    convert = commands.add_parser("convert-llada", help="rewrite a LLaDA checkpoint as a Llama one (no remote code)")
    convert.add_argument("source", help="directory of the original LLaDA checkpoint (safetensors)")
    convert.add_argument("target", help="new directory for the converted checkpoint")
    convert.set_defaults(run=run_convert_llada)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a local model directory (transformers layout)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own model code")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default="topk", help=f"unmask policy: {COMPONENT_HELP} (default: topk)")
    parser.add_argument("--stop", default=None, help=f"stop criterion, e.g. eotp: {COMPONENT_HELP}")
    parser.add_argument("--cache", default="none", help="KV-cache manager (default: none)")
    parser.add_argument("--gen-length", type=int, default=64, help="tokens to generate (default: 64)")
    parser.add_argument("--block-length", type=int, default=32, help="semi-autoregressive block (default: 32)")
    parser.add_argument("--steps", type=int, default=None, help="schedule steps (default: gen length)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling stream (default: 0)")


def run_list(args: argparse.Namespace) -> int:
    found = registry()
    listing: dict[str, Any] = {
        kind: {e.name: {"provider": e.provider, "version": e.version, "summary": e.summary} for e in found.entries(kind)}
        for kind in KINDS
    }
    if args.json:
        print(json.dumps(listing, indent=2))
        return 0
    for kind, entries in listing.items():
        print(f"{kind}:")
        for name, info in entries.items() or [("(none)", {"provider": "", "version": "", "summary": ""})]:
            provider = f"{info['provider']} {info['version']}".strip()
            print(f"  {name:<16} {provider:<18} {info['summary']}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from unmask.contrib.transformers import decode_text, load
    from unmask.core.types import DecodeConfig

    model, tokenizer = load(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    config = DecodeConfig(
        gen_length=args.gen_length, block_length=min(args.block_length, args.gen_length), steps=args.steps,
        temperature=args.temperature, seed=args.seed,
    )
    answer, result = decode_text(
        model, tokenizer, [args.prompt], config=config, policy=args.policy, stop=args.stop, cache=args.cache
    )
    if args.json:
        record = {"prompt": args.prompt, "answer": answer[0], "nfe": int(result.nfe[0]), "wall_s": result.wall_s,
                  "model": args.model, "config": result.to_dict()["config"], "components": result.components}
        print(json.dumps(record, indent=2))
    else:
        print(answer[0])
    return 0


def run_convert_llada(args: argparse.Namespace) -> int:
    from unmask.contrib.llada import convert_llada_checkpoint

    print(convert_llada_checkpoint(args.source, args.target))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
