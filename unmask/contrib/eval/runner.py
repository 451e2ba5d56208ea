"""The experiment runner: a grid of cells (task × policy × stop × cache × gen length) in, one row per cell out.

``bench`` builds a grid from its flags, ``ablate`` reads one from TOML and keeps the rows on disk; both run it
here, so their numbers mean the same. Metrics per row: ``accuracy`` (the task's exact scorer, %),
``nfe_mean`` / ``nfe_p50`` / ``nfe_p90`` (forwards per sample), ``tokens_per_forward`` (gen length / NFE),
``tokens_per_s`` (answer tokens, EOS excluded, per wall second), ``wall_s``, and ``nfe_speedup`` /
``wall_speedup`` against the grid's baseline cell of the same task and gen length (the one baseline rule).

Components that need something of the application (``unmask.core.needs``) get it here: the vanilla output
(the oracle's reference), decoded once per batch with ``topk`` and one token per step, and the model's
weights hash.
"""

from __future__ import annotations

import platform
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from attrs import define, field, frozen

from unmask.contrib import distributed
from unmask.contrib.models.transformers import decode_answers, encode_prompts, weights_hash
from unmask.contrib.tasks import samples, score
from unmask.core.engine import decode, pad_prompts
from unmask.core.needs import artefact_sha256, provide
from unmask.core.plugins import create
from unmask.core.types import DecodeConfig

__all__ = ["GridError", "Cell", "Grid", "run_grid", "run_cell", "CellRun", "cell_metrics", "mean_row", "speedups",
           "check_components", "machine"]


class GridError(ValueError):
    """A grid that cannot run; the message names the cell and the field."""


@frozen
class Cell:
    task: str
    policy: str
    stop: str
    cache: str
    gen_length: int
    constraint: str = "none"

    @property
    def key(self) -> str:
        # unconstrained cells keep the key they had before constraints existed (rows of older runs resume)
        extra = "" if self.constraint == "none" else f" | {self.constraint}"
        return f"{self.task} | {self.policy} | {self.stop} | {self.cache} | {self.gen_length}{extra}"


@frozen(kw_only=True)
class Grid:
    name: str
    model: str
    tasks: tuple[str, ...]
    n: int
    seed: int  # the first sample's seed
    block_length: int
    batch_size: int
    baseline: dict[str, str]  # policy, stop, cache: speedups are against this cell of each task and gen length
    cells: tuple[Cell, ...]
    dtype: str = "float32"
    device: str = "cpu"
    steps: int | None = None  # None: one token per step on average (steps = gen length)
    temperature: float = 0.0
    decode_seed: int = 0
    chat: bool | None = None  # prompts through the tokenizer's chat template; None: if it has one

    def __attrs_post_init__(self) -> None:
        from unmask.contrib.tasks import check_evaluation_seeds

        check_evaluation_seeds(self.n, self.seed)

    def is_baseline(self, cell: Cell) -> bool:
        return (cell.policy, cell.stop, cell.cache, cell.constraint) == (
            self.baseline["policy"], self.baseline["stop"], self.baseline["cache"], self.baseline.get("constraint", "none"))

    def config(self, cell: Cell) -> DecodeConfig:
        return DecodeConfig(gen_length=cell.gen_length, block_length=self.block_length, steps=self.steps,
                            temperature=self.temperature, seed=self.decode_seed)

    def settings(self) -> dict[str, Any]:
        """Everything besides the cell that changes a row's numbers (with the weights' hash)."""
        return {"n": self.n, "seed": self.seed, "block_length": self.block_length, "batch_size": self.batch_size,
                "dtype": self.dtype, "steps": self.steps, "temperature": self.temperature,
                "decode_seed": self.decode_seed, "chat": self.chat}


def run_grid(
    grid: Grid, model: Any, tokenizer: Any, *, previous: Iterable[dict[str, Any]] = (),
    on_row: Callable[[dict[str, Any]], None] | None = None, progress: bool = True,
) -> list[dict[str, Any]]:
    """Run every cell of ``grid`` with no row in ``previous`` made with the same settings, baseline cells
    first; ``on_row`` sees each new row. Returns the grid's rows, in the grid's cell order."""
    from tqdm import tqdm

    check_components(*([getattr(cell, kind) for cell in grid.cells] for kind in ("policy", "stop", "cache")),
                     constraints=[cell.constraint for cell in grid.cells])
    settings = {**grid.settings(), "model_sha256": weights_hash(model)}
    filters = {}  # a Learn2PD spec's filter, by fingerprint: a row of another filter is not reused
    for spec in dict.fromkeys(cell.policy for cell in grid.cells):
        digest = artefact_sha256(create("policies", spec))
        if digest is not None:
            filters[spec] = digest
    rows = {row["cell"]: row for row in previous if all(row.get(k) == v for k, v in settings.items())
            and row.get("filter_sha256") == filters.get(row["policy"])}
    todo = sorted((c for c in grid.cells if c.key not in rows), key=lambda c: not grid.is_baseline(c))
    place = distributed.ranks()
    context = {"grid": grid.name, "model": grid.model, **settings, "versions": _versions(),
               "machine": machine(), "processes": place.world_size}
    # In a data-parallel run each process decodes its shard of every sample set (see unmask.contrib.distributed).
    sets = {task: distributed.shard(samples(task, grid.n, grid.seed), place) for task in grid.tasks}
    bar = tqdm(total=len(todo) * grid.n, desc=grid.name, unit="sample", file=sys.stderr,
               disable=not progress or not place.main)
    references: dict[Any, torch.Tensor] = {}
    for cell in todo:
        bar.set_postfix_str(cell.key, refresh=False)
        config = grid.config(cell)
        run = run_cell(model, tokenizer, sets[cell.task], policy=cell.policy, stop=cell.stop, cache=cell.cache,
                       constraint=cell.constraint, config=config, batch_size=grid.batch_size, chat=grid.chat, references=references,
                       on_batch=lambda count: bar.update(count * place.world_size))
        run = CellRun.merge(distributed.gather(run))
        nfe = torch.tensor(run.nfe, dtype=torch.float64)
        row = {"cell": cell.key, "task": cell.task, "policy": cell.policy, "stop": cell.stop, "cache": cell.cache,
               **({} if cell.constraint == "none" else {"constraint": cell.constraint}), "baseline": grid.is_baseline(cell), **cell_metrics(run, config),
               "nfe_p50": round(float(nfe.quantile(0.5)), 2), "nfe_p90": round(float(nfe.quantile(0.9)), 2),
               "components": run.components, "first_sample": run.first, "filter_sha256": filters.get(cell.policy),
               **context}
        base = row if row["baseline"] else next(
            (r for r in rows.values() if r["baseline"] and r["task"] == cell.task and r["gen_length"] == cell.gen_length),
            None)
        row.update(speedups(row, base))
        rows[cell.key] = row
        if on_row is not None:
            on_row(row)
    bar.close()
    return [rows[cell.key] for cell in grid.cells]


@define
class CellRun:
    """Per-sample outcomes of decoding one sample set with one combination of components."""

    correct: list[bool] = field(factory=list)
    nfe: list[int] = field(factory=list)
    recomputed: list[int] = field(factory=list)  # position-layers each sample's forwards computed
    answer_tokens: list[int] = field(factory=list)
    wall_s: float = 0.0
    components: dict[str, Any] = field(factory=dict)
    first: dict[str, Any] = field(factory=dict)  # the first sample: answer and commit step of each position

    @classmethod
    def merge(cls, runs: Sequence[CellRun]) -> CellRun:
        """The runs of consecutive shards as one: samples in order, the slowest process's wall time."""
        if len(runs) == 1:
            return runs[0]
        return cls(correct=[c for r in runs for c in r.correct], nfe=[n for r in runs for n in r.nfe],
                   recomputed=[n for r in runs for n in r.recomputed],
                   answer_tokens=[a for r in runs for a in r.answer_tokens], wall_s=max(r.wall_s for r in runs),
                   components=next(r.components for r in runs if r.components),
                   first=next(r.first for r in runs if r.first))


def run_cell(
    model: Any, tokenizer: Any, items: Sequence[Any], *, policy: Any, stop: Any, cache: Any, config: DecodeConfig,
    batch_size: int, chat: bool | None = None, references: dict[Any, torch.Tensor] | None = None,
    on_batch: Any = None, constraint: Any = "none",
) -> CellRun:
    """Decode ``items`` in batches and score them; ``references`` keeps vanilla outputs across calls."""
    run = CellRun()
    references = {} if references is None else references
    component = create("policies", policy)
    model_sha256 = lru_cache(maxsize=None)(lambda: weights_hash(model))  # hashed once, if a component asks
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        input_ids, attention_mask = pad_prompts(
            encode_prompts(tokenizer, [s.prompt for s in batch], chat=chat), model.eos_token_id
        )
        key = (tuple((s.task, s.seed) for s in batch), config.gen_length, config.num_block_tokens)

        def reference() -> torch.Tensor:
            if key not in references:
                vanilla = DecodeConfig(gen_length=config.gen_length, block_length=config.block_length,
                                       mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id)
                references[key] = decode(model, input_ids, attention_mask=attention_mask, config=vanilla).tokens
            return references[key]

        chosen = provide(component, {"reference": reference, "model_sha256": model_sha256})
        constrained = {} if constraint in (None, "none") else {"constraint": constraint, "tokenizer": tokenizer}
        result = decode(model, input_ids, attention_mask=attention_mask, config=config,
                        policy=chosen, stop=stop, cache=cache, **constrained)
        if _is_vanilla(policy, stop, cache, config) and not constrained:  # the oracle's reference: no need to decode it again
            references[key] = result.tokens
        answers = decode_answers(tokenizer, result)
        run.correct += [score(s, a) for s, a in zip(batch, answers)]
        run.nfe += result.nfe.tolist()
        run.recomputed += [] if result.recomputed is None else result.recomputed.tolist()
        run.answer_tokens += result.answer_lengths.tolist()
        run.wall_s += result.wall_s
        run.components = result.components
        if not run.first:
            run.first = {"seed": batch[0].seed, "answer": answers[0], "tokens": result.tokens[0].tolist(),
                         "commit_step": result.commit_step[0].tolist(), "answer_length": int(result.answer_lengths[0])}
        if on_batch is not None:
            on_batch(len(batch))
    return run


def cell_metrics(run: CellRun, config: DecodeConfig) -> dict[str, Any]:
    count, nfe = len(run.nfe), sum(run.nfe)
    return {
        "n": count, "accuracy": round(100 * sum(run.correct) / count, 2), "nfe_mean": round(nfe / count, 2),
        # position-layers a sample's forwards computed: what a cache saves, where forwards stay the same
        "recomputed_mean": round(sum(run.recomputed) / count, 1) if len(run.recomputed) == count else None,
        "tokens_per_forward": round(config.gen_length * count / nfe, 3), "wall_s": round(run.wall_s, 3),
        "tokens_per_s": round(sum(run.answer_tokens) / run.wall_s, 2) if run.wall_s else None,
        "gen_length": config.gen_length, "block_length": config.num_block_tokens, "steps": config.num_steps,
    }


def mean_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The ``task="mean"`` row of one combination's per-task rows: accuracy averaged over tasks, NFE and
    speed over all samples."""
    count = sum(r["n"] for r in rows)
    nfe = sum(r["nfe_mean"] * r["n"] for r in rows)
    wall = sum(r["wall_s"] for r in rows)
    tokens = sum((r["tokens_per_s"] or 0) * r["wall_s"] for r in rows)
    return {
        **{k: rows[0][k] for k in ("policy", "stop", "cache", "constraint") if k in rows[0]}, "task": "mean", "n": count,
        "accuracy": round(sum(r["accuracy"] for r in rows) / len(rows), 2),  # mean over tasks
        "nfe_mean": round(nfe / count, 2), "tokens_per_forward": round(rows[0]["gen_length"] * count / nfe, 3),
        "recomputed_mean": (round(sum(r["recomputed_mean"] * r["n"] for r in rows) / count, 1)
                            if all(r.get("recomputed_mean") is not None for r in rows) else None),
        "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2) if wall else None,
        "baseline": all(r.get("baseline") for r in rows),
        **{k: rows[0].get(k) for k in ("gen_length", "block_length", "steps", "seed", "components")},
    }


def speedups(row: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, float | None]:
    """NFE and wall-clock speedups of ``row`` against its baseline row (same samples, same run)."""
    if baseline is None:
        return {"nfe_speedup": None, "wall_speedup": None}
    return {"nfe_speedup": round(baseline["nfe_mean"] / row["nfe_mean"], 3),
            "wall_speedup": round(baseline["wall_s"] / row["wall_s"], 3) if row["wall_s"] else None}


def check_components(policies: Sequence[Any], stops: Sequence[Any], caches: Sequence[Any],
                     constraints: Sequence[Any] = ()) -> None:
    """Every policy, stop, cache and constraint builds (a bad spec fails before the model loads or decoding
    starts; "none" is no constraint)."""
    constraints = [spec for spec in constraints if spec not in (None, "none")]
    for kind, specs in (("policies", policies), ("stops", stops), ("caches", caches), ("constraints", constraints)):
        checked: list[Any] = []  # each distinct spec once, however many cells share it (specs may be unhashable)
        for spec in specs:
            if spec not in checked:
                create(kind, spec)
                checked.append(spec)


def _is_vanilla(policy: Any, stop: Any, cache: Any, config: DecodeConfig) -> bool:
    return (policy == "topk" and stop == "none" and cache == "none" and config.num_steps == config.gen_length
            and config.temperature == 0)


def _versions() -> dict[str, str]:
    import transformers

    from unmask._version import __version__

    return {"unmask": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def machine() -> dict[str, Any]:
    """Where a result was measured: CPU model, torch threads, GPU name if one is used."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "threads": torch.get_num_threads(), "gpu": gpu, "python": platform.python_version()}
