"""The content split: every prompt of a task belongs to one part, ``"train"`` or ``"eval"``, fixed by a hash of
the task's name and the prompt's text, so a prompt the bundled model or a filter was trained on is never
evaluated, whatever seeds either side uses.

``EVAL_SHARE`` (a quarter) of each task's prompt space is the evaluation part. The hash is SHA-256, not
Python's ``hash``: the parts must not change between processes, machines or Python versions.
"""

from __future__ import annotations

import hashlib
from typing import Literal

__all__ = ["EVAL_SHARE", "PARTS", "Part", "split_of", "check_part"]

Part = Literal["train", "eval"]
PARTS: tuple[Part, ...] = ("train", "eval")
EVAL_SHARE = 0.25


def split_of(task: str, prompt: str) -> Part:
    """The part of ``task``'s prompt space that ``prompt`` belongs to: ``"train"`` or ``"eval"``."""
    if not isinstance(task, str) or not isinstance(prompt, str):
        raise TypeError(f"split_of takes the task's name and the prompt as strings, got {type(task).__name__} and "
                        f"{type(prompt).__name__}")
    digest = hashlib.sha256(f"unmask-split\0{task}\0{prompt}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") < EVAL_SHARE * 2**64 else "train"


def check_part(part: str) -> Part:
    if part not in PARTS:
        raise ValueError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    return part  # type: ignore[return-value]
