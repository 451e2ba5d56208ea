"""The ``unmask`` command line: ``list`` the registered components, ``generate`` text with a model."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from unmask.contrib import distributed
from unmask.contrib.serve import add_arguments as serve_arguments
from unmask.contrib.train.traces import LABELS
from unmask.core.plugins import KINDS, registry

LIST_WIDTH = 100
COMPONENT_HELP = "a registered name with optional parameters, e.g. 'threshold:tau=0.9'; 'a + b' combines"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"] and argv[1:2] not in (["-h"], ["--help"]):
        # lm-eval's arguments pass unchanged (argparse would read its options as ours).
        args = argparse.Namespace(command="lm-eval", run=run_lm_eval, arguments=argv[1:])
    else:
        args = parser.parse_args(argv)
    from safetensors import SafetensorError

    try:
        status = args.run(args)
    except (ValueError, TypeError, ImportError, OSError, RuntimeError) as error:
        print(f"unmask {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except (SafetensorError, KeyError) as error:  # a damaged file that a reader above did not name
        print(f"unmask {args.command}: error: {type(error).__name__}: {_one_line(error)}", file=sys.stderr)
        return 2
    distributed.finish()  # a data-parallel run's processes leave together
    return status


class _Parser(argparse.ArgumentParser):
    """Bad arguments get one line naming the argument (and a pointer to --help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(error: object) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _converted(text: str, convert: Any, what: str) -> Any:
    """``convert(text)``, or argparse's error saying the value must be ``what``."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _converted(text, int, "a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def finite_float(text: str) -> float:
    value = _converted(text, float, "a number")
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def seed_value(text: str) -> int:
    from unmask.core.types import SEED_MAX

    value = _converted(text, int, "an integer")
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**64), got {text}")
    return value


def probability(text: str) -> float:
    value = _converted(text, float, "a number")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1], got {text!r}")
    return value


def task_list(text: str) -> list[str]:
    from unmask.contrib.tasks import TASKS

    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("must name at least one task (comma-separated)")
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown task(s) {', '.join(unknown)}; tasks: {', '.join(TASKS)}")
    return names


def torch_device(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available here (torch {torch.__version__}); "
                                         "use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: unmask runs on cpu, cuda or mps")
    return text


def _prompt(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("the prompt is empty")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unmask", description="Decode diffusion language models with pluggable unmask policies."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    listing = commands.add_parser("list", help="list registered components by kind, with their providers")
    listing.add_argument("--json", action="store_true", help="print JSON: kind -> name -> provider, version, summary")
    listing.set_defaults(run=run_list)

    generate = commands.add_parser("generate", help="decode an answer to a prompt")
    generate.add_argument("prompt", type=_prompt, help="the prompt text (the tokenizer's chat template is applied "
                          "if it has one)")
    add_model_arguments(generate)
    add_decode_arguments(generate)
    generate.add_argument("--json", action="store_true", help="print the answer with NFE, timing and components")
    generate.set_defaults(run=run_generate)

    serve = commands.add_parser("serve", help="an OpenAI-compatible server with dynamic batching, streaming and a "
                                "live page (pip install 'unmask[serve]')")
    add_model_arguments(serve)
    add_decode_arguments(serve, seed_flag="--decode-seed")
    add_chat_argument(serve)
    serve_arguments(serve)
    serve.set_defaults(run=run_serve)

    bench = commands.add_parser("bench", help="decode task samples with every combination of components and score")
    bench.add_argument("--tasks", type=task_list, default=None, help="comma-separated tasks (default: the bundled model's task mix)")
    bench.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=50,
                       help="samples per task (default: 50); under torchrun write --num-samples")
    bench.add_argument("--seed", type=seed_value, default=0, help="first reasoning-gym seed of the sample set (default: 0)")
    bench.add_argument("--policy", action="append", help="repeat for several (default: topk)")
    bench.add_argument("--stop", action="append", help="repeat for several; 'none' for no stop (default: none)")
    bench.add_argument("--cache", action="append", help="repeat for several (default: none)")
    bench.add_argument("--cell", action="append", type=cell_triple, metavar="'POLICY STOP CACHE'",
                       help="run exactly this combination (repeatable) instead of every policy x stop x cache; "
                            "the first is the baseline of the speedups")
    bench.add_argument("--batch-size", type=positive_int, default=32, help="rows decoded together (default: 32)")
    bench.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    bench.add_argument("--constraint", default=None, help="decode every cell under this constraint, e.g. "
                       "distinct_items (default: none)")
    add_chat_argument(bench)
    add_model_arguments(bench)
    add_decode_arguments(bench, components=False, seed_flag="--decode-seed")
    bench.set_defaults(run=run_bench)

    train = commands.add_parser("train-model", help="train the reference dLLM on the tasks (CPU, under an hour)")
    train.add_argument("--out", required=True, help="new directory for the model (or an earlier train-model output)")
    train.add_argument("--overwrite", action="store_true", help="write into a non-empty directory that "
                       "train-model did not write (entries of the same name are replaced)")
    train.add_argument("--recipe", default=None, metavar="JSON", help="TrainingConfig fields as a JSON object, or a "
                       "model's training.json (default: the bundled model's recipe); the options below override it")
    train.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: the recipe's)")
    train.add_argument("--seed", type=seed_value, default=None, help="seed of initialisation and batches "
                       "(default: the recipe's, 0)")
    train.add_argument("--resume", action="store_true", help="continue from OUT.checkpoint (written every few "
                       "minutes)")
    train.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: the "
                       "recipe's, 2)")
    train.add_argument("--init-from", default=None, metavar="DIR", help="continue from this train-model output "
                       "(or 'reference', the bundled model): its weights and token ids are kept, new words appended")
    train.set_defaults(run=run_train_model)

    ablate = commands.add_parser("ablate", help="run an ablation grid (TOML), resumable; write a report and plots")
    ablate.add_argument("grid", help="grid TOML file (see unmask.contrib.eval.ablate for its fields)")
    ablate.add_argument("--out", default=None, help="results JSONL (default: GRID with .jsonl); finished cells "
                        "in it are skipped")
    ablate.add_argument("--report", default=None, help="write a Markdown report here")
    ablate.add_argument("--plots", default=None, help="write plots to this directory (needs unmask[plots])")
    ablate.add_argument("--verbose", action="store_true", help="show transformers' weight-loading progress")
    ablate.set_defaults(run=run_ablate)

    collect = commands.add_parser("collect", help="record Learn2PD traces: oracle decodes labelled 'already final'")
    collect.add_argument("--tasks", type=task_list, default=None, help="comma-separated tasks (default: the bundled model's task mix)")
    collect.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=500,
                         help="prompts per task (default: 500); under torchrun write --num-samples")
    collect.add_argument("--seed", type=seed_value, default=None, help="first reasoning-gym seed; must not be an evaluation "
                         "seed (default: unmask.contrib.train.traces.FILTER_SEED)")
    collect.add_argument("--out", required=True, help="traces directory (rerunning resumes it)")
    collect.add_argument("--gen-length", type=positive_int, default=128, help="canvas length (default: 128)")
    collect.add_argument("--block-length", type=positive_int, default=32, help="block length (default: 32)")
    collect.add_argument("--batch-size", type=positive_int, default=32, help="prompts per shard (default: 32)")
    collect.add_argument("--policy", default="oracle", help="the policy whose decodes are recorded, e.g. "
                         "learn2pd:filter=DIR to add a filter's own states (default: oracle)")
    collect.add_argument("--labels", choices=LABELS, default="reference",
                         help="a prediction is final if it equals vanilla's token (reference, the default), or the "
                         "recorded decode's own final token where its answer scores correct (correct: another valid "
                         "answer than vanilla's is no mistake)")
    collect.add_argument("--prompts", type=Path, default=None, help="a JSONL file of {\"prompt\": ...} lines to "
                         "collect on instead of the tasks' prompts")
    collect.add_argument("--constraint", default="none", help="a constraint both the vanilla and the recorded "
                         "decodes run under, e.g. distinct_items (default: none)")
    add_chat_argument(collect)
    add_model_arguments(collect)
    collect.set_defaults(run=run_collect)

    train_filter = commands.add_parser("train-filter", help="fit a Learn2PD filter on traces; prints validation metrics")
    train_filter.add_argument("--traces", required=True, action="append", help="a directory written by unmask "
                              "collect (repeat to train on several, e.g. oracle and on-policy traces)")
    train_filter.add_argument("--kind", required=True, help="a registered filter kind: mlp or gbdt, or a plug-in's")
    train_filter.add_argument("--features", default=None, help="a registered feature set (default: block_confidence "
                              "for mlp, position_stats otherwise)")
    train_filter.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                              help="an estimator parameter, e.g. --param max_iter=500 (repeatable)")
    train_filter.add_argument("--tau", type=probability, default=0.96, help="threshold for the reported precision/recall")
    train_filter.add_argument("--out", required=True, help="new directory for the filter (or an earlier "
                              "train-filter output)")
    train_filter.add_argument("--overwrite", action="store_true", help="write into a non-empty directory that "
                              "train-filter did not write (entries of the same name are replaced)")
    train_filter.set_defaults(run=run_train_filter)

    convert = commands.add_parser("convert-llada", help="rewrite a LLaDA checkpoint as a Llama one (no remote code)")
    convert.add_argument("source", help="directory of the original LLaDA checkpoint (safetensors)")
    convert.add_argument("target", help="new directory for the converted checkpoint")
    convert.set_defaults(run=run_convert_llada)

    export = commands.add_parser("export-tasks", help="write the tasks as lm-eval task configs (unmask_<task>)")
    export.add_argument("out", help="new directory for the configs and their data (give it to lm-eval as "
                        "--include_path)")
    export.add_argument("--tasks", type=task_list, default=None, help="comma-separated tasks (default: the suite)")
    export.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=200,
                        help="samples per task (default: 200)")
    export.add_argument("--seed", type=seed_value, default=0, help="first sample seed, as in unmask bench (default: 0)")
    export.add_argument("--overwrite", action="store_true", help="write into a non-empty directory that "
                        "export-tasks did not write (entries of the same name are replaced)")
    export.set_defaults(run=run_export_tasks)

    harness = commands.add_parser("lm-eval", help="run lm-eval's command line with the model 'unmask' registered "
                                  "(needs unmask[eval])", add_help=False)
    harness.add_argument("arguments", nargs=argparse.REMAINDER, help="lm-eval's arguments, unchanged")
    harness.set_defaults(run=run_lm_eval)
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="a registered model name or a checkpoint directory "
                        "(transformers layout); default: the bundled reference model")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the checkpoint's own model code")
    parser.add_argument("--download", action="store_true", help="fetch a Hub id that is not in the local Hugging "
                        "Face cache (default: never touch the network)")
    parser.add_argument("--verbose", action="store_true", help="show transformers' weight-loading progress")
    parser.add_argument("--device", type=torch_device, default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="float32",
                        help="weights' dtype; auto keeps the checkpoint's (default: float32)")
    parser.add_argument("--shift-logits", action=argparse.BooleanOptionalAction, default=None,
                        help="the model predicts position i+1 at column i, like Dream (default: from its config)")


def add_chat_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                        help="wrap prompts in the tokenizer's chat template (default: if it has one)")


def add_decode_arguments(
    parser: argparse.ArgumentParser, *, components: bool = True, seed_flag: str = "--seed"
) -> None:
    if components:
        parser.add_argument("--policy", default="topk", help=f"unmask policy: {COMPONENT_HELP} (default: topk)")
        parser.add_argument("--stop", default=None, help=f"stop criterion, e.g. eotp: {COMPONENT_HELP}")
        parser.add_argument("--cache", default=None, help="KV-cache manager (default: the model's own: exact for "
                            "block-diffusion models, none for the others)")
        parser.add_argument("--constraint", default=None, help="structured output, e.g. \"regex:pattern='[a-z ]+'\" "
                            "(quote values holding , + : = or spaces); default: none")
    parser.add_argument("--gen-length", type=positive_int, default=64, help="tokens to generate (default: 64)")
    parser.add_argument("--block-length", type=positive_int, default=32, help="semi-autoregressive block (default: 32)")
    parser.add_argument("--steps", type=positive_int, default=None, help="schedule steps (default: gen length)")
    parser.add_argument("--temperature", type=finite_float, default=0.0, help="0 = greedy (default)")
    parser.add_argument(seed_flag, type=seed_value, default=0, dest="decode_seed",
                        help="seed of the sampling stream (default: 0)")


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


def cell_triple(text: str) -> tuple[str, str, str]:
    parts = text.split()
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"takes 'POLICY STOP CACHE' (three specs separated by spaces), got {text!r}")
    return (parts[0], parts[1], parts[2])


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


def run_ablate(args: argparse.Namespace) -> int:
    from unmask._files import write_text_atomically
    from contextlib import nullcontext

    from unmask.contrib.eval.ablate import ablate, exclusive_writer, load_grid
    from unmask.contrib.eval.report import markdown_report, plot_commit_order, plot_pareto
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
    report = markdown_report(rows, title=f"Ablation: {grid.name}", command=command)
    if args.plots:
        plots = Path(args.plots)
        figures = [plot_pareto(rows, plots / "pareto.png")]
        for task in grid.tasks:
            for gen_length in sorted({r["gen_length"] for r in rows}):
                group = [r for r in rows if r["task"] == task and r["gen_length"] == gen_length]
                group.sort(key=lambda r: -r["nfe_mean"])
                figures.append(plot_commit_order(group, plots / f"order-{task}-{gen_length}.png", tokenizer=tokenizer))
        base = Path(args.report).parent if args.report else Path(".")
        report += "\n" + "\n".join(f"![{f.stem}]({os.path.relpath(f, base)})" for f in figures) + "\n"
    if args.report:
        write_text_atomically(args.report, report)
    print(report)
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


if __name__ == "__main__":
    raise SystemExit(main())
