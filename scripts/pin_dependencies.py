"""Write constraints.txt: every package that unmask (with all its extras) and the example plug-in need,
directly or through another package, at the version installed in this environment.

Run it after the tests pass on upgraded packages (README, "Upgrading the pins"):

    python3 scripts/pin_dependencies.py > constraints.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata

ROOTS = ("unmask", "unmask-plugin-example")
EXTRAS = ("tasks", "plots", "eval", "docs", "constraints", "serve", "test")
HEADER = """\
# The versions the tests passed with (scripts/pin_dependencies.py writes this file from a tested environment).
# torch is the CPU build that lies on the project's machines; any other torch spec pulls gigabytes of CUDA
# packages."""


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(distribution: metadata.Distribution, extras: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """(name, extras) of what this distribution requires for this platform, with the given extras of its own
    (``lm-eval[api]`` brings the api extra's packages too)."""
    from packaging.requirements import Requirement

    needed = []
    for text in distribution.requires or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in ("",) + extras):
            needed.append((canonical(requirement.name), tuple(sorted(requirement.extras))))
    return needed


def closure() -> dict[str, str]:
    installed = {canonical(d.metadata["Name"]): d for d in metadata.distributions()}
    pinned: dict[str, str] = {}
    seen: set[tuple[str, tuple[str, ...]]] = set()
    pending = [(root, EXTRAS) for root in ROOTS]
    while pending:
        name, extras = pending.pop()
        distribution = installed.get(name)
        if distribution is None:
            sys.exit(f"{name} is required but not installed here; install unmask[{','.join(EXTRAS)}] first")
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        # "==2.13.0" admits the local build "2.13.0+cpu"; the label itself names no index.
        pinned[name] = distribution.version.split("+")[0]
        pending.extend(requirements(distribution, extras))
    return {name: version for name, version in pinned.items() if name not in ROOTS}


def main() -> None:
    print(HEADER)
    for name, version in sorted(closure().items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
