"""The plugin manager: built-in plugins and third-party ones, loaded the same way.

Built-in families live in ``plugins/``, built-in engines in ``bot/engines/``; third-party
packages expose a module in the entry-point group ``modelbot.plugins``. Each is imported,
registered with pluggy and asked for its family backends (``register_backends``) and its
engines (``register_engines``). A plugin that fails at any step is logged and skipped: one
broken plugin never takes the bot down.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Callable

import pluggy

from bot import hookspecs
from bot.backend import FamilyBackend

if TYPE_CHECKING:
    from bot.engines import EngineType

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "modelbot.plugins"
BUILTIN_PLUGINS = ("plugins.llama", "plugins.phi3", "plugins.gemma", "plugins.mistral", "plugins.qwen2",
                   "bot.engines.local", "bot.engines.openai")


@dataclass
class PluginFailure:
    plugin: str
    reason: str


@dataclass
class BackendRegistry:
    """The backends and engines every loaded plugin registered, in registration order."""

    backends: dict[str, FamilyBackend] = field(default_factory=dict)
    #: backend name -> the plugin (module or entry point) that registered it
    owners: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    engines: dict[str, "EngineType"] = field(default_factory=dict)
    #: engine name -> the plugin that registered it
    engine_owners: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> FamilyBackend | None:
        return self.backends.get(name)

    def find(self, model_type: str | None, source: str) -> FamilyBackend | None:
        """The first backend that recognises a model by model_type, else by source name."""
        for backend in self.backends.values():
            if backend.handles(model_type, source):
                return backend
        if model_type:  # an unfamiliar model_type: fall back to the name patterns
            for backend in self.backends.values():
                if backend.handles(None, source):
                    return backend
        return None


def load_plugins(
    extra: dict[str, Callable[[], object]] | None = None, *, use_entry_points: bool = True
) -> BackendRegistry:
    """Load built-in plugins, entry-point plugins and `extra` (name -> loader), in that order."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = BackendRegistry()

    loaders: dict[str, Callable[[], object]] = {
        name: (lambda name=name: importlib.import_module(name)) for name in BUILTIN_PLUGINS
    }
    if use_entry_points:
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            loaders.setdefault(f"{entry_point.name} ({entry_point.value})", entry_point.load)
    loaders.update(extra or {})

    for plugin_name, loader in loaders.items():
        _load_one(manager, registry, plugin_name, loader)
    return registry


@functools.cache
def default_registry() -> BackendRegistry:
    """The built-in and installed plugins, loaded once (config validation asks for engines)."""
    return load_plugins()


def _load_one(manager, registry: BackendRegistry, plugin_name: str, loader: Callable[[], object]) -> None:
    plugin = None
    registered: list[FamilyBackend] = []
    engines: list["EngineType"] = []
    try:
        plugin = loader()
        manager.register(plugin, name=plugin_name)
        # Ask only this plugin, so that each backend is attributed to the plugin that made it.
        others = [p for p in manager.get_plugins() if p is not plugin]
        manager.subset_hook_caller("register_backends", remove_plugins=others)(register=registered.append)
        manager.subset_hook_caller("register_engines", remove_plugins=others)(register=engines.append)
    except Exception as exc:  # noqa: BLE001 - any failure in plugin code is reported, not fatal
        if plugin is not None and manager.is_registered(plugin):
            manager.unregister(plugin)
        log.warning("plugin %s failed to load and is skipped: %s", plugin_name, exc)
        registry.failures.append(PluginFailure(plugin_name, f"{type(exc).__name__}: {exc}"))
        return
    for backend in registered:
        if not isinstance(backend, FamilyBackend) or not backend.name:
            reason = f"registered {backend!r}, which is not a named FamilyBackend"
            log.warning("plugin %s: %s; skipped", plugin_name, reason)
            registry.failures.append(PluginFailure(plugin_name, reason))
            continue
        if backend.name in registry.backends:
            reason = f"backend name {backend.name!r} is already registered by {registry.owners[backend.name]}"
            log.warning("plugin %s: %s; skipped", plugin_name, reason)
            registry.failures.append(PluginFailure(plugin_name, reason))
            continue
        registry.backends[backend.name] = backend
        registry.owners[backend.name] = plugin_name
    for engine in engines:
        _add_engine(registry, plugin_name, engine)


def _add_engine(registry: BackendRegistry, plugin_name: str, engine: "EngineType") -> None:
    from bot.engines import EngineType

    if not isinstance(engine, EngineType) or not engine.name:
        reason = f"registered {engine!r}, which is not a named EngineType"
    elif engine.name in registry.engines:
        reason = f"engine name {engine.name!r} is already registered by {registry.engine_owners[engine.name]}"
    else:
        registry.engines[engine.name] = engine
        registry.engine_owners[engine.name] = plugin_name
        return
    log.warning("plugin %s: %s; skipped", plugin_name, reason)
    registry.failures.append(PluginFailure(plugin_name, reason))
