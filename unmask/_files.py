"""Safe writes: write beside the target, then rename, so a killed process leaves nothing half-written; and
never delete or replace what the writing command did not write itself."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

# Written into every output directory: which command wrote it and the entries it wrote there.
MARKER = ".unmask-output.json"


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary)`` with a hidden path in the target's folder (same suffix), then rename it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_atomically(path, lambda temporary: temporary.write_text(text))


def written_by(path: Path) -> dict | None:
    """The marker of an output directory (``command`` and ``entries``), or None if it has none."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def check_output_directory(
    path: str | Path, *, command: str, overwrite: bool = False, inputs: Iterable[str | Path] = (),
    argument: str = "--out",
) -> Path:
    """Refuse an output directory whose replacement would destroy what ``command`` did not write: the
    working directory or one holding it, a directory holding an input, a file, or a non-empty directory
    that is not an earlier output of ``command`` (unless ``overwrite``)."""
    resolved = Path(path).resolve()
    here = Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise ValueError(f"{argument} {path}: is the working directory or holds it; name a new directory")
    for source in inputs:
        source = Path(source).resolve()
        if source == resolved or resolved in source.parents:
            raise ValueError(f"{argument} {path}: holds the input {source}; name a new directory")
    if resolved.exists():
        if not resolved.is_dir():
            raise ValueError(f"{argument} {path}: is a file, not a directory")
        marker = written_by(resolved)
        ours = marker is not None and marker.get("command") == command
        if not ours and not overwrite and any(resolved.iterdir()):
            raise ValueError(f"{argument} {path}: is a non-empty directory that unmask {command} did not write; "
                             "name a new directory or pass --overwrite")
    return resolved


@contextmanager
def staged_directory(
    path: str | Path, *, command: str, overwrite: bool = False, inputs: Iterable[str | Path] = (),
) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``path`` to write into; when the block ends its entries land in
    ``path``, and if the block raises it is removed.

    An absent or empty ``path`` is replaced by one rename. An earlier output of ``command`` loses the entries
    that run wrote (its marker lists them) and nothing else; with ``overwrite``, entries of an unrelated
    directory are replaced only where the new output has the same names.
    """
    path = check_output_directory(path, command=command, overwrite=overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield staging
        entries = sorted(entry.name for entry in staging.iterdir())
        (staging / MARKER).write_text(json.dumps({"command": command, "entries": entries}, indent=2) + "\n")
        # mkdtemp makes the folder private; what is written here is shared (package data, checkpoints).
        staging.chmod(0o755)
        for written in staging.rglob("*"):
            written.chmod(0o755 if written.is_dir() else 0o644)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        if not path.exists():
            os.replace(staging, path)
            return
        marker = written_by(path)
        if marker is not None and marker.get("command") == command:  # an earlier output of this command
            for name in marker.get("entries", []):
                if isinstance(name, str) and "/" not in name and name not in ("", ".", ".."):
                    _remove(path / name)
        for entry in staging.iterdir():
            _remove(path / entry.name)
            os.replace(entry, path / entry.name)
        staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    elif entry.exists() or entry.is_symlink():
        entry.unlink()
