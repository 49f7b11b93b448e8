"""The built-in `local` engine: the in-process worker (bot/worker/), registered through the
same hook as any third-party engine."""

from __future__ import annotations

from typing import Any

from bot.engines import Engine, EngineContext, EngineType
from bot.hookspecs import hookimpl


def _parse_options(entry: dict[str, Any], where: str) -> None:
    return None  # the local engine's keys (quantization, trust_remote_code) are every model's


def _create(context: EngineContext, specs: list) -> dict[str, Engine]:
    from bot.worker import Worker

    worker = Worker(context.catalog, context.settings.worker, max_resident=context.settings.max_resident_models)
    return {spec.name: worker for spec in specs}


LOCAL = EngineType(name="local", parse_options=_parse_options, option_keys=frozenset(), create=_create)


@hookimpl
def register_engines(register):
    register(LOCAL)
