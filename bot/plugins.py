"""The plugin manager: built-in family plugins and third-party ones, loaded the same way.

Built-ins live in ``plugins/``; third-party packages expose a module in the entry-point
group ``modelbot.plugins``. Each is imported, registered with pluggy and asked for its
backends through the ``register_backends`` hook. A plugin that fails at any step is logged
and skipped: one broken plugin never takes the bot down.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Callable

import pluggy

from bot import hookspecs
from bot.backend import FamilyBackend

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "modelbot.plugins"
BUILTIN_PLUGINS = ("plugins.llama", "plugins.phi3", "plugins.gemma", "plugins.mistral", "plugins.qwen2")


@dataclass
class PluginFailure:
    plugin: str
    reason: str


@dataclass
class BackendRegistry:
    """The backends every loaded plugin registered, in registration order."""

    backends: dict[str, FamilyBackend] = field(default_factory=dict)
    #: backend name -> the plugin (module or entry point) that registered it
    owners: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

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


def _load_one(manager, registry: BackendRegistry, plugin_name: str, loader: Callable[[], object]) -> None:
    plugin = None
    registered: list[FamilyBackend] = []
    try:
        plugin = loader()
        manager.register(plugin, name=plugin_name)
        # Ask only this plugin, so that each backend is attributed to the plugin that made it.
        others = [p for p in manager.get_plugins() if p is not plugin]
        manager.subset_hook_caller("register_backends", remove_plugins=others)(register=registered.append)
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
