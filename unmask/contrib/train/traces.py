"""Learn2PD training data: per-step block statistics of a decode, labelled "already final".

``collect`` decodes each prompt twice: the reference (vanilla: one token per step, temperature 0), then
with ``policy`` (the oracle against the reference, as in the paper), recording at every step each active
row's :class:`BlockStats` and the labels ``x0 == target`` over the block. The target is the reference, or
(``labels="correct"``) the row's own output where its answer scores correct. Collecting along a learned
policy's own decodes adds the states it visits and the oracle never does (its mistakes). Prompts are the
tasks' (items from ``FILTER_SEED`` up) or the user's own (``prompts``: the paper trains on FLAN prompts).
One safetensors shard per (task, batch), a JSON manifest (model hash, settings, shards done); a rerun skips
finished shards, every file is written atomically. Data-parallel runs: :mod:`unmask.contrib.distributed`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from safetensors.torch import save_file

from unmask._files import read_json, read_safetensors, read_text, write_atomically, write_text_atomically
from unmask.contrib import distributed
from unmask.core.engine import decode, pad_prompts
from unmask.core.types import DecodeConfig, StepView
from unmask.filters.features import BlockStats, view_stats

if TYPE_CHECKING:
    from unmask.contrib.tasks import Sample

__all__ = ["FILTER_SEED", "collect", "read_prompts", "Traces"]

# Prompts for filter training: the tasks' "train" part (never an evaluated prompt), from seeds past those
# the bundled model was trained on (which start at tasks.TRAIN_SEED).
FILTER_SEED = 2_000_000
MANIFEST = "manifest.json"
FORMAT = "unmask-traces/2"  # 2: block statistics hold the block's tokens
LABELS = ("reference", "correct")


def collect(
    model: Any, tokenizer: Any, out: str | Path, *, tasks: Sequence[str], n: int, seed: int = FILTER_SEED,
    gen_length: int = 128, block_length: int = 32, batch_size: int = 32, progress: bool = True,
    prompts: Sequence[str] | None = None, chat: bool | None = None, policy: str = "oracle", labels: str = "reference",
    constraint: str = "none",
) -> dict[str, Any]:
    """Record traces for ``n`` prompts per task into ``out`` (or for ``prompts``, as the task ``prompts``);
    returns the manifest. ``chat``: through the tokenizer's chat template (None: if it has one). ``policy``:
    the spec of the policy whose decodes are recorded (``oracle``: against the reference). ``labels``:
    ``reference`` (a prediction is final if it equals the vanilla decode's token, as in the paper) or
    ``correct`` (if it equals the recorded decode's own final token, where that decode's answer scores
    correct; the vanilla token elsewhere): on multi-answer tasks a policy's decode may end in another valid
    answer than vanilla's, and its commits were no mistake. ``constraint``: a constraint spec both the
    vanilla and the recorded decodes run under ("none": unconstrained)."""
    from tqdm import tqdm

    from unmask.contrib.tasks import TRAIN_SEED, samples
    from unmask.contrib.models.transformers import weights_hash
    from unmask.core.plugins import create

    if labels not in LABELS:
        raise ValueError(f"labels={labels!r}: must be one of {', '.join(LABELS)}")
    if prompts is not None:
        if labels == "correct":
            raise ValueError("labels='correct' needs the tasks' scorers; it cannot label your own prompts")
        tasks, n, seed = ["prompts"], len(prompts), 0
    elif seed < TRAIN_SEED:
        raise ValueError(f"seed={seed} would take prompts from the evaluation seeds (below {TRAIN_SEED}); "
                         f"filters are trained on seeds >= {TRAIN_SEED} (default {FILTER_SEED})")
    config = DecodeConfig(gen_length=gen_length, block_length=block_length)
    recorded = create("policies", policy)  # a bad spec fails before any decode
    if constraint != "none":
        create("constraints", constraint)
    out = Path(out)
    settings = {"policy": policy, "tasks": list(tasks), "n": n, "seed": seed, "gen_length": gen_length,
                "block_length": block_length, "batch_size": batch_size, "model": weights_hash(model), "chat": chat}
    if labels != "reference":  # only then, so traces made before labels existed still resume
        settings["labels"] = labels
    if constraint != "none":  # (likewise)
        settings["constraint"] = constraint
    if prompts is not None:
        settings["prompts_sha256"] = hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest()
    manifest = distributed.on_main(lambda: _open_manifest(out, settings))
    work = [(task, start) for task in tasks for start in range(0, n, batch_size)]
    todo = [(task, start) for task, start in work if _shard_name(task, start, batch_size) not in manifest["shards"]]
    place = distributed.ranks()
    bar = tqdm(total=len(todo), desc="collect", unit="batch", disable=not progress or not place.main)
    # One shard per process and round (a data-parallel run); rank 0 records the round's shards in the manifest.
    for round_start in range(0, len(todo), place.world_size):
        mine = todo[round_start + place.rank] if round_start + place.rank < len(todo) else None
        done = None
        if mine is not None:
            task, start = mine
            count = min(batch_size, n - start)
            # the task's first n train-part items, this shard's slice (a later start must not repeat them)
            drawn = samples(task, n, seed, part="train")[start:start + count] if prompts is None else None
            if drawn is not None:
                items = [(s.seed, s.prompt) for s in drawn]
            else:
                items = [(index, prompts[index]) for index in range(start, start + count)]
            name = _shard_name(task, start, batch_size)
            scored = drawn if labels == "correct" else None
            done = (name, _collect_shard(model, tokenizer, items, out / name, config, recorded, chat, scored,
                                         None if constraint == "none" else constraint))
        for finished in distributed.gather(done):
            if finished is not None:
                manifest["shards"][finished[0]] = finished[1]
                bar.update(1)
        if place.main:
            write_text_atomically(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    bar.close()
    return manifest


def _shard_name(task: str, start: int, batch_size: int) -> str:
    return f"{task}-{start // batch_size:05d}.safetensors"


def _collect_shard(model: Any, tokenizer: Any, items: Sequence[tuple[int, str]], path: Path, config: DecodeConfig,
                   policy: Any, chat: bool | None, scored: Sequence[Sample] | None,
                   constraint: str | None = None) -> dict[str, int]:
    """Decode ``items`` (id, prompt) with vanilla and with ``policy`` (both under ``constraint``), write the shard,
    return its manifest entry. ``scored``: the items' samples, to label rows whose answer scores correct against
    their own output."""
    from unmask.contrib.models.transformers import decode_answers, encode_prompts, weights_hash
    from unmask.contrib.tasks import score
    from unmask.core.needs import provide

    input_ids, attention_mask = pad_prompts(encode_prompts(tokenizer, [p for _, p in items], chat=chat),
                                            model.eos_token_id)
    constrained = {} if constraint is None else {"constraint": constraint, "tokenizer": tokenizer}
    reference = decode(model, input_ids, attention_mask=attention_mask, config=config, **constrained).tokens
    policy = provide(policy, {"reference": lambda: reference, "model_sha256": lambda: weights_hash(model)},
                     where="unmask collect")
    records: list[dict[str, torch.Tensor]] = []
    result = decode(model, input_ids, attention_mask=attention_mask, config=config, policy=policy,
                    on_step=lambda view: records.append(_record(view, items)), **constrained)
    target, correct = reference, None
    if scored is not None:
        answers = decode_answers(tokenizer, result)
        correct = torch.tensor([score(s, a) for s, a in zip(scored, answers)], device=reference.device)
        target = torch.where(correct[:, None], result.tokens, reference)
    for record in records:
        # Labels once the decode is over: the target may be the decode's own output.
        rows, columns = record.pop("rows"), record.pop("columns")
        record["labels"] = record.pop("predicted") == target[rows].gather(1, columns.clamp(0, target.shape[1] - 1))
    shard = {key: torch.cat([r[key] for r in records]) for key in records[0]}
    write_atomically(path, lambda temporary: save_file(shard, temporary))
    entry = {"records": len(shard["labels"]), "prompts": len(items), "reference_nfe": config.gen_length * len(items),
             "nfe": int(result.nfe.sum()), "reference_equal": int((result.tokens == reference).all(1).sum())}
    if correct is not None:
        entry["correct"] = int(correct.sum())
    return entry


def read_prompts(path: str | Path) -> list[str]:
    """The ``prompt`` of every line of a JSONL file (blank lines skipped)."""
    prompts = []
    for number, line in enumerate(read_text(path, what="--prompts").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}:{number}: not valid JSON: {error}") from error
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise ValueError(f'{path}:{number}: each line must be an object with a non-empty "prompt" string')
        prompts.append(record["prompt"])
    if not prompts:
        raise ValueError(f"{path}: holds no prompts")
    return prompts


def _record(view: StepView, items: Sequence[tuple[int, str]]) -> dict[str, torch.Tensor]:
    """The active rows' block statistics at this step, and what their labels are computed from."""
    rows = view.row_active
    stats = view_stats(view)
    record = {key: getattr(stats, key)[rows] for key in BlockStats.TENSORS}
    record["predicted"] = view.x0[:, view.block_start:view.block_end][rows]
    record["rows"] = rows.nonzero().squeeze(1)
    # Each row's answer positions of the block (a block-causal batch's rows start their answers at their own
    # columns; the prompt columns of a first block are never masked, so their labels are never read).
    record["columns"] = (view.block_start - view.answer_starts[rows])[:, None] + torch.arange(stats.width)[None, :]
    record["prompt"] = torch.tensor([identity for identity, _ in items])[rows]
    record["block"] = torch.full((int(rows.sum()),), view.block_index)
    return record


class Traces:
    """The shards of one or more traces directories, concatenated: ``stats`` (BlockStats), ``labels``,
    ``prompt``, ``block``, and ``task`` (an index into ``tasks``). All must come from one model and block
    length; a prompt collected in two directories (e.g. along the oracle's and a filter's decodes) keeps one
    identity, so a split by prompt puts all its records on one side."""

    def __init__(self, *directories: str | Path) -> None:
        if not directories:
            raise ValueError("Traces needs at least one traces directory")
        self.manifests = [_read_manifest(Path(directory)) for directory in directories]
        for key in ("model", "block_length"):
            values = {m["settings"][key] for m in self.manifests}
            if len(values) > 1:
                raise ValueError(f"the traces directories differ in {key} ({', '.join(map(str, sorted(values)))}); "
                                 "a filter is trained on traces of one model and block length")
        self.tasks = list(dict.fromkeys(t for m in self.manifests for t in m["settings"]["tasks"]))
        columns: dict[str, list[torch.Tensor]] = {}
        tasks: list[torch.Tensor] = []
        for directory, manifest in zip(directories, self.manifests):
            for name in sorted(manifest["shards"]):
                shard = _read_shard(Path(directory) / name)
                for key, values in shard.items():
                    columns.setdefault(key, []).append(values)
                tasks.append(torch.full((len(shard["labels"]),), self.tasks.index(name.rsplit("-", 1)[0])))
        merged = {key: torch.cat(values) for key, values in columns.items()}
        self.stats = BlockStats(**{key: merged[key] for key in BlockStats.TENSORS})
        self.labels, self.prompt, self.block = merged["labels"], merged["prompt"], merged["block"]
        self.task = torch.cat(tasks)

    def __len__(self) -> int:
        return len(self.labels)


SHARD_TENSORS = (*BlockStats.TENSORS, "labels", "prompt", "block")  # one row per record each


def _read_shard(path: Path) -> dict[str, torch.Tensor]:
    """A shard's tensors, checked for the keys and the one record count a trace needs."""
    shard = read_safetensors(path, what="a traces shard")
    missing = [key for key in SHARD_TENSORS if key not in shard]
    if missing:
        raise ValueError(f"{path}: not a traces shard (missing tensor(s) {', '.join(missing)})")
    counts = {key: len(shard[key]) if shard[key].dim() else 0 for key in SHARD_TENSORS}
    if len(set(counts.values())) > 1:
        raise ValueError(f"{path}: damaged traces shard: its tensors hold different record counts {counts}")
    return shard


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no traces ({MANIFEST} missing); make them with unmask collect")
    manifest = read_json(path, what="a traces manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path}: traces format {found!r}, expected {FORMAT!r} "
                         "(older traces lack the block's tokens); collect them again with unmask collect")
    _check_manifest(path, manifest)
    if not manifest["shards"]:
        raise ValueError(f"{directory}: the manifest lists no finished shards")
    return manifest


def _check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    settings, shards = manifest.get("settings"), manifest.get("shards")
    if not isinstance(settings, dict) or not isinstance(shards, dict):
        raise ValueError(f"{path}: damaged manifest: 'settings' and 'shards' must be objects")
    missing = [key for key in ("model", "block_length", "tasks") if key not in settings]
    if missing or not isinstance(settings.get("tasks"), list):
        raise ValueError(f"{path}: damaged manifest: settings lack {', '.join(missing) or 'a list of tasks'}")
    for name in shards:
        if "/" in name or "\\" in name or name.startswith(".") or name.rsplit("-", 1)[0] not in settings["tasks"]:
            raise ValueError(f"{path}: damaged manifest: shard {name!r} is no shard of its tasks")


def _open_manifest(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    path = out / MANIFEST
    if path.exists():
        manifest = read_json(path, what="a traces manifest")
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise ValueError(f"{out} holds traces in format {found!r}, not {FORMAT!r}; use a new --out directory")
        _check_manifest(path, manifest)
        if manifest["settings"] != settings:
            changed = sorted(k for k in settings if manifest["settings"].get(k) != settings[k])
            raise ValueError(f"{out} holds traces made with other settings ({', '.join(changed)} differ); "
                             "use a new --out directory")
        return manifest
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: is not empty and holds no traces ({MANIFEST} missing); name a new directory")
    out.mkdir(parents=True, exist_ok=True)
    return {"format": FORMAT, "settings": settings, "shards": {}}
