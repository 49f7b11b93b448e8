"""The model worker: one thread owns the models; the asyncio loop never runs torch.

This first version is deliberately simple: jobs run one at a time in arrival order on a
single thread, models load on demand, and the least recently used one is unloaded when
more than ``max_resident`` would be resident. Tokens cross to the event loop through
``loop.call_soon_threadsafe``. (Fair scheduling and batching come with the shared GPU
worker.)
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from bot.catalog import LoadedModel, ModelCatalog
from bot.config import ModelSpec
from bot.worker.stream_decode import DeltaDecoder

log = logging.getLogger(__name__)


class GenerationFailed(Exception):
    """A job that ended with an error; str() is the message for the user."""


@dataclass
class GenerationStats:
    model: str
    prompt_tokens: int
    new_tokens: int = 0
    queue_seconds: float = 0.0
    first_token_seconds: float | None = None
    generation_seconds: float = 0.0
    stopped_by: str = "eos"  # eos | length | cancelled
    footprint_bytes: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.generation_seconds if self.generation_seconds > 0 else 0.0


@dataclass
class GenerationJob:
    model: str
    input_ids: list[int]
    stop_token_ids: list[int]
    settings: dict[str, Any]
    user: str = ""
    channel: str = ""
    id: int = field(default_factory=itertools.count(1).__next__)
    cancelled: threading.Event = field(default_factory=threading.Event)


class GenerationStream:
    """Async iterator of text deltas; `stats` is set once iteration ends normally."""

    _DONE = object()

    def __init__(self, job: GenerationJob):
        self.job = job
        self.stats: GenerationStats | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    # called from the worker thread
    def _emit(self, item: Any) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def cancel(self) -> None:
        self.job.cancelled.set()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        while True:
            item = await self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, GenerationStats):
                self.stats = item
                continue
            if isinstance(item, BaseException):
                raise item
            yield item


class Worker:
    def __init__(self, catalog: ModelCatalog, max_resident: int = 1):
        self.catalog = catalog
        self.max_resident = max_resident
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelbot-worker")
        self._resident: OrderedDict[str, LoadedModel] = OrderedDict()  # only touched on the worker thread
        self._loaded: tuple[str, ...] = ()  # a snapshot of its keys that other threads may read
        self._active: dict[int, GenerationStream] = {}

    def loaded_names(self) -> list[str]:
        return list(self._loaded)

    def active_jobs(self, channel: str | None = None) -> list[GenerationStream]:
        return [s for s in self._active.values() if channel is None or s.job.channel == channel]

    async def call(self, model: str, fn: Callable[[LoadedModel], Any], progress: Callable[[str], None] = log.info) -> Any:
        """Run fn(loaded_model) on the worker thread, loading the model first if needed."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(self._ensure_loaded(model, progress)))

    def submit(self, job: GenerationJob, progress: Callable[[str], None] = log.info) -> GenerationStream:
        stream = GenerationStream(job)
        self._active[job.id] = stream
        submitted = time.monotonic()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self._run_job, stream, submitted, progress
        )
        future.add_done_callback(lambda _: self._active.pop(job.id, None))
        return stream

    async def close(self) -> None:
        for stream in list(self._active.values()):
            stream.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
        self._resident.clear()
        self._loaded = ()

    # -- worker thread -------------------------------------------------------------------
    def _ensure_loaded(self, name: str, progress: Callable[[str], None]) -> LoadedModel:
        if name in self._resident:
            self._resident.move_to_end(name)
            return self._resident[name]
        spec: ModelSpec = self.catalog.spec(name)
        while len(self._resident) >= self.max_resident:
            self._evict(next(iter(self._resident)))
        loaded = self.catalog.load(spec, progress)
        self._resident[name] = loaded
        self._loaded = tuple(self._resident)
        return loaded

    def _evict(self, name: str) -> None:
        loaded = self._resident.pop(name)
        self._loaded = tuple(self._resident)
        log.info("unloading %s to make room", name)
        del loaded.model, loaded
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _run_job(self, stream: GenerationStream, submitted: float, progress: Callable[[str], None]) -> None:
        job = stream.job
        try:
            stats = self._generate(stream, submitted, progress)
            stream._emit(stats)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a message, the worker lives on
            log.exception("job %s on %s failed", job.id, job.model)
            stream._emit(GenerationFailed(_describe_failure(exc)))
        finally:
            stream._emit(GenerationStream._DONE)

    def _generate(self, stream: GenerationStream, submitted: float, progress: Callable[[str], None]) -> GenerationStats:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        job = stream.job
        stats = GenerationStats(model=job.model, prompt_tokens=len(job.input_ids))
        if job.cancelled.is_set():
            stats.stopped_by = "cancelled"
            return stats
        loaded = self._ensure_loaded(job.model, progress)
        stats.queue_seconds = time.monotonic() - submitted
        decoder = DeltaDecoder(loaded.tokenizer, set(job.stop_token_ids))
        started = time.monotonic()

        class _Streamer:
            """transformers' streamer protocol: put() gets the prompt first, then each new token."""

            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:
                    self.prompt_seen = True
                    return
                for token_id in value.reshape(-1).tolist():
                    stats.new_tokens += 1
                    if stats.first_token_seconds is None:
                        stats.first_token_seconds = time.monotonic() - started
                    delta = decoder.push(int(token_id))
                    if delta:
                        stream._emit(delta)

            def end(self):
                tail = decoder.flush()
                if tail:
                    stream._emit(tail)

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return job.cancelled.is_set()

        settings = dict(job.settings)
        input_ids = torch.tensor([job.input_ids], device=loaded.model.device)
        with torch.inference_mode():
            loaded.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                eos_token_id=job.stop_token_ids,
                pad_token_id=loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else job.stop_token_ids[0],
                streamer=_Streamer(),
                stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                **settings,
            )
        stats.generation_seconds = time.monotonic() - started
        stats.footprint_bytes = loaded.footprint_bytes()
        if job.cancelled.is_set():
            stats.stopped_by = "cancelled"
        elif stats.new_tokens >= settings.get("max_new_tokens", 1 << 30):
            stats.stopped_by = "length"
        return stats


def _describe_failure(exc: Exception) -> str:
    name = type(exc).__name__
    if "OutOfMemory" in name or "out of memory" in str(exc).lower():
        return "the model ran out of memory; try a shorter conversation or a smaller model"
    return f"{name}: {exc}"
