"""Ablation grids: decode every cell (task × policy × stop × cache × gen length), one JSONL row per cell.

A grid is a TOML file or a dict::

    model = "reference"                    # a registered model name (the bundled one), or a model directory
    tasks = ["chain_sum", "number_sorting"]
    n = 100                                # samples per task
    seed = 0                               # first reasoning-gym seed (evaluation seeds are below 1,000,000)
    gen_lengths = [128]
    block_length = 32
    policies = ["topk", "threshold:tau=0.9"]
    stops = ["none", "eotp"]
    caches = ["none"]
    baseline = { policy = "topk", stop = "none", cache = "none" }   # speedups are against it
    dtype = "float32"                      # auto, float32, bfloat16 or float16; device = "cuda:0" etc.

or explicit ``[[cells]]`` tables (``policy``, ``stop``, ``cache``, ``gen_length``) instead of the product.
Rows are appended as each cell finishes (the file is rewritten atomically); a rerun skips finished cells.
"""

from __future__ import annotations

import itertools
import json
import platform
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from attrs import frozen

from unmask._files import write_text_atomically
from unmask.contrib.bench import cell_metrics, check_policy, run_cell, speedups
from unmask.contrib.transformers import DTYPES
from unmask.core.types import DecodeConfig

__all__ = ["GridError", "Cell", "Grid", "load_grid", "ablate", "read_rows"]

FIELDS = {"model", "tasks", "n", "seed", "gen_lengths", "block_length", "policies", "stops", "caches", "baseline",
          "cells", "batch_size", "name", "dtype", "device"}
CELL_FIELDS = {"policy", "stop", "cache", "gen_length"}
BASELINE_FIELDS = {"policy", "stop", "cache"}


class GridError(ValueError):
    """A grid that cannot run; the message names the cell and the field."""


@frozen
class Cell:
    task: str
    policy: str
    stop: str
    cache: str
    gen_length: int

    @property
    def key(self) -> str:
        return f"{self.task} | {self.policy} | {self.stop} | {self.cache} | {self.gen_length}"


@frozen(kw_only=True)
class Grid:
    name: str
    model: str
    tasks: tuple[str, ...]
    n: int
    seed: int
    block_length: int
    batch_size: int
    baseline: dict[str, str]
    cells: tuple[Cell, ...]
    dtype: str = "float32"
    device: str = "cpu"

    def is_baseline(self, cell: Cell) -> bool:
        return (cell.policy, cell.stop, cell.cache) == (self.baseline["policy"], self.baseline["stop"],
                                                        self.baseline["cache"])


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
    for field_name in ("n", "seed", "block_length", "batch_size"):
        value = raw.get(field_name, {"n": 50, "seed": 0, "block_length": 32, "batch_size": 32}[field_name])
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if field_name == "seed" else 1):
            raise GridError(f"grid: field {field_name!r} must be a {'non-negative' if field_name == 'seed' else 'positive'}"
                            f" integer, got {value!r}")
    if "cells" in raw:
        if not isinstance(raw["cells"], list) or not all(isinstance(c, Mapping) for c in raw["cells"]):
            raise GridError("grid: field 'cells' must be a list of tables ([[cells]])")
        for index, cell in enumerate(raw["cells"]):
            _check_keys(cell, CELL_FIELDS, f"grid: cells[{index}]")
        combos = [(c.get("policy", "topk"), str(c.get("stop", "none")), str(c.get("cache", "none")),
                   c.get("gen_length", 128)) for c in raw["cells"]]
        if not combos:
            raise GridError("grid: field 'cells' is empty")
    else:
        combos = list(itertools.product(_list(raw, "policies", ["topk"]), _list(raw, "stops", ["none"]),
                                        _list(raw, "caches", ["none"]), _list(raw, "gen_lengths", [128])))
    cells = tuple(Cell(task, str(p), str(s), str(c), g) for task in tasks for p, s, c, g in combos)
    if not isinstance(raw.get("baseline", {}), Mapping):
        raise GridError("grid: field 'baseline' must be a table of policy, stop and cache")
    _check_keys(raw.get("baseline", {}), BASELINE_FIELDS, "grid: baseline")
    baseline = {"policy": "topk", "stop": "none", "cache": "none", **raw.get("baseline", {})}
    grid = Grid(name=name, model=str(raw.get("model", "reference")), tasks=tasks, n=raw.get("n", 50),
                seed=raw.get("seed", 0), block_length=raw.get("block_length", 32),
                batch_size=raw.get("batch_size", 32), baseline=baseline, cells=cells,
                dtype=_choice(raw, "dtype", ("auto", *DTYPES), "float32"),
                device=_choice(raw, "device", None, "cpu"))
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

    for cell in grid.cells:
        _check_field(cell, "task", lambda: get_task(cell.task))
        _check_field(cell, "gen_length", lambda: DecodeConfig(gen_length=cell.gen_length, block_length=grid.block_length))
        _check_field(cell, "policy", lambda: check_policy(cell.policy))
        _check_field(cell, "stop", lambda: cell.stop == "none" or create("stops", cell.stop))
        _check_field(cell, "cache", lambda: create("caches", cell.cache))
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
    """Run every cell of ``grid`` not yet in ``out`` (JSONL), baseline cells first; return the grid's rows.

    ``loaded`` is ``(model, tokenizer)`` when the caller already loaded the grid's model. Rows are keyed by
    the cell and every setting that changes its numbers (n, seed, block and batch size, the weights' hash).
    """
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    out = Path(out)
    with _exclusive(out):
        return _run_grid(grid, out, progress, loaded)


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """Hold a lock beside ``out`` so that a second writer fails at once instead of losing rows."""
    import fcntl

    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.with_name(f".{out.name}.lock")
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GridError(f"--out {out}: another unmask ablate is writing it; wait for it or name another file") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


def _run_grid(grid: Grid, out: Path, progress: bool, loaded: tuple[Any, Any] | None) -> list[dict[str, Any]]:
    from tqdm import tqdm

    from unmask.contrib.tasks import samples
    from unmask.contrib.transformers import weights_hash

    model, tokenizer = loaded if loaded is not None else _load(grid)
    _check_caches_serve(grid, model)  # before any decoding
    # Everything besides the cell that changes a row's numbers: a row made otherwise is not reused.
    settings = {"n": grid.n, "seed": grid.seed, "block_length": grid.block_length, "batch_size": grid.batch_size,
                "dtype": grid.dtype, "model_sha256": weights_hash(model)}
    rows = read_rows(out)
    current = [row for row in rows if all(row.get(key) == value for key, value in settings.items())]
    done = {row["cell"] for row in current}
    todo = sorted((c for c in grid.cells if c.key not in done), key=lambda c: not grid.is_baseline(c))
    context = {"grid": grid.name, "model": grid.model, **settings, "versions": _versions(), "machine": machine()}
    sets = {task: samples(task, grid.n, grid.seed) for task in grid.tasks}
    bar = tqdm(total=len(todo) * grid.n, desc=f"ablate {grid.name}", unit="sample", file=sys.stderr,
               disable=not progress)
    references: dict[Any, torch.Tensor] = {}
    for cell in todo:
        bar.set_postfix_str(cell.key, refresh=False)
        config = DecodeConfig(gen_length=cell.gen_length, block_length=grid.block_length)
        run = run_cell(model, tokenizer, sets[cell.task], policy=cell.policy,
                       stop=None if cell.stop == "none" else cell.stop, cache=cell.cache, config=config,
                       batch_size=grid.batch_size, references=references, on_batch=bar.update)
        nfe = torch.tensor(run.nfe, dtype=torch.float64)
        row = {"cell": cell.key, "task": cell.task, "policy": cell.policy, "stop": cell.stop, "cache": cell.cache,
               "baseline": grid.is_baseline(cell), **cell_metrics(run, config),
               "nfe_p50": float(nfe.quantile(0.5)), "nfe_p90": float(nfe.quantile(0.9)),
               "components": run.components, "first_sample": run.first, **context}
        base = row if row["baseline"] else next((r for r in current if r["baseline"] and r["task"] == cell.task
                                                  and r["gen_length"] == cell.gen_length), None)
        row.update(speedups(row, base) if base else {"nfe_speedup": None, "wall_speedup": None})
        rows.append(row)
        current.append(row)
        write_text_atomically(out, "".join(json.dumps(row) + "\n" for row in rows))
    bar.close()
    keys = {cell.key for cell in grid.cells}
    return [row for row in current if row["cell"] in keys]


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _load(grid: Grid) -> tuple[Any, Any]:
    from unmask.contrib.transformers import load

    return load(grid.model, dtype=grid.dtype, device=grid.device)


def _versions() -> dict[str, str]:
    import transformers

    from unmask import __version__

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
