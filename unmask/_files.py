"""Safe writes: write beside the target, then rename, so a killed process leaves nothing half-written; never
delete or replace what the writing command did not write itself (its marker holds the hash of every entry it
wrote, and only entries that still match are its own); and reads of damaged files that name the file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

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


def read_json(path: str | Path, *, what: str = "a JSON file") -> Any:
    """Parse a JSON file; a missing, unreadable, non-UTF-8 or malformed file is a ValueError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file ({what})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({what}): {error}") from None
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({what}): {error}") from None


def read_text(path: str | Path, *, what: str = "a text file") -> str:
    """A UTF-8 text file; a non-UTF-8 one is a ValueError naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({what}): {error}") from None


def read_safetensors(path: str | Path, *, what: str = "tensors") -> dict[str, Any]:
    """All tensors of a safetensors file; a missing, truncated or corrupt one is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    try:
        return load_file(path)
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path}: not a readable safetensors file ({what}): {error}") from None


def digest(entry: Path) -> str:
    """sha256 of a file's bytes, or of a directory's relative paths and file digests (symlinks by target)."""
    hasher = hashlib.sha256()
    if entry.is_symlink():
        hasher.update(b"link:" + os.readlink(entry).encode())
    elif entry.is_dir():
        for child in sorted(entry.rglob("*")):
            if child.is_file() or child.is_symlink():
                hasher.update(f"{child.relative_to(entry)}:{digest(child)}\n".encode())
    else:
        with open(entry, "rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                hasher.update(chunk)
    return hasher.hexdigest()


def proven_entries(path: Path, marker: dict | None) -> set[str]:
    """The entries of ``path`` that its marker lists with the hash they still have: what the command that
    wrote the marker can prove it wrote. A forged or stale marker proves nothing about other files."""
    entries = (marker or {}).get("entries")
    if not isinstance(entries, dict):
        return set()
    return {name for name, recorded in entries.items()
            if isinstance(name, str) and isinstance(recorded, str) and name not in ("", ".", "..", MARKER)
            and "/" not in name and (path / name).exists() and digest(path / name) == recorded}


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
        if not overwrite and _unproven(resolved, command):
            raise ValueError(f"{argument} {path}: is a non-empty directory that unmask {command} did not write "
                             f"(or that changed since: {', '.join(_unproven(resolved, command)[:3])}); "
                             "name a new directory or pass --overwrite")
    return resolved


def _unproven(path: Path, command: str) -> list[str]:
    """Entries of ``path`` that no marker of ``command`` proves it wrote (the marker itself aside)."""
    marker = written_by(path)
    proven = proven_entries(path, marker) if marker is not None and marker.get("command") == command else set()
    return sorted(entry.name for entry in path.iterdir() if entry.name != MARKER and entry.name not in proven)


@contextmanager
def staged_directory(
    path: str | Path, *, command: str, overwrite: bool = False, inputs: Iterable[str | Path] = (),
) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``path`` to write into; when the block ends its entries land in
    ``path``, and if the block raises it is removed.

    An absent or empty ``path`` is replaced by one rename. An earlier output of ``command`` loses the entries
    that run wrote (its marker lists them with their hashes, and they still match) and nothing else; with
    ``overwrite``, entries of any other directory are replaced only where the new output has the same names.
    """
    path = check_output_directory(path, command=command, overwrite=overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield staging
        entries = {entry.name: digest(entry) for entry in sorted(staging.iterdir())}
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
            proven = proven_entries(path, marker)
            if not overwrite and _unproven(path, command):  # changed while this command ran
                raise ValueError(f"{path}: changed while unmask {command} ran; nothing was replaced")
            for name in proven:
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
