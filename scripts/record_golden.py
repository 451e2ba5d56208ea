"""The engine's golden outputs: what every built-in policy decodes under each stop, cache and constraint on both
bundled models, batched and one prompt at a time, so that a change to the engine can show it changed nothing.

    python scripts/record_golden.py --out tests/golden/engine.json     # record (about 15 minutes on 2 cores)
    python scripts/record_golden.py --check tests/golden/engine.json   # compare every configuration
    python scripts/record_golden.py --add tests/golden/engine.json     # record a new built-in's configurations

Each configuration is decoded through the public API only (``unmask.decode`` with specs), on 24 evaluation
prompts of varied length (three from each of eight tasks: for the block model, prompt lengths differ modulo
its block), gen_length 32 in blocks of 16. A configuration records a digest of the batch's tokens, forwards
and commit steps and one of the same decoded one prompt at a time (or the error it raised), with the total
of forwards to read at a glance. tests/test_golden.py replays the batches of every configuration and the
one-at-a-time decodes of a share of them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
from tqdm import tqdm

import unmask
from unmask.contrib.models.transformers import encode_prompts, load
from unmask.contrib.tasks import samples
from unmask.core.plugins import registry

TASKS = ("copy", "reverse", "sort", "shuffle", "insert_random", "latin_square", "chain_sum", "basic_arithmetic")
GEN_LENGTH, BLOCK_LENGTH = 32, 16
MODELS = {"reference": ("none", "prefix", "dual"), "reference-block": ("exact", "none")}
STOPS = ("none", "eotp")
SCHEMA = Path(__file__).resolve().parents[1] / "tests" / "golden" / "integer.schema.json"
CONSTRAINTS = {"none": None, "regex": "regex:pattern='[a-z]+( [a-z]+)*'", "json_schema": f"json_schema:schema={SCHEMA}",
               "distinct_items": "distinct_items"}
SPECIAL = {"union": "topk + threshold"}  # the rest by name, with their defaults; the oracle follows topk
# (decoded under the same cache and constraint)


def policies() -> list[str]:
    return sorted(entry.name for entry in registry().entries("policies") if entry.provider == "unmask")


def prompts(tokenizer: Any) -> list[list[int]]:
    texts = [sample.prompt for task in TASKS for sample in samples(task, 3, seed=11)]
    return [list(ids) for ids in encode_prompts(tokenizer, texts, chat=False)]


def configurations() -> Iterator[tuple[str, str, str, str, str]]:
    for model, caches in MODELS.items():
        for policy in policies():
            for stop in STOPS:
                for cache in caches:
                    for constraint in CONSTRAINTS:
                        yield model, policy, stop, cache, constraint


def key(model: str, policy: str, stop: str, cache: str, constraint: str) -> str:
    return f"{model} | {policy} | {stop} | {cache} | {constraint}"


def digest(result: Any) -> str:
    made = [result.tokens.tolist(), result.nfe.tolist(), result.commit_step.tolist()]
    return hashlib.sha256(json.dumps(made).encode()).hexdigest()[:16]


class Decoder:
    """Decodes a configuration on its model; the oracle's reference is topk's output of the same rows."""

    def __init__(self) -> None:
        self.loaded = {name: load(name) for name in MODELS}
        self.prompts = {name: prompts(tokenizer) for name, (_, tokenizer) in self.loaded.items()}
        self.references: dict[tuple[str, str], torch.Tensor] = {}

    def decode(self, model_name: str, policy: str, stop: str, cache: str, constraint: str,
               rows: list[int]) -> Any:
        model, tokenizer = self.loaded[model_name]
        spec: Any = SPECIAL.get(policy, policy)
        if policy == "oracle":
            reference = self._reference(model_name, cache, constraint)
            spec = unmask.create("policies", ("oracle", {"reference": reference[rows]}))
        return unmask.decode(model, [self.prompts[model_name][i] for i in rows], gen_length=GEN_LENGTH,
                             block_length=BLOCK_LENGTH, policy=spec, stop=stop, cache=cache,
                             constraint=CONSTRAINTS[constraint], tokenizer=tokenizer)

    def _reference(self, model_name: str, cache: str, constraint: str) -> torch.Tensor:
        """topk's output under the same cache and constraint (the oracle's targets then satisfy it)."""
        if (model_name, cache, constraint) not in self.references:
            model, tokenizer = self.loaded[model_name]
            result = unmask.decode(model, self.prompts[model_name], gen_length=GEN_LENGTH,
                                   block_length=BLOCK_LENGTH, policy="topk", cache=cache,
                                   constraint=CONSTRAINTS[constraint], tokenizer=tokenizer)
            self.references[model_name, cache, constraint] = result.tokens
        return self.references[model_name, cache, constraint]

    def outcome(self, configuration: tuple[str, ...], rows: list[int]) -> tuple[str, int]:
        """The digest (or the error) of these rows decoded together, and their forwards."""
        try:
            result = self.decode(*configuration, rows=rows)
        except (ValueError, RuntimeError, TypeError) as error:
            return f"error: {type(error).__name__}: {' '.join(str(error).split())}", 0
        return digest(result), int(result.nfe.sum())

    def alone(self, configuration: tuple[str, ...]) -> str:
        """One digest of every prompt decoded on its own."""
        outcomes = [self.outcome(configuration, [row])[0] for row in range(len(self.prompts[configuration[0]]))]
        return hashlib.sha256(json.dumps(outcomes).encode()).hexdigest()[:16]


def record(decoder: Decoder, skip: Any = ()) -> dict[str, Any]:
    golden = {}
    todo = [c for c in configurations() if key(*c) not in skip]
    for configuration in tqdm(todo, desc="golden", unit="config"):
        batched, forwards = decoder.outcome(configuration, list(range(24)))
        golden[key(*configuration)] = {"batched": batched, "alone": decoder.alone(configuration),
                                       "forwards": forwards}
    return golden


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="record the golden outputs into this JSON file")
    group.add_argument("--check", type=Path, help="decode every configuration again and compare")
    group.add_argument("--add", type=Path, help="record only the configurations this file lacks (a new built-in "
                       "component's), keeping the others as they are")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    decoder = Decoder()
    if args.add:
        kept = json.loads(args.add.read_text())["configurations"]
        found = {**kept, **record(decoder, skip=kept)}
        _write(args.add, dict(sorted(found.items(), key=lambda item: _order(item[0]))))
        print(f"{len(found) - len(kept)} configurations added to {args.add}")
        return 0
    found = record(decoder)
    if args.out:
        _write(args.out, found)
        print(f"{len(found)} configurations recorded in {args.out}")
        return 0
    expected = json.loads(args.check.read_text())["configurations"]
    changed = [name for name in expected if expected[name] != found.get(name)]
    for name in changed:
        print(f"changed: {name}: {expected[name]} -> {found.get(name)}")
    print(f"{len(expected) - len(changed)} of {len(expected)} configurations unchanged")
    return 1 if changed else 0


def _order(name: str) -> int:
    """A configuration's place in ``configurations()`` (the recorded file keeps that order)."""
    return [key(*c) for c in configurations()].index(name)


def _write(path: Path, found: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"gen_length": GEN_LENGTH, "block_length": BLOCK_LENGTH, "tasks": TASKS,
                                     "configurations": found}, indent=1) + "\n")
    temporary.replace(path)


if __name__ == "__main__":
    sys.exit(main())
