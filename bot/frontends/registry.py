"""Chat frontends by name. `modelbot run` starts the enabled ones and the config accepts a
section for each. A frontend is one module that exposes `FRONTEND`, a FrontendType; the
built-ins are listed here, others come from the `modelbot.frontends` entry-point group
(the entry point names the module). Modules are imported only when their frontend runs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Protocol

ENTRY_POINT_GROUP = "modelbot.frontends"
BUILTIN_FRONTENDS = {"discord": "bot.frontends.discord", "slack": "bot.frontends.slack"}


class Frontend(Protocol):
    async def run(self) -> None:
        """Connect and answer until closed; raise with a clear message if it cannot connect."""

    async def close(self) -> None:
        """End the answers in progress with a notice (unless drain() did), then disconnect."""

    # optional: `async def drain(self, timeout: float) -> None` takes no new questions and ends
    # each answer in progress with the shutdown notice; a stop in order (bot/service.py) calls it
    # before the engines close, and close() after them.


@dataclass(frozen=True)
class FrontendType:
    name: str
    #: the config section -> typed settings; ConfigError naming the key for a bad value
    parse_settings: Callable[[dict[str, Any]], Any]
    #: what running needs that the section may leave out (tokens): ConfigError saying how to set it
    check_ready: Callable[[Any], None]
    #: (host, settings) -> the Frontend
    create: Callable[[Any, Any], Frontend]

    def enabled(self, section: dict[str, Any]) -> bool:
        return bool(getattr(self.parse_settings(section), "enabled", False))


def frontend_modules() -> dict[str, str]:
    """name -> module, built-ins first; cheap: nothing is imported."""
    modules = dict(BUILTIN_FRONTENDS)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        modules.setdefault(entry_point.name, entry_point.value)
    return modules


def frontend_names() -> list[str]:
    return list(frontend_modules())


def load_frontend(name: str) -> FrontendType:
    modules = frontend_modules()
    if name not in modules:
        raise KeyError(name)
    frontend = getattr(importlib.import_module(modules[name]), "FRONTEND", None)
    if not isinstance(frontend, FrontendType):
        raise TypeError(f"frontend module {modules[name]} has no FRONTEND (a bot.frontends.registry.FrontendType)")
    return frontend
