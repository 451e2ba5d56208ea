import json
import os
import subprocess
import sys
import textwrap

import attrs
import pytest
import torch

import unmask
from unmask.contrib.cli import main
from unmask.core.plugins import DuplicateComponentError
from unmask.testing import check_unmask_policy


@attrs.frozen
class LeftmostPolicy:
    """Commit the leftmost masked position of the block (autoregressive order)."""

    def select(self, view):
        first = view.candidates.long().argmax(1)
        commit = torch.zeros_like(view.candidates)
        commit[torch.arange(len(first)), first] = True
        return commit & view.candidates


class LeftmostPlugin:
    @unmask.hookimpl
    def unmask_register_policies(self, registry):
        registry.add("leftmost", LeftmostPolicy)


class ShadowsTopK:
    @unmask.hookimpl
    def unmask_register_policies(self, registry):
        registry.add("topk", LeftmostPolicy)


@pytest.fixture
def leftmost():
    plugin = LeftmostPlugin()
    unmask.register_plugin(plugin, name="leftmost-plugin")
    yield plugin
    unmask.unregister_plugin(plugin)


def test_runtime_plugin_is_listed_and_decodes(leftmost, model, capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["policies"]["leftmost"]["provider"] == "leftmost-plugin"
    result = unmask.decode(model, [[1, 2]], gen_length=8, policy="leftmost")
    assert result.commit_step[0].tolist() == list(range(8))  # left to right
    assert result.components["policy"]["provider"] == "leftmost-plugin"
    check_unmask_policy("leftmost", max_examples=10)


def test_unregistering_removes_the_component(leftmost):
    unmask.unregister_plugin(leftmost)
    assert "leftmost" not in unmask.registry().names("policies")
    unmask.register_plugin(leftmost, name="leftmost-plugin")  # for the fixture's teardown


def test_duplicate_names_fail_naming_both_providers():
    plugin = ShadowsTopK()
    unmask.register_plugin(plugin, name="shadow-plugin")
    try:
        with pytest.raises(DuplicateComponentError, match="'topk'.*unmask.*shadow-plugin"):
            unmask.registry()
    finally:
        unmask.unregister_plugin(plugin)
    assert unmask.registry().get("policies", "topk").provider == "unmask"


@pytest.mark.parametrize("name", ["-lead", "two words", "a:b", "9lives", ""])
def test_component_names_are_identifiers_with_inner_hyphens(name):
    from unmask.core.plugins import Registrar, Registry

    registrar = Registrar(Registry(), "models", "a-plugin", "1.0")
    registrar.add("hyphen-ated_name2", LeftmostPolicy)
    with pytest.raises(ValueError, match="must be an identifier"):
        registrar.add(name, LeftmostPolicy)


def test_spec_errors_list_what_exists():
    with pytest.raises(unmask.SpecError, match="unknown policies name 'nope'; registered: .*threshold"):
        unmask.create("policies", "nope")
    with pytest.raises(unmask.SpecError, match="must look like key=value"):
        unmask.create("policies", "threshold:0.9")
    with pytest.raises(unmask.SpecError, match="caches cannot be combined"):
        unmask.create("caches", "none + none")


def test_spec_values_are_typed():
    assert unmask.parse_spec("x:a=1,b=0.5,c=true,d=none,e=path/to/f") == (
        "x", {"a": 1, "b": 0.5, "c": True, "d": None, "e": "path/to/f"})


PLUGIN_PACKAGE = {
    "pyproject.toml": """
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "unmask-tmp-plugin"
        version = "0.3.1"

        [project.entry-points.unmask]
        tmp = "unmask_tmp_plugin"
    """,
    "unmask_tmp_plugin.py": '''
        import attrs
        import unmask

        @attrs.frozen
        class HalfThreshold:
            """Commit masked positions of the block above confidence 0.5, and the top-1."""

            def select(self, view):
                return unmask.create("policies", "threshold:tau=0.5").select(view)

        @unmask.hookimpl
        def unmask_register_policies(registry):
            registry.add("half", HalfThreshold)
    ''',
}


def test_entry_point_plugin_from_an_installed_package(tmp_path):
    source, target = tmp_path / "src", tmp_path / "site"
    source.mkdir()
    for name, text in PLUGIN_PACKAGE.items():
        (source / name).write_text(textwrap.dedent(text))
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    listing = subprocess.run(
        [sys.executable, "-m", "unmask.contrib.cli", "list", "--json"], env=env, check=True, capture_output=True, text=True
    )
    entry = json.loads(listing.stdout)["policies"]["half"]
    assert (entry["provider"], entry["version"]) == ("unmask-tmp-plugin", "0.3.1")
    decoding = subprocess.run(
        [sys.executable, "-c", "import unmask; from unmask.testing import FakeDenoiser; "
         "r = unmask.decode(FakeDenoiser(), [[1, 2]], gen_length=8, policy='half'); "
         "print(r.components['policy']['provider'], int(r.nfe[0]))"],
        env=env, check=True, capture_output=True, text=True,
    )
    provider, nfe = decoding.stdout.split()
    assert provider == "unmask-tmp-plugin" and 1 <= int(nfe) < 8


@attrs.frozen
class CopiesVanillaPolicy:
    """A plug-in that needs the vanilla output of its prompts (as the oracle does), asked for by name."""

    reference: object = attrs.field(default=None, eq=False)
    seen_model: str | None = None

    def requirements(self):
        return {"reference", "model_sha256"} if self.reference is None else set()

    def provide(self, reference, model_sha256):
        return CopiesVanillaPolicy(reference=reference, seen_model=model_sha256)

    def select(self, view):
        assert self.seen_model and self.reference.shape[0] == view.x.shape[0]
        target = view.x0.clone()
        target[:, view.gen_start:] = self.reference[:, :view.x.shape[1] - view.gen_start]
        return unmask.Commit(mask=view.candidates & (view.x0 == target), tokens=target)


class CopiesVanillaPlugin:
    @unmask.hookimpl
    def unmask_register_policies(self, registry):
        registry.add("copies_vanilla", CopiesVanillaPolicy)


def test_a_plugin_gets_what_it_requires_from_the_runner_alone_and_inside_a_union(capsys):
    """The runner knows no plug-in by class: it asks ``requirements()`` and hands over what is named, also to a
    member of ``a + b``; a command that cannot provide it says which need it lacks."""
    plugin = CopiesVanillaPlugin()
    unmask.register_plugin(plugin, name="copies-vanilla")
    try:
        arguments = ["bench", "--tasks", "sort", "--n", "4", "--gen-length", "16", "--block-length", "16",
                     "--stop", "none", "--json"]
        assert main([*arguments, "--policy", "topk", "--policy", "copies_vanilla",
                     "--policy", "copies_vanilla + threshold:tau=1"]) == 0
        rows = json.loads(capsys.readouterr().out)
        accuracy = {row["policy"]: row["accuracy"] for row in rows}
        assert accuracy["copies_vanilla"] == accuracy["copies_vanilla + threshold:tau=1"] == accuracy["topk"]
        assert main(["generate", "--gen-length", "16", "--policy", "copies_vanilla", "sort: ada ben"]) == 2
        assert "needs reference" in capsys.readouterr().err
    finally:
        unmask.unregister_plugin(plugin)


class PickyPolicy:
    """A policy written against the protocol alone (no Component base): two abilities of its own."""

    reach = "canvas"

    def __init__(self):
        self.checked = []

    def check_config(self, config):
        self.checked.append(config.gen_length)
        if config.gen_length > 8:
            raise ValueError("picky: gen_length at most 8")

    def select(self, view):
        return view.candidates & (view.candidate_confidence == view.candidate_confidence.max(1, keepdim=True).values)


def test_a_component_of_any_class_keeps_its_abilities_and_takes_the_defaults(model):
    """``unmask.create`` adapts a component that does not derive from Component once: the engine reads its
    own abilities (reach, check_config) and the defaults of the others, and its bool mask becomes a Commit."""
    from unmask.core.component import Component

    created = unmask.create("policies", PickyPolicy())
    assert isinstance(created, Component) and created.reach == "canvas"
    assert created.requirements() == set() and created.artefact_sha256 is None and not created.stochastic
    assert unmask.describe("policies", created)["name"].endswith("PickyPolicy")
    result = unmask.decode(model, [[5, 6, 7]], gen_length=8, policy=created)
    assert created.checked == [8] and not (result.tokens == model.mask_token_id).any()
    with pytest.raises(ValueError, match="picky: gen_length at most 8"):
        unmask.decode(model, [[5, 6, 7]], gen_length=16, policy=PickyPolicy())
    topk = unmask.create("policies", "topk")
    assert unmask.create("policies", topk) is topk  # a built-in derives from Component: not wrapped
