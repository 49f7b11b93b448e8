"""Wiring: settings -> plugins, catalog, store, worker and host, and their orderly shutdown."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.catalog import ModelCatalog
from bot.config import Settings
from bot.host import Host
from bot.plugins import BackendRegistry, load_plugins
from bot.store import Store
from bot.worker import Worker


@dataclass
class App:
    settings: Settings
    registry: BackendRegistry
    catalog: ModelCatalog
    store: Store
    worker: Worker
    host: Host

    async def close(self) -> None:
        await self.worker.close()
        self.store.close()


def stats_path(settings: Settings) -> Path:
    """Where a running bot leaves its /stats snapshot for `modelbot stats`."""
    return settings.store_path.with_name(settings.store_path.name + ".stats.json")


def build_app(settings: Settings, registry: BackendRegistry | None = None) -> App:
    """Must be called with an event loop running (the worker hands tokens to it)."""
    registry = registry or load_plugins()
    catalog = ModelCatalog(settings, registry)
    store = Store(settings.store_path)
    worker = Worker(catalog, settings.worker, max_resident=settings.max_resident_models,
                    stats_path=stats_path(settings))
    return App(settings, registry, catalog, store, worker, Host(settings, catalog, store, worker))
