"""Ablation grids: decode every cell (task × policy × stop × cache × gen length), one JSONL row per cell.

A grid is a TOML file or a dict::

    model = "reference"                    # a registered model name (the bundled one), or a model directory
    tasks = ["copy", "shuffle"]
    n = 100                                # samples per task
    seed = 0                               # the first sample's seed (evaluation seeds are below 1,000,000)
    gen_lengths = [128]
    block_length = 32
    policies = ["topk", "threshold:tau=0.9"]
    stops = ["none", "eotp"]
    caches = ["none"]
    constraints = ["none", "distinct_items"]  # optional: structured output (default: none)
    baseline = { policy = "topk", stop = "none", cache = "none" }   # speedups are against it
    dtype = "float32"                      # auto, float32, bfloat16 or float16; device = "cuda:0" etc.
    temperature = 0.0                      # with steps (default: gen length) and decode_seed: every cell's decode
    chat = true                            # prompts through the chat template (default: if the tokenizer has one)

or explicit ``[[cells]]`` tables (``policy``, ``stop``, ``cache``, ``gen_length``, ``constraint``) instead of
the product.
Rows are appended as each cell finishes (the file is rewritten atomically); a rerun skips finished cells.
"""

from __future__ import annotations

import itertools
import json
import math
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Mapping


from unmask._files import write_text_atomically
from unmask.contrib import distributed
from unmask.contrib.eval.runner import Cell, Grid, GridError, run_grid
from unmask.contrib.models.transformers import DTYPES

__all__ = ["GridError", "Cell", "Grid", "load_grid", "ablate", "read_rows", "exclusive_writer"]

FIELDS = {"model", "tasks", "n", "seed", "gen_lengths", "block_length", "policies", "stops", "caches", "constraints",
          "baseline", "cells", "batch_size", "name", "dtype", "device", "steps", "temperature", "decode_seed", "chat"}
CELL_FIELDS = {"policy", "stop", "cache", "gen_length", "constraint"}
BASELINE_FIELDS = {"policy", "stop", "cache"}


def load_grid(source: str | Path | Mapping[str, Any]) -> Grid:
    """Read and check a grid (TOML path or dict); every error names the cell and the field."""
    if isinstance(source, Mapping):
        raw, name = dict(source), str(source.get("name", "grid"))
    else:
        import tomllib

        path = Path(source)
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise GridError(f"{path}: not valid TOML: {error}") from error
        name = str(raw.get("name", path.stem))
    _check_keys(raw, FIELDS, "grid")
    tasks = tuple(_list(raw, "tasks", None))
    integers = {"n": (50, 1), "seed": (0, 0), "block_length": (32, 1), "batch_size": (32, 1), "steps": (None, 1),
                "decode_seed": (0, 0)}  # field: (default, minimum); steps None is one token per step
    for field_name, (default, minimum) in integers.items():
        value = raw.get(field_name, default)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
            raise GridError(f"grid: field {field_name!r} must be a {'positive' if minimum else 'non-negative'} "
                            f"integer, got {value!r}")
    temperature = raw.get("temperature", 0.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise GridError(f"grid: field 'temperature' must be a finite number >= 0, got {temperature!r}")
    if not isinstance(raw.get("chat", False), bool):
        raise GridError(f"grid: field 'chat' must be true or false, got {raw['chat']!r}")
    if "cells" in raw:
        if not isinstance(raw["cells"], list) or not all(isinstance(c, Mapping) for c in raw["cells"]):
            raise GridError("grid: field 'cells' must be a list of tables ([[cells]])")
        for index, cell in enumerate(raw["cells"]):
            _check_keys(cell, CELL_FIELDS, f"grid: cells[{index}]")
        combos = [(c.get("policy", "topk"), str(c.get("stop", "none")), str(c.get("cache", "none")),
                   c.get("gen_length", 128), str(c.get("constraint", "none"))) for c in raw["cells"]]
        if not combos:
            raise GridError("grid: field 'cells' is empty")
    else:
        combos = list(itertools.product(_list(raw, "policies", ["topk"]), _list(raw, "stops", ["none"]),
                                        _list(raw, "caches", ["none"]), _list(raw, "gen_lengths", [128]),
                                        map(str, _list(raw, "constraints", ["none"]))))
    cells = tuple(Cell(task, str(p), str(s), str(c), g, k) for task in tasks for p, s, c, g, k in combos)
    if not isinstance(raw.get("baseline", {}), Mapping):
        raise GridError("grid: field 'baseline' must be a table of policy, stop and cache")
    _check_keys(raw.get("baseline", {}), BASELINE_FIELDS, "grid: baseline")
    baseline = {"policy": "topk", "stop": "none", "cache": "none", **raw.get("baseline", {})}
    dtype = _choice(raw, "dtype", ("auto", *DTYPES), "float32")
    device = _choice(raw, "device", None, "cpu")
    try:
        grid = Grid(name=name, model=str(raw.get("model", "reference")), tasks=tasks, n=raw.get("n", 50),
                    seed=raw.get("seed", 0), block_length=raw.get("block_length", 32),
                    batch_size=raw.get("batch_size", 32), baseline=baseline, cells=cells, dtype=dtype, device=device,
                    steps=raw.get("steps"), temperature=temperature, decode_seed=raw.get("decode_seed", 0),
                    chat=raw.get("chat"))
    except ValueError as error:  # sample seeds that reach the training items
        raise GridError(f"grid: field 'seed': {error}") from error
    _check_cells(grid)
    return grid


def _choice(raw: Mapping[str, Any], field_name: str, allowed: tuple[str, ...] | None, default: str) -> str:
    value = raw.get(field_name, default)
    if not isinstance(value, str) or (allowed is not None and value not in allowed):
        rule = f"one of {', '.join(allowed)}" if allowed else "a string such as 'cpu' or 'cuda:0'"
        raise GridError(f"grid: field {field_name!r} must be {rule}, got {value!r}")
    return value


def _check_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise GridError(f"{where}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(sorted(allowed))}")


def _list(raw: Mapping[str, Any], field_name: str, default: list[Any] | None) -> list[Any]:
    if field_name not in raw:
        if default is None:
            raise GridError(f"grid: field {field_name!r} is required")
        return default
    value = raw[field_name]
    if not isinstance(value, list):
        raise GridError(f"grid: field {field_name!r} must be a list, got {value!r}")
    if not value:
        raise GridError(f"grid: field {field_name!r} is empty")
    return value


def _check_cells(grid: Grid) -> None:
    from unmask.contrib.tasks import get_task
    from unmask.core.plugins import create

    from unmask.core.engine import check_config

    for cell in grid.cells:
        _check_field(cell, "task", lambda: get_task(cell.task))
        _check_field(cell, "gen_length", lambda: grid.config(cell))
        for kind, field_name in (("policies", "policy"), ("stops", "stop"), ("caches", "cache"),
                                 ("constraints", "constraint")):
            spec = getattr(cell, field_name)
            if field_name == "constraint" and spec == "none":
                continue
            _check_field(cell, field_name, lambda: check_config([create(kind, spec)], grid.config(cell)))
    if not any(grid.is_baseline(cell) for cell in grid.cells):
        raise GridError(f"grid: field 'baseline' {grid.baseline} matches no cell")


def _check_caches_serve(grid: Grid, model: Any) -> None:
    """Once the model is loaded: every cache can serve it (the rest was checked by load_grid)."""
    from unmask.core.plugins import create

    for cell in grid.cells:
        _check_field(cell, "cache", lambda: create("caches", cell.cache).reset(model))


def _check_field(cell: Cell, field_name: str, check: Any) -> None:
    try:
        check()
    except (ValueError, TypeError, OSError) as error:
        raise GridError(f"cell [{cell.key}]: field {field_name!r}: {error}") from error


def ablate(
    grid: str | Path | Mapping[str, Any] | Grid, out: str | Path, *, progress: bool = True,
    loaded: tuple[Any, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell of ``grid`` not yet in ``out`` (JSONL) with :func:`~unmask.contrib.eval.runner.run_grid`,
    baseline cells first; return the grid's rows.

    ``loaded`` is ``(model, tokenizer)`` when the caller already loaded the grid's model. Rows are keyed by
    the cell and every setting that changes its numbers (n, seed, block and batch size, the weights' hash).
    """
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    out = Path(out)
    # In a data-parallel run rank 0 alone reads and writes ``out`` and holds its lock.
    with exclusive_writer(out) if distributed.ranks().main else nullcontext():
        return _run_grid(grid, out, progress, loaded)


_HELD: set[Path] = set()  # results files this process holds the lock of


@contextmanager
def exclusive_writer(out: str | Path) -> Iterator[None]:
    """Hold a lock on ``out`` so that a second writer fails at once instead of losing rows. The lock is
    that of the resolved file, so a second writer through a symlink is refused too; a process that holds it
    already (the CLI around loading and decoding) takes it again freely."""
    import fcntl

    resolved = Path(out).resolve()
    if resolved in _HELD:
        yield
        return
    resolved.parent.mkdir(parents=True, exist_ok=True)
    lock_path = resolved.with_name(f".{resolved.name}.lock")
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GridError(f"--out {out}: another unmask ablate is writing it; wait for it or name another file") from None
        _HELD.add(resolved)
        try:
            yield
        finally:
            _HELD.discard(resolved)
            lock_path.unlink(missing_ok=True)


def _run_grid(grid: Grid, out: Path, progress: bool, loaded: tuple[Any, Any] | None) -> list[dict[str, Any]]:
    model, tokenizer = loaded if loaded is not None else _load(grid)
    _check_caches_serve(grid, model)  # before any decoding
    rows = distributed.on_main(lambda: read_rows(out))

    def keep(row: dict[str, Any]) -> None:
        rows.append(row)
        if distributed.ranks().main:
            write_text_atomically(out, "".join(json.dumps(r) + "\n" for r in rows))

    return run_grid(grid, model, tokenizer, previous=rows, on_row=keep, progress=progress)


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _load(grid: Grid) -> tuple[Any, Any]:
    from unmask.contrib.models.transformers import load

    return load(grid.model, dtype=grid.dtype, device=grid.device)
