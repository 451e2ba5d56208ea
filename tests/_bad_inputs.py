"""Helpers of the bad-input tests (test_bad_*.py): running the CLI, and damaging files the way a careless user
or an attacker does."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import torch

from unmask.contrib.cli import main
from unmask.contrib.models.reference import FILTERS_DIR, REFERENCE_MODEL_DIR


GENERATE = ["generate", "3 + 5 ="]


def run_cli(argv, capsys):
    try:
        status = main([str(a) for a in argv])
    except SystemExit as stop:
        status = stop.code
    return status, capsys.readouterr().err


def assert_one_line_error(argv, expected, capsys):
    status, err = run_cli(argv, capsys)
    assert status == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err


def crafted_skops(path: Path, marker: Path) -> Path:
    """A skops file whose root is ``builtins.eval`` called on a string that would write ``marker``."""
    import skops.io

    payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"
    with zipfile.ZipFile(io.BytesIO(skops.io.dumps((payload,)))) as archive:
        arguments = json.loads(archive.read("schema.json"))
    schema = {"__class__": "eval", "__module__": "builtins", "__loader__": "ConstructorFromReduceNode",
              "content": {k: v for k, v in arguments.items() if k not in ("protocol", "_skops_version")},
              "protocol": arguments["protocol"], "_skops_version": arguments["_skops_version"]}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
    return path


def copy_filter(name: str, target: Path) -> Path:
    shutil.copytree(FILTERS_DIR / name, target)
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


GRID = {"name": "g", "tasks": ["chain_sum"], "n": 2, "seed": 0, "gen_lengths": [16], "block_length": 16,
        "policies": ["topk"], "stops": ["none"], "caches": ["none"], "batch_size": 2}


def model_dir(tmp_path: Path, damage) -> Path:
    target = shutil.copytree(REFERENCE_MODEL_DIR, tmp_path / "model", ignore=shutil.ignore_patterns("filters"))
    damage(target)
    return target


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def filter_dir(tmp_path: Path, kind: str, damage) -> Path:
    target = copy_filter(kind, tmp_path / f"{kind}-filter")
    damage(target)
    return target


def header_without(key):
    def damage(folder: Path) -> None:
        header = json.loads((folder / "filter.json").read_text())
        del header[key]
        (folder / "filter.json").write_text(json.dumps(header))
    return damage


def mlp_weights(change):
    def damage(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "weights.safetensors")
        save_file(change(weights), folder / "weights.safetensors")
    return damage


def progress(training_config, **change):
    import random

    from attrs import asdict

    progress = {"config": json.loads(json.dumps(asdict(training_config))), "step": 1, "log": [], "running": None,
                "elapsed_s": 0.0, "rng": json.loads(json.dumps(random.Random(0).getstate()))}
    progress.update(change)
    return {k: v for k, v in progress.items() if v is not DROP}


DROP = object()


def write_progress(checkpoint, **change):
    from unmask.contrib.train.model import TrainingConfig

    (checkpoint / "progress.json").write_text(json.dumps(progress(TrainingConfig(), **change)))


def save_state(checkpoint, tensors):
    from safetensors.torch import save_file

    save_file({"generator": torch.Generator().get_state(), **tensors}, checkpoint / "state.safetensors")


def traces_copy(traces, tmp_path, damage):
    target = shutil.copytree(traces, tmp_path / "damaged")
    damage(target)
    return target


def manifest(change):
    def damage(folder):
        manifest = json.loads((folder / "manifest.json").read_text())
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return damage


def first_shard(folder):
    return next(p for p in sorted(folder.iterdir()) if p.suffix == ".safetensors")


def shard_without_labels(folder):
    from safetensors.torch import load_file, save_file

    shard = first_shard(folder)
    tensors = load_file(shard)
    del tensors["labels"]
    save_file(tensors, shard)


def llada_source(tmp_path, damage):
    from safetensors.torch import save_file

    source = tmp_path / "llada"
    source.mkdir()
    config = {"d_model": 8, "mlp_hidden_size": 16, "n_layers": 1, "n_heads": 2, "vocab_size": 32, "mask_token_id": 31,
              "eos_token_id": 30}
    (source / "config.json").write_text(json.dumps(config))
    save_file({"model.transformer.wte.weight": torch.zeros(32, 8)}, source / "model.safetensors")
    damage(source)
    return source


def outside_link(source):
    secret = source.parent / "secret.txt"
    secret.write_text("not part of the checkpoint")
    (source / "tokenizer.json").symlink_to(secret)


def tiny_dir(tmp_path, **config_change):
    from unmask.contrib.models.tiny import save_tiny

    directory = save_tiny("llama", tmp_path / "tiny")
    config = json.loads((directory / "config.json").read_text())
    config.update(config_change)
    (directory / "config.json").write_text(json.dumps(config))
    return directory


def mlp_header(change):
    def damage(folder: Path) -> None:
        header = json.loads((folder / "filter.json").read_text())
        change(header)
        (folder / "filter.json").write_text(json.dumps(header))
    return damage


def inflating_skops(folder: Path) -> None:
    with zipfile.ZipFile(folder / "model.skops", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("schema.json", "{}")
        archive.writestr("big.bin", bytes(100 * 2**20))
