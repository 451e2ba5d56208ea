"""The ``unmask`` command line: the parser of every command, and ``main``, which dispatches to
``unmask.contrib.commands`` (what each command does) with one-line errors and exit status 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from unmask.contrib import commands as actions
from unmask.contrib import distributed
from unmask.contrib.arguments import (
    one_line, Parser, prompt_text, add_chat_argument, add_decode_arguments, add_model_arguments,
    cell_triple, positive_int, probability, score_levels, seed_value, task_list,
)
from unmask.contrib.serve import add_arguments as serve_arguments
from unmask.contrib.train.traces import LABELS


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"] and argv[1:2] not in (["-h"], ["--help"]):
        # lm-eval's arguments pass unchanged (argparse would read its options as ours).
        args = argparse.Namespace(command="lm-eval", run=actions.run_lm_eval, arguments=argv[1:])
    else:
        args = parser.parse_args(argv)
    from safetensors import SafetensorError

    try:
        status = args.run(args)
    except (ValueError, TypeError, ImportError, OSError, RuntimeError) as error:
        print(f"unmask {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except (SafetensorError, KeyError) as error:  # a damaged file that a reader above did not name
        print(f"unmask {args.command}: error: {type(error).__name__}: {one_line(error)}", file=sys.stderr)
        return 2
    distributed.finish()  # a data-parallel run's processes leave together
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="unmask", description="Decode diffusion language models with pluggable unmask policies."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    listing = commands.add_parser("list", help="list registered components by kind, with their providers")
    listing.add_argument("--json", action="store_true", help="print JSON: kind -> name -> provider, version, summary")
    listing.set_defaults(run=actions.run_list)

    generate = commands.add_parser("generate", help="decode an answer to a prompt")
    generate.add_argument("prompt", type=prompt_text, help="the prompt text (the tokenizer's chat template is applied "
                          "if it has one)")
    add_model_arguments(generate)
    add_decode_arguments(generate)
    generate.add_argument("--json", action="store_true", help="print the answer with NFE, timing and components")
    generate.set_defaults(run=actions.run_generate)

    serve = commands.add_parser("serve", help="an OpenAI-compatible server with dynamic batching, streaming and a "
                                "live page (pip install 'unmask[serve]')")
    add_model_arguments(serve)
    add_decode_arguments(serve, seed_flag="--decode-seed")
    add_chat_argument(serve)
    serve_arguments(serve)
    serve.set_defaults(run=actions.run_serve)

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
    bench.set_defaults(run=actions.run_bench)

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
    train.set_defaults(run=actions.run_train_model)

    distill = commands.add_parser("distill", help="dParallel's certainty-forcing distillation: fine-tune a model on "
                                  "its own answers so a threshold commits more per step (CPU, under 45 minutes)")
    distill.add_argument("--out", required=True, help="new directory for the distilled model")
    distill.add_argument("--overwrite", action="store_true", help="write into a non-empty directory that distill "
                         "did not write (entries of the same name are replaced)")
    distill.add_argument("--recipe", default=None, metavar="JSON", help="DistillConfig fields as a JSON object, or a "
                         "distilled model's training.json; the options below override it")
    distill.add_argument("--base", default=None, help="the model to distill: a registered name or a model "
                         "directory (default: reference)")
    distill.add_argument("--prompts", default=None, metavar="JSONL", help="prompts ({\"prompt\": ...} per line) "
                         "instead of the tasks' training items")
    distill.add_argument("--items", type=positive_int, default=None, help="trajectory prompts (default: 1024)")
    distill.add_argument("--policy", default=None, help="the policy that writes the trajectories (default: topk)")
    distill.add_argument("--only-correct", action="store_true", default=None, help="keep only the trajectories whose "
                         "answers the task scores correct")
    distill.add_argument("--steps", type=positive_int, default=None, help="optimizer steps (default: 1000)")
    distill.add_argument("--seed", type=seed_value, default=None, help="seed of masks and batches (default: 0)")
    distill.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: 2)")
    distill.add_argument("--resume", action="store_true", help="continue from OUT.checkpoint and the trajectories "
                         "already written (OUT.trajectories.jsonl)")
    distill.set_defaults(run=actions.run_distill)

    ablate = commands.add_parser("ablate", help="run an ablation grid (TOML), resumable; write a report and plots")
    ablate.add_argument("grid", help="grid TOML file (see unmask.contrib.eval.ablate for its fields)")
    ablate.add_argument("--out", default=None, help="results JSONL (default: GRID with .jsonl); finished cells "
                        "in it are skipped")
    ablate.add_argument("--report", default=None, help="write a Markdown report here")
    ablate.add_argument("--plots", default=None, help="write plots to this directory (needs unmask[plots])")
    ablate.add_argument("--pb", type=score_levels, default=(90, 80, 70, 60), metavar="X,Y,...",
                        help="ParallelBench PBx levels in the report (default: 90,80,70,60)")
    ablate.add_argument("--verbose", action="store_true", help="show transformers' weight-loading progress")
    ablate.set_defaults(run=actions.run_ablate)

    report = commands.add_parser("report", help="the Markdown report of stored ablation rows (AUP, PBx, wins "
                                 "and losses), without decoding")
    report.add_argument("rows", help="results JSONL written by unmask ablate")
    report.add_argument("--title", default=None, help="the report's title (default: the file's name)")
    report.add_argument("--pb", type=score_levels, default=(90, 80, 70, 60), metavar="X,Y,...",
                        help="ParallelBench PBx levels: the most tokens per step at which the mean accuracy over "
                        "tasks stays at or above each (default: 90,80,70,60)")
    report.add_argument("--report", default=None, help="also write the report here")
    report.set_defaults(run=actions.run_report)

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
    collect.set_defaults(run=actions.run_collect)

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
    train_filter.set_defaults(run=actions.run_train_filter)

    convert = commands.add_parser("convert-llada", help="rewrite a LLaDA checkpoint as a Llama one (no remote code)")
    convert.add_argument("source", help="directory of the original LLaDA checkpoint (safetensors)")
    convert.add_argument("target", help="new directory for the converted checkpoint")
    convert.set_defaults(run=actions.run_convert_llada)

    export = commands.add_parser("export-tasks", help="write the tasks as lm-eval task configs (unmask_<task>)")
    export.add_argument("out", help="new directory for the configs and their data (give it to lm-eval as "
                        "--include_path)")
    export.add_argument("--tasks", type=task_list, default=None, help="comma-separated tasks (default: the suite)")
    export.add_argument("--n", "--num-samples", dest="n", type=positive_int, default=200,
                        help="samples per task (default: 200)")
    export.add_argument("--seed", type=seed_value, default=0, help="first sample seed, as in unmask bench (default: 0)")
    export.add_argument("--overwrite", action="store_true", help="write into a non-empty directory that "
                        "export-tasks did not write (entries of the same name are replaced)")
    export.set_defaults(run=actions.run_export_tasks)

    harness = commands.add_parser("lm-eval", help="run lm-eval's command line with the model 'unmask' registered "
                                  "(needs unmask[eval])", add_help=False)
    harness.add_argument("arguments", nargs=argparse.REMAINDER, help="lm-eval's arguments, unchanged")
    harness.set_defaults(run=actions.run_lm_eval)
    return parser


if __name__ == "__main__":
    raise SystemExit(main())
