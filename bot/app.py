"""Wiring: settings -> plugins, catalog, store, engines and host, and their orderly shutdown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bot.catalog import ModelCatalog
from bot.config import Settings
from bot.engines import EngineContext
from bot.engines.router import Engines
from bot.host import Host
from bot.plugins import BackendRegistry, load_plugins
from bot.store import Store

if TYPE_CHECKING:
    from bot.health_server import HealthServer
    from bot.metrics import Metrics


@dataclass
class App:
    settings: Settings
    registry: BackendRegistry
    catalog: ModelCatalog
    store: Store
    engines: Engines
    host: Host
    metrics: Metrics | None = None  # the config's `metrics:` is set (the endpoint: bot/health_server.py)
    health_server: HealthServer | None = None  # `modelbot run` with metrics: /metrics /healthz /readyz

    @property
    def worker(self):
        """The in-process (local) engine, where one serves a configured model; None otherwise."""
        return self.engines.of_kind("local")

    async def close(self) -> None:
        if self.health_server is not None:  # last of the frontends' connections: probes say "down" from here
            await self.health_server.close()
        await self.engines.close()
        self.store.close()


def stats_path(settings: Settings) -> Path:
    """Where a running bot leaves its /stats snapshot for `modelbot stats`."""
    return settings.store_path.with_name(settings.store_path.name + ".stats.json")


def build_app(settings: Settings, registry: BackendRegistry | None = None, *, service: bool = False) -> App:
    """Must be called with an event loop running (engines hand tokens to it).

    service: this is the bot serving the store (`modelbot run`, `modelbot console`): it takes
    the store's lock (a second bot on the same store is refused) and keeps the stats file
    for `modelbot stats`; one-off commands (`ask`, `layers`) do neither."""
    registry = registry or load_plugins()
    catalog = ModelCatalog(settings, registry)
    store = Store(settings.store_path, exclusive=service)
    engines = Engines.build(EngineContext(settings, catalog), registry.engines,
                            stats_path=stats_path(settings) if service else None)
    host = Host(settings, catalog, store, engines)
    if settings.metrics is not None:
        from bot.metrics import Metrics  # prometheus_client only when metrics are on

        host.metrics = Metrics(engines)
    return App(settings, registry, catalog, store, engines, host, host.metrics)
