"""The package's layers: imports run one way, and the light paths import no heavy library."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "unmask"

# What each layer may import of the package (its own layer always); "unmask" is the package root's
# modules (``unmask/__init__``, ``_files``). contrib and the root's façade may import everything.
ALLOWED = {
    "core": set(),
    "strategies": {"core", "filters"},
    "caches": {"core"},
    "constraints": {"core"},
    "filters": {"core", "unmask"},
    "testing": {"core", "strategies", "caches", "filters", "constraints"},
}
HEAVY = ("sklearn", "skops", "reasoning_gym", "matplotlib")


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else "unmask"


def _imports(path: Path) -> set[str]:
    """Every module of the package that ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "unmask" or name.startswith("unmask.")}


def _edges() -> list[tuple[str, str, str]]:
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(("unmask",) + path.relative_to(PACKAGE).with_suffix("").parts)
        for target in _imports(path):
            # "from unmask.filters import features" names a module or an attribute: the layer is the same.
            if target.split(".")[1:2] and not (PACKAGE / target.split(".")[1]).exists():
                continue
            edges.append((str(path.relative_to(PACKAGE.parent)), _layer(module), _layer(target)))
    return edges


def test_the_layer_map_covers_every_subpackage():
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert subpackages == set(ALLOWED) | {"contrib"}


def test_imports_run_one_way():
    wrong = [f"{path}: {source} imports {target}" for path, source, target in _edges()
             if source in ALLOWED and target != source and target not in ALLOWED[source]]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_the_facade():
    """``from unmask import X`` loads the whole façade (engine, registry); inside the package a module imports
    what it needs from where it lives (the version from ``unmask._version``)."""
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.ImportFrom) and node.module == "unmask" else []
            names += [a.name for a in node.names if a.name == "unmask"] if isinstance(node, ast.Import) else []
            wrong += [f"{path.relative_to(PACKAGE.parent)}: {name}" for name in names
                      if name == "unmask" or not (PACKAGE / name).exists() and not (PACKAGE / f"{name}.py").exists()]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_function_level_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from unmask.contrib.models import transformers\n")
    assert _imports(path) == {"unmask.contrib.models", "unmask.contrib.models.transformers"}


@pytest.mark.parametrize("code", [
    "from unmask.contrib.cli import main\ntry:\n    main(['list'])\nexcept SystemExit:\n    pass",
    "from unmask.contrib.cli import main\ntry:\n    main(['generate', 'copy: ada ben', '--policy', 'topk'])\n"
    "except SystemExit:\n    pass",
    "import unmask\nfrom unmask.testing import FakeDenoiser\nunmask.decode(FakeDenoiser(), [[1, 2]], gen_length=8)",
])
def test_light_paths_import_no_heavy_library(code):
    probe = f"{code}\nimport sys\nprint(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_moved_modules_warn_and_give_the_new_module():
    import unmask.contrib.models.transformers as new

    sys.modules.pop("unmask.contrib.transformers", None)
    with pytest.warns(DeprecationWarning, match="moved to unmask.contrib.models.transformers"):
        import unmask.contrib.transformers as old  # noqa: F401
    assert old is new
