"""The docs stay true: hook signatures, the CLI reference, and built-ins that state their rule and source."""

import argparse
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import unmask
from unmask.contrib.cli import build_parser
from unmask.core.plugins import Hooks

DOCS = Path(__file__).parents[1] / "docs"


def hook_signature(name: str) -> str:
    signature = inspect.signature(getattr(Hooks, name))
    params = [p for p in signature.parameters.values() if p.name != "self"]
    return f"{name}(" + ", ".join(f"{p.name}: {p.annotation}" for p in params) + f") -> {signature.return_annotation}"


HOOKS = sorted(name for name in vars(Hooks) if name.startswith("unmask_"))


@pytest.mark.parametrize("name", HOOKS)
def test_every_hookspec_is_in_the_hooks_reference_with_its_signature(name):
    assert hook_signature(name) in (DOCS / "hooks.md").read_text()


BUILTINS = [(kind, entry.name) for kind in unmask.registry()._entries
            for entry in unmask.registry().entries(kind) if entry.provider == "unmask"]


@pytest.mark.parametrize("kind, name", BUILTINS)
def test_every_builtin_states_its_rule_and_cites_its_source(kind, name):
    doc = inspect.getdoc(unmask.registry().get(kind, name).factory) or ""
    rule, _, rest = doc.partition("\n\n")
    assert len(rule) > 30, f"{kind} {name}: the first paragraph must state its rule"
    assert "arXiv" in doc or "Source: unmask" in doc, f"{kind} {name}: cite a paper (arXiv) or 'Source: unmask'"


def cli_markdown() -> str:
    """docs/cli.md: every command's help, as ``unmask COMMAND --help`` prints it (width 100)."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    summaries = {action.dest: action.help for action in commands._choices_actions}
    lines = ["# Command line", "", "`unmask COMMAND --help` prints the same text. Component options take specs",
             "(`threshold:tau=0.9`, `topk + threshold`); see [concepts](concepts.md#specs).", ""]
    for name, command in commands.choices.items():
        command.prog = f"unmask {name}"
        command.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        summary = summaries[name][0].upper() + summaries[name][1:]
        lines += [f"## unmask {name}", "", f"{summary}.", "", "```text", command.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def test_cli_reference_matches_the_parser(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert (DOCS / "cli.md").read_text() == cli_markdown(), "regenerate with: python3 tests/test_docs.py"


def test_docs_build_strictly(tmp_path):
    # mkdocs.yml sets strict: a broken link, a missing page or a docstring the API pages cannot
    # render fails the build.
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                           cwd=DOCS.parent, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    assert (tmp_path / "plugins" / "index.html").exists()


if __name__ == "__main__":
    (DOCS / "cli.md").write_text(cli_markdown())
