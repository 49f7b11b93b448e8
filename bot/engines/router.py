"""Every configured model's engine behind one object: the host submits a job and the router
hands it to the engine that serves its model. It also merges the engines' snapshots for
/stats and leaves them in a small file for `modelbot stats` in another process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from bot.catalog import UnknownModel
from bot.engines import Engine, EngineContext
from bot.generation import GenerationJob, GenerationStream

log = logging.getLogger(__name__)

STATS_WRITE_SECONDS = 2.0


class Engines:
    def __init__(self, by_model: dict[str, Engine], stats_path: Path | None = None):
        self.by_model = by_model
        self.stats_path = stats_path
        self._writer: asyncio.Task | None = None
        self._closed = False
        if stats_path is not None:
            self._writer = asyncio.get_running_loop().create_task(self._write_stats_every(STATS_WRITE_SECONDS))

    @classmethod
    def build(cls, context: EngineContext, engine_types: dict, stats_path: Path | None = None) -> "Engines":
        """One engine (or a shared one) per configured model, made by its engine type."""
        by_model: dict[str, Engine] = {}
        for name, engine_type in engine_types.items():
            specs = [spec for spec in context.settings.models if spec.engine == name]
            if specs:
                by_model.update(engine_type.create(context, specs))
        return cls(by_model, stats_path)

    # -- routing -----------------------------------------------------------------------------
    def for_model(self, model: str) -> Engine:
        engine = self.by_model.get(model)
        if engine is None:
            raise UnknownModel(model, list(self.by_model))
        return engine

    def all(self) -> list[Engine]:
        """Each engine once, in the order of the models they serve."""
        return list({id(engine): engine for engine in self.by_model.values()}.values())

    def of_kind(self, kind: str) -> Engine | None:
        return next((engine for engine in self.all() if engine.kind == kind), None)

    # -- the engine contract, over every engine -------------------------------------------
    def submit(self, job: GenerationJob, progress: Callable[[str], None] | None = None,
               on_position: Callable[[int], None] | None = None) -> GenerationStream:
        return self.for_model(job.model).submit(job, progress, on_position)

    def active_jobs(self, channel: str | None = None) -> list[GenerationStream]:
        return [stream for engine in self.all() for stream in engine.active_jobs(channel)]

    def ready_models(self) -> list[str]:
        return [name for engine in self.all() for name in engine.ready_models()]

    async def preload(self, names: Iterable[str], progress: Callable[[str], None]) -> None:
        """Load each model on its engine before anything asks for it (config `preload:`), with
        one progress line per model. An engine without `preload` (a remote server's) has nothing
        to load; a model that fails to load is reported and loads on first use instead."""
        loaded: list[str] = []
        for name in names:
            engine = self.for_model(name)
            load = getattr(engine, "preload", None)
            if load is None:
                progress(f"preload: {name} runs on the {engine.kind} engine: nothing to load")
                continue
            started = time.monotonic()
            try:
                await load(name)
            except Exception as exc:  # noqa: BLE001 - the bot can still start; the model loads when asked
                log.debug("preloading %s failed", name, exc_info=True)
                progress(f"preload: {name} could not be loaded ({exc}); it will load on first use")
                continue
            progress(f"preload: {name} loaded in {time.monotonic() - started:.1f} s")
            loaded.append(name)
        ready = set(self.ready_models())
        dropped = [name for name in loaded if name not in ready]
        if dropped:
            progress(f"preload: {', '.join(dropped)} did not stay loaded: the memory budget or "
                     "max_resident_models holds fewer models than preload lists")

    @contextmanager
    def reserve(self, user: str, models: Iterable[str]) -> Iterator[None]:
        """While a command runs these models in turn (/compare, /layers), it counts as one request
        of `user` on each engine involved; raises WorkerBusy where the user is at the cap.
        Jobs it submits meanwhile carry `reserved=True`."""
        held: list[Engine] = []
        try:
            for engine in {id(e): e for e in map(self.for_model, models)}.values():
                if hasattr(engine, "reserve"):
                    engine.reserve(user)
                    held.append(engine)
            yield
        finally:
            for engine in held:
                engine.release(user)

    def snapshot(self) -> dict[str, Any]:
        """The local engine's figures at the top level (as /stats always showed them), every
        other engine under "engines"."""
        snapshot: dict[str, Any] = {"pid": os.getpid(), "updated": time.time(), "engines": []}
        for engine in self.all():
            part = engine.snapshot()
            if part.get("kind") == "local" and "device" not in snapshot:
                snapshot.update(part)
            else:
                snapshot["engines"].append(part)
        return snapshot

    async def close(self) -> None:
        """Close every engine once (a stop in order closes them before the app closes)."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
        results = await asyncio.gather(*(engine.close() for engine in self.all()), return_exceptions=True)
        for engine, result in zip(self.all(), results):
            if isinstance(result, Exception):  # one engine failing to close must not keep the others open
                log.error("closing the %s engine failed: %s", engine.kind, result, exc_info=result)
        self.write_stats(final=True)

    # -- the stats file ------------------------------------------------------------------------
    async def _write_stats_every(self, seconds: float) -> None:
        while True:
            self.write_stats()
            await asyncio.sleep(seconds)

    def write_stats(self, final: bool = False) -> None:
        """For `modelbot stats` in another process: a small JSON file next to the store."""
        if self.stats_path is None:
            return
        snapshot = self.snapshot()
        snapshot["stopped"] = final
        try:
            temporary = self.stats_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(snapshot), encoding="utf-8")
            temporary.replace(self.stats_path)
        except OSError as exc:
            log.debug("could not write %s: %s", self.stats_path, exc)
