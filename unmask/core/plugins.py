"""The plug-in manager (pluggy) and the registry of named components.

Every component kind has one registration hook, handed a :class:`Registrar`. Built-ins register exactly
as third-party packages do: modules with hook implementations, named in ``[project.entry-points.unmask]``
of their distribution's pyproject.toml.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import attrs
import pluggy
import torch
from attrs import frozen

from unmask.core.component import ABILITIES, Component
from unmask.core.spec import SpecError, parse_spec, split_combined
from unmask.core.types import Commit, StepView

__all__ = [
    "hookimpl", "hookspec", "KINDS", "Entry", "Registrar", "Registry", "DuplicateComponentError",
    "plugin_manager", "register_plugin", "unregister_plugin", "registry", "create", "describe", "Declared",
    "declared", "COMPONENTS", "ROLES",
]

PROJECT = "unmask"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# kind -> (registration hook, combinator that "a + b" builds)
KINDS: dict[str, tuple[str, str | None]] = {
    "policies": ("unmask_register_policies", "union"),
    "stops": ("unmask_register_stops", "any"),
    "caches": ("unmask_register_caches", None),
    "constraints": ("unmask_register_constraints", None),
    "filters": ("unmask_register_filters", None),
    "trained_filters": ("unmask_register_trained_filters", None),
    "features": ("unmask_register_features", None),
    "models": ("unmask_register_models", None),
}

# What an object passed instead of a spec must have, per kind.
# The kinds whose components the engine runs, each with the abilities of Component, by the role each plays in
# a decode (decode's arguments and the keys of DecodeResult.components).
ROLES = {"policy": "policies", "stop": "stops", "cache": "caches", "constraint": "constraints"}
COMPONENTS = tuple(ROLES.values())
REQUIRED_METHODS: dict[str, tuple[str, ...]] = {
    "policies": ("select",), "stops": ("check",), "caches": ("reset", "plan"),
    "constraints": ("prepare", "allowed", "refuse"),
    "filters": ("fit", "predict_proba"),
}


class Hooks:
    """The hook specifications; a plug-in implements any subset with ``@unmask.hookimpl``."""

    @hookspec
    def unmask_register_policies(self, registry: Registrar) -> None:
        """Add unmask policies: ``registry.add(name, factory)``; the factory returns an ``UnmaskPolicy``."""

    @hookspec
    def unmask_register_stops(self, registry: Registrar) -> None:
        """Add stop criteria: ``registry.add(name, factory)``; the factory returns a ``StopCriterion``."""

    @hookspec
    def unmask_register_caches(self, registry: Registrar) -> None:
        """Add KV-cache managers: ``registry.add(name, factory)``; the factory returns a ``CacheManager``."""

    @hookspec
    def unmask_register_constraints(self, registry: Registrar) -> None:
        """Add structured-output constraints: ``registry.add(name, factory)``; the factory returns a
        ``Constraint``."""

    @hookspec
    def unmask_register_filters(self, registry: Registrar) -> None:
        """Add Learn2PD filters: ``registry.add(name, estimator_class)``, scikit-learn style estimators."""

    @hookspec
    def unmask_register_trained_filters(self, registry: Registrar) -> None:
        """Add trained Learn2PD filters by name: ``registry.add(name, loader)``; the loader takes no
        arguments and returns a ``TrainedFilter`` (``learn2pd:filter=NAME``)."""

    @hookspec
    def unmask_register_features(self, registry: Registrar) -> None:
        """Add feature sets: ``registry.add(name, factory)``; the factory returns a callable from
        ``BlockStats`` to (N, W, F) features."""

    @hookspec
    def unmask_register_models(self, registry: Registrar) -> None:
        """Add model loaders: ``registry.add(name, loader)``; the loader returns a ``DenoiserModel``."""

    @hookspec
    def unmask_on_step(self, view: StepView) -> None:
        """Observe every decoding step, after commits (``view.committed`` is set). Must not mutate it."""


class DuplicateComponentError(ValueError):
    """Two providers registered the same name for the same kind."""


@frozen(kw_only=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    provider: str
    version: str
    # Builds an instance for contract checks when the factory has required arguments.
    example: Callable[..., Any] | None = None

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.split("\n\n")[0].replace("\n", " ")

    def parameters(self) -> dict[str, inspect.Parameter]:
        return dict(inspect.signature(self.factory).parameters)


class Registrar:
    """Handed to a registration hook: ``registry.add(name, factory, example=None)``."""

    def __init__(self, registry: Registry, kind: str, provider: str, version: str) -> None:
        self._registry, self.kind, self.provider, self.version = registry, kind, provider, version

    def add(self, name: str, factory: Callable[..., Any], *, example: Callable[..., Any] | None = None) -> None:
        # Hyphens read well in model names (reference-block) and no spec syntax uses them.
        if not (name.replace("-", "_").isidentifier() and name[0] != "-"):
            raise ValueError(f"component name {name!r} from {self.provider} must be an identifier (hyphens allowed "
                             "after the first character)")
        entry = Entry(
            kind=self.kind, name=name, factory=factory, provider=self.provider, version=self.version,
            example=example,
        )
        self._registry.add(entry)


class Registry:
    """Named components of every kind, with the distribution that provides each."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

    def add(self, entry: Entry) -> None:
        existing = self._entries[entry.kind].get(entry.name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{entry.kind} name {entry.name!r} is registered twice: by {existing.provider} "
                f"{existing.version} and by {entry.provider} {entry.version}".replace("  ", " ")
            )
        self._entries[entry.kind][entry.name] = entry

    def names(self, kind: str) -> list[str]:
        return sorted(self._kind(kind))

    def entries(self, kind: str) -> list[Entry]:
        return [self._kind(kind)[name] for name in self.names(kind)]

    def get(self, kind: str, name: str) -> Entry:
        entries = self._kind(kind)
        if name not in entries:
            raise SpecError(f"unknown {kind} name {name!r}; registered: {', '.join(sorted(entries)) or 'none'}")
        return entries[name]

    def create(self, kind: str, spec: Any) -> Any:
        """Build a component from a spec: an instance, a string, or ``(name, params)``. One whose class does not
        derive from ``Component``, or a policy whose ``select`` is not declared to return a ``Commit``, comes
        back adapted (:class:`Declared`)."""
        component = self._create(kind, spec)
        return declared(component, kind=kind) if kind in COMPONENTS else component

    def _create(self, kind: str, spec: Any) -> Any:
        if isinstance(spec, str):
            parts = split_combined(spec)
            if len(parts) > 1:
                combinator = KINDS[kind][1]
                if combinator is None:
                    raise SpecError(f"{kind} cannot be combined with '+': {spec!r}")
                return self.create(kind, (combinator, {_first_param(self.get(kind, combinator)): parts}))
            spec = parse_spec(spec)
        if not isinstance(spec, tuple):
            needed = REQUIRED_METHODS.get(kind)
            if needed and not all(callable(getattr(spec, method, None)) for method in needed):
                raise SpecError(f"{kind[:-1] if kind != 'policies' else 'policy'} must be a spec string such as "
                                f"'{next(iter(self.names(kind)), 'name')}' or an object with "
                                f"{', '.join(needed)}(), got {spec!r}")
            return spec
        if len(spec) != 2 or not isinstance(spec[0], str) or not isinstance(spec[1], dict):
            raise SpecError(f"a {kind} spec tuple must be (name, params dict), got {spec!r}")
        name, params = spec
        entry = self.get(kind, name)
        accepted = entry.parameters()
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        unknown = sorted(set(params) - set(accepted))
        if unknown and not takes_any:
            raise SpecError(
                f"{kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"it accepts: {', '.join(accepted) or 'no parameters'}"
            )
        try:
            return entry.factory(**params)
        except (TypeError, ValueError) as error:
            raise SpecError(f"{kind} {name!r} with {params}: {error}") from error

    def describe(self, kind: str, component: Any) -> dict[str, Any]:
        """The name, parameters and provider of a component, for result records."""
        if type(component) is Declared:
            component = component.component
        entry = next((e for e in self._kind(kind).values() if e.factory is type(component)), None)
        params = {}
        if attrs.has(type(component)):
            params = {
                a.name: _describe_value(self, kind, getattr(component, a.name))
                for a in attrs.fields(type(component)) if a.init
            }
        if entry is None:
            cls = type(component)
            return {"name": f"{cls.__module__}.{cls.__qualname__}", "params": params, "provider": None, "version": None}
        return {"name": entry.name, "params": params, "provider": entry.provider, "version": entry.version}

    def _kind(self, kind: str) -> dict[str, Entry]:
        if kind not in self._entries:
            raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        return self._entries[kind]


class Declared(Component):
    """A component of a class that does not derive from :class:`~unmask.core.component.Component` (a plug-in
    written against the protocols alone), adapted once, when it is created: it keeps each ability it has and
    takes the defaults of the others. A policy whose ``select`` is not declared to return a ``Commit`` (a
    bool mask) decides ``Commit.of(mask, view)``. Every other attribute is the component's own."""

    def __init__(self, component: Any, *, masks: bool = False) -> None:
        self.__dict__["component"], self.__dict__["masks"] = component, masks
        for name in ABILITIES:  # the one place a component's abilities are looked up by name
            if name != "provide" and hasattr(component, name):
                self.__dict__[name] = getattr(component, name)

    def select(self, view: StepView) -> Commit:
        decision = self.component.select(view)
        return Commit.of(decision, view) if self.masks and not isinstance(decision, Commit) else decision

    def provide(self, **values: Any) -> Any:
        provided = self.component.provide(**values) if hasattr(self.component, "provide") else self.component
        return declared(provided, masks=self.masks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["component"], name)

    def __repr__(self) -> str:
        return repr(self.component)


def declared(component: Any, *, kind: str | None = None, masks: bool | None = None) -> Any:
    """``component`` with every ability of :class:`Component` declared: as it is where its class derives from
    it (and, for a policy, declares ``def select(self, view) -> Commit``), else adapted (:class:`Declared`)."""
    if isinstance(component, Declared):
        return component
    if masks is None:
        masks = kind == "policies" and not _returns_commit(component)
    return component if isinstance(component, Component) and not masks else Declared(component, masks=masks)


def _returns_commit(component: Any) -> bool:
    returns = inspect.getattr_static(type(component), "select", None)
    returns = getattr(returns, "__annotations__", {}).get("return")
    return returns is Commit or (isinstance(returns, str) and returns.split(".")[-1] == "Commit")


def _first_param(entry: Entry) -> str:
    return next(iter(entry.parameters()))


def _describe_value(registry: Registry, kind: str, value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={list(value.shape)}, dtype={value.dtype})"
    if isinstance(value, (list, tuple)):
        return [_describe_value(registry, kind, v) for v in value]
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    if attrs.has(type(value)):
        return registry.describe(kind, value)
    return repr(value)


_manager: pluggy.PluginManager | None = None
_registry: Registry | None = None


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plug-in manager: every installed entry point of group ``unmask``, built-ins included."""
    global _manager
    if _manager is None:
        manager = pluggy.PluginManager(PROJECT)
        manager.add_hookspecs(Hooks)
        manager.load_setuptools_entrypoints(PROJECT)
        _manager = manager
    return _manager


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a plug-in object (module or instance with hookimpls) at run time."""
    global _registry
    plugin_manager().register(plugin, name=name)
    _registry = None


def unregister_plugin(plugin: object) -> None:
    global _registry
    plugin_manager().unregister(plugin)
    _registry = None


def registry() -> Registry:
    """The registry built from every plug-in's registration hooks (rebuilt when plug-ins change)."""
    global _registry
    if _registry is None:
        manager = plugin_manager()
        provenance = _provenance(manager)
        built = Registry()
        for kind, (hook_name, _) in KINDS.items():
            for impl in getattr(manager.hook, hook_name).get_hookimpls():
                provider, version = provenance(impl.plugin)
                registrar = Registrar(built, kind, provider, version)
                impl.function(**{arg: registrar for arg in impl.argnames})
        _registry = built
    return _registry


def create(kind: str, spec: Any) -> Any:
    return registry().create(kind, spec)


def describe(kind: str, component: Any) -> dict[str, Any]:
    return registry().describe(kind, component)


def _provenance(manager: pluggy.PluginManager) -> Callable[[object], tuple[str, str]]:
    distributions = {id(plugin): dist for plugin, dist in manager.list_plugin_distinfo()}

    def provider_of(plugin: object) -> tuple[str, str]:
        name = manager.get_name(plugin) or repr(plugin)
        dist = distributions.get(id(plugin))
        if dist is not None:
            return dist.project_name, dist.version
        return name, ""

    return provider_of
