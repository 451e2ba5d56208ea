"""What each ``unmask`` command does with its parsed arguments: load what it needs, call the library, print.
The parser itself is ``unmask.contrib.cli``; the work is in the library modules each command names."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from unmask.contrib import distributed
from unmask.core.plugins import KINDS, registry

LIST_WIDTH = 100


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
            line = f"  {name:<16} {provider:<18} {info['summary']}"
            # One line of at most LIST_WIDTH columns; --json has the whole summary.
            print(line if len(line) <= LIST_WIDTH else line[:LIST_WIDTH - 3].rstrip() + "...")
    return 0


def _quiet(args: argparse.Namespace) -> None:
    """transformers' weight-loading bar only with --verbose: stderr is for progress and errors that matter."""
    from transformers.utils import logging

    if not getattr(args, "verbose", False):
        logging.disable_progress_bar()


def _load_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    from unmask.contrib.models.transformers import load

    _quiet(args)
    model = "reference" if args.model is None else args.model
    device = distributed.start(args.device)  # a data-parallel run (torchrun, accelerate) joins its process group
    loaded = load(model, trust_remote_code=args.trust_remote_code, device=device, dtype=args.dtype,
                  shift_logits=args.shift_logits, download=args.download)
    return (*loaded, "bundled reference model" if args.model is None else args.model)


def _decode_config(args: argparse.Namespace) -> Any:
    from unmask.core.types import DecodeConfig

    return DecodeConfig(
        gen_length=args.gen_length, block_length=min(args.block_length, args.gen_length), steps=args.steps,
        temperature=args.temperature, seed=args.decode_seed,
    )


def run_generate(args: argparse.Namespace) -> int:
    from unmask.contrib.models.transformers import decode_text, weights_hash
    from unmask.core.needs import provide
    from unmask.core.plugins import create

    model, tokenizer, model_name = _load_model(args)
    policy = provide(create("policies", args.policy), {"model_sha256": lambda: weights_hash(model)},
                     where="unmask generate (use unmask bench for a policy that needs the vanilla output)")
    answer, result = decode_text(
        model, tokenizer, [args.prompt], config=_decode_config(args), policy=policy, stop=args.stop,
        cache=args.cache, constraint=args.constraint,
    )
    if args.json:
        record = {"prompt": args.prompt, "answer": answer[0], "nfe": int(result.nfe[0]), "wall_s": result.wall_s,
                  "model": model_name, "config": result.to_dict()["config"], "components": result.components}
        print(json.dumps(record, indent=2))
    else:
        print(answer[0])
    return 0


def run_bench(args: argparse.Namespace) -> int:
    from unmask.contrib.eval.bench import bench, bench_grid, format_table
    from unmask.contrib.tasks import DEFAULT_TASKS

    if args.cell and (args.policy or args.stop or args.cache):
        raise ValueError("--cell names whole combinations: give either --cell or --policy/--stop/--cache")
    settings = dict(tasks=args.tasks or list(DEFAULT_TASKS), n=args.n, seed=args.seed, policies=args.policy or ["topk"],
                    stops=args.stop or ["none"], caches=args.cache or ["none"], config=_decode_config(args),
                    batch_size=args.batch_size, chat=args.chat, combinations=args.cell,
                    constraint=args.constraint or "none")
    bench_grid(**settings)  # every component and setting is checked before the model loads
    model, tokenizer, model_name = _load_model(args)
    rows = bench(model, tokenizer, **settings, model_name=model_name)
    if not distributed.ranks().main:
        return 0
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


def run_train_model(args: argparse.Namespace) -> int:
    import attrs

    from unmask.contrib.train.model import TrainingConfig, read_recipe, train_reference_model

    config = read_recipe(args.recipe) if args.recipe else TrainingConfig()
    given = {"steps": args.steps, "seed": args.seed, "threads": args.threads, "init_from": args.init_from}
    config = attrs.evolve(config, **{name: value for name, value in given.items() if value is not None})
    print(train_reference_model(args.out, config, overwrite=args.overwrite, resume=args.resume))
    return 0


def run_distill(args: argparse.Namespace) -> int:
    import attrs

    from unmask.contrib.train.distillation import DistillConfig, distill
    from unmask.contrib.train.model import read_recipe

    config = read_recipe(args.recipe, DistillConfig) if args.recipe else DistillConfig()
    given = {"base": args.base, "prompts": args.prompts, "items": args.items, "policy": args.policy,
             "steps": args.steps, "seed": args.seed, "threads": args.threads, "only_correct": args.only_correct}
    config = attrs.evolve(config, **{name: value for name, value in given.items() if value is not None})
    print(distill(args.out, config, overwrite=args.overwrite, resume=args.resume))
    return 0


def run_ablate(args: argparse.Namespace) -> int:
    from contextlib import nullcontext

    from unmask.contrib.eval.ablate import ablate, exclusive_writer, load_grid
    from unmask.contrib.eval.report import write_report
    from unmask.contrib.models.transformers import load

    grid = load_grid(args.grid)  # every cell is checked before the model loads
    _quiet(args)
    out = Path(args.out) if args.out else Path(args.grid).with_suffix(".jsonl")
    device = distributed.start(grid.device)
    # The results file is locked before the model loads: a second writer is refused at once.
    with exclusive_writer(out) if distributed.ranks().main else nullcontext():
        model, tokenizer = load(grid.model, dtype=grid.dtype, device=device)
        rows = ablate(grid, out, loaded=(model, tokenizer))
    if not distributed.ranks().main:
        return 0
    command = " ".join(["unmask ablate", args.grid] + [f"--{k} {v}" for k, v in
                                                        (("out", args.out), ("report", args.report),
                                                         ("plots", args.plots)) if v])
    print(write_report(rows, title=f"Ablation: {grid.name}", command=command, report=args.report, plots=args.plots,
                       tokenizer=tokenizer, pb_levels=args.pb))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from unmask.contrib.eval.ablate import read_rows
    from unmask.contrib.eval.report import write_report

    if not Path(args.rows).is_file():
        raise ValueError(f"rows: {args.rows} is not a file (the JSONL that unmask ablate writes)")
    rows = read_rows(args.rows)
    if not rows:
        raise ValueError(f"rows: {args.rows} holds no rows")
    command = " ".join(["unmask report", args.rows] + [f"--{k} {v}" for k, v in (("report", args.report),) if v])
    print(write_report(rows, title=args.title or f"Results: {Path(args.rows).name}", command=command,
                       report=args.report, pb_levels=args.pb), end="")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from unmask.contrib.serve import config_from_args, serve

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0-65535, got {args.port}")
    model, tokenizer, _ = _load_model(args)
    return serve(model, tokenizer, config_from_args(args, model), host=args.host, port=args.port)


def run_collect(args: argparse.Namespace) -> int:
    from unmask.contrib.tasks import DEFAULT_TASKS
    from unmask.contrib.train.traces import FILTER_SEED, collect, read_prompts

    prompts = None if args.prompts is None else read_prompts(args.prompts)  # before the model loads
    tasks = args.tasks or list(DEFAULT_TASKS)
    model, tokenizer, _ = _load_model(args)
    manifest = collect(
        model, tokenizer, args.out, tasks=tasks, n=args.n, seed=FILTER_SEED if args.seed is None else args.seed,
        gen_length=args.gen_length, block_length=args.block_length, batch_size=args.batch_size, prompts=prompts,
        chat=args.chat, policy=args.policy, labels=args.labels, constraint=args.constraint,
    )
    if not distributed.ranks().main:
        return 0
    shards = manifest["shards"].values()
    records, prompts = sum(s["records"] for s in shards), sum(s["prompts"] for s in shards)
    nfe, equal = sum(s["nfe"] for s in shards), sum(s["reference_equal"] for s in shards)
    correct = ""
    if args.labels == "correct":
        correct = f", correct for {sum(s['correct'] for s in shards)}/{prompts}"
    print(f"{records} records from {prompts} prompts in {args.out}; {args.policy} NFE per prompt {nfe / prompts:.1f} "
          f"(vanilla {args.gen_length}), output equal to vanilla's for {equal}/{prompts}{correct}")
    return 0


def run_train_filter(args: argparse.Namespace) -> int:
    from unmask.core.spec import parse_spec
    from unmask.contrib.train.filters import train_filter

    params = {}
    for item in args.param:
        if "=" not in item:
            raise ValueError(f"--param takes NAME=VALUE, got {item!r}")
        params.update(parse_spec(f"x:{item}")[1])
    trained = train_filter(args.traces, args.kind, args.out, feature_set=args.features, tau=args.tau, params=params,
                           overwrite=args.overwrite)
    print(json.dumps({"filter": args.out, "kind": args.kind, "features": trained.features,
                      "fit_s": trained.info["fit_s"], **trained.info["metrics"]}, indent=2))
    return 0


def run_export_tasks(args: argparse.Namespace) -> int:
    from unmask.contrib.eval.harness_tasks import export_tasks
    from unmask.contrib.tasks import SUITE

    print(export_tasks(args.out, tasks=args.tasks or list(SUITE), n=args.n, seed=args.seed, overwrite=args.overwrite))
    return 0


def run_lm_eval(args: argparse.Namespace) -> int:
    try:
        from unmask.contrib.eval.harness import run_harness
    except ImportError as error:
        raise ImportError(f"unmask lm-eval needs lm-eval ({error}): pip install 'unmask[eval]'") from error
    return run_harness(args.arguments)


def run_convert_llada(args: argparse.Namespace) -> int:
    from unmask.contrib.models.llada import convert_llada_checkpoint

    print(convert_llada_checkpoint(args.source, args.target))
    return 0
