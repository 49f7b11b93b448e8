"""Wiring: settings -> plugins, catalog, store, engines and host, and their orderly shutdown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.catalog import ModelCatalog
from bot.config import Settings
from bot.engines import EngineContext
from bot.engines.router import Engines
from bot.host import Host
from bot.plugins import BackendRegistry, load_plugins
from bot.store import Store


@dataclass
class App:
    settings: Settings
    registry: BackendRegistry
    catalog: ModelCatalog
    store: Store
    engines: Engines
    host: Host

    @property
    def worker(self):
        """The in-process (local) engine, where one serves a configured model; None otherwise."""
        return self.engines.of_kind("local")

    async def close(self) -> None:
        await self.engines.close()
        self.store.close()


def stats_path(settings: Settings) -> Path:
    """Where a running bot leaves its /stats snapshot for `modelbot stats`."""
    return settings.store_path.with_name(settings.store_path.name + ".stats.json")


def build_app(settings: Settings, registry: BackendRegistry | None = None) -> App:
    """Must be called with an event loop running (engines hand tokens to it)."""
    registry = registry or load_plugins()
    catalog = ModelCatalog(settings, registry)
    store = Store(settings.store_path)
    engines = Engines.build(EngineContext(settings, catalog), registry.engines, stats_path=stats_path(settings))
    return App(settings, registry, catalog, store, engines, Host(settings, catalog, store, engines))
